"""Every shell command that README.md and docs/*.md show runs as written.

A command is a line of a ```bash / ```sh / ```shell block (comments and blank lines aside), or a line of a
plain, ```text or ```console block that starts with `$ ` (or, outside ```console, with `hftune ` or
`make `); a trailing `\\` continues it on the next line. Each one is checked the cheapest way that still
catches a missing config, an unknown verb or an unknown flag:

- `hftune ...`, also behind `python -m`, `accelerate launch ... -m` and `torchrun ... -m`, runs in this
  process through `hftune.cli.main`, in a scratch folder where `configs/`, `data_recipes/` and `eval/` are
  the repository's own (so `runs/...` outputs land in the scratch folder):
  - `--help` / `--help-all`, `data list` and `tiny` (with `--pretrain_steps 0` added unless given: the 300
    pretraining steps take ~35 s) run for real; so does `data preview`, in its own test, on the tiny
    model the suite builds once for every test (`tiny_llama`);
  - `pipeline` runs with `--dry-run` added (it resolves and validates every stage and prints the plan);
  - the training verbs and `eval` (which have no dry run) go through the CLI with everything real but the
    training: the strict parser reads the config and the flags and refuses any unknown key, then a stub
    stands in for the stage's `run`;
  - `label` likewise, with a stub for the labelling server;
  - `card`, `push`, `merge`, `label stats` and `label auto` read a finished artifact (`runs/tiny/ppo`,
    ...) that only a training run makes: their arguments are parsed by the CLI's own parser (`label
    auto`'s by its own), and any argument it does not know fails (these verbs accept no config keys).
- `make TARGET`: the target exists in the Makefile.
- `python SCRIPT.py`, `bash FILE`, `sbatch FILE`: the file exists, and every `--flag` is in the script.
- `pip install 'hftune[EXTRA]'`: the extra exists in setup.cfg.
- Any path a command names under `configs/`, `data_recipes/`, `eval/`, `bench/`, `tests/`, `docs/` or
  `.ci/`, or any `.yaml` / `.py` / `.sbatch` / `.jinja` file outside `runs/`, exists: in the repository,
  or as a file the same page writes out (a code block whose first line is `# NAME.yaml`, `# NAME.py`, ...).

A command no rule covers fails the test, unless it is in `ALLOWED` below, with its reason.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import re
import shlex
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell"}

# Commands shown but not run, each with its reason (matched on the command text). Their paths are still
# checked.
ALLOWED = {
    "trl vllm-serve": "TRL's own vLLM server: needs vLLM and a GPU",
    "--use_vllm true": "vLLM generation: the RL stage's parser refuses it without vLLM installed and a GPU",
}

# Verbs that read a finished artifact (made only by training): their arguments are parsed, not run.
PARSE_ONLY = {"card", "push", "merge"}
TRAINING_VERBS = {"pretrain", "sft", "reward", "ppo", "dpo", "eval"}
REPO_DIRS = ("configs/", "data_recipes/", "eval/", "bench/", "tests/", "docs/", ".ci/")
FILE_SUFFIXES = (".yaml", ".yml", ".py", ".sbatch", ".jinja")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
DEFINED_FILE = re.compile(r"^#\s*([\w.-]+\.(?:yaml|yml|py|csv|jsonl|jinja))\b")


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


def fenced_blocks(page: Path):
    """(language, first line number, lines) for every fenced block, its lines dedented to the fence."""
    lines = page.read_text().split("\n")
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(```+)\s*(\S*)", lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = len(match.group(1)), match.group(2), match.group(3).lower()
        start, body = i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].lstrip())
            i += 1
        i += 1
        yield lang, start, body


def commands(page: Path) -> list[Command]:
    found = []
    for lang, start, body in fenced_blocks(page):
        shell = lang in SHELL_LANGS
        if not shell and lang not in ("", "text", "console"):
            continue
        logical: list[tuple[int, str]] = []
        for n, line in enumerate(body):
            if logical and logical[-1][1].endswith("\\"):
                logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
            else:
                logical.append((start + n, line.strip()))
        for n, text in logical:
            if text.startswith("$ "):
                text = text[2:]
            elif not shell and (lang == "console" or not text.startswith(("hftune ", "make "))):
                continue
            if text and not text.startswith("#"):
                found.append(Command(page, n, text))
    return found


def defined_files(page: Path) -> dict[str, str]:
    """Files a page writes out for its commands: a code block whose first line names a bare file."""
    files = {}
    for _, _, body in fenced_blocks(page):
        match = DEFINED_FILE.match(body[0]) if body else None
        if match:
            files[match.group(1)] = "\n".join(body) + "\n"
    return files


ALL_COMMANDS = [command for page in PAGES for command in commands(page)]
DEFINED = {name: text for page in PAGES for name, text in defined_files(page).items()}


def argv_of(command: Command) -> tuple[dict[str, str], list[str]]:
    argv = shlex.split(command.text, comments=True)
    env = {}
    while argv and ENV_ASSIGNMENT.match(argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    return env, argv


def hftune_argv(argv: list[str]) -> list[str] | None:
    """The `hftune` arguments of a command that runs hftune (directly or through a launcher), else None."""
    if argv[0] == "hftune":
        return argv[1:]
    if argv[0] in ("python", "python3", "accelerate", "torchrun") and "-m" in argv:
        i = argv.index("-m")
        if argv[i + 1 : i + 2] == ["hftune"]:
            return argv[i + 2 :]
    return None


def named_paths(argv: list[str]) -> list[str]:
    paths = []
    for token in argv:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if value.startswith("runs/") or " " in value or value.startswith("-"):
            continue
        if value.startswith(REPO_DIRS) or value.endswith(FILE_SUFFIXES):
            paths.append(value)
    return paths


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def extras() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return set(cfg["options.extras_require"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch folder that looks like the repository's root to a command, with the pages' files."""
    for name in ("configs", "data_recipes", "eval"):
        (tmp_path / name).symlink_to(REPO / name)
    for name, text in DEFINED.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`hftune.cli.main(argv)` in this process: (exit code, what it printed)."""
    from hftune import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli.main(list(argv))
        except SystemExit as exit:  # argparse: --help, an unknown verb, a missing argument
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    return code, out.getvalue()


def stub_stages(monkeypatch) -> list:
    """Stand in for each stage's `run` (and the labelling server): everything before training stays real."""
    from hftune import cli
    from hftune.label import serve

    ran: list = []
    load = cli.registry.load

    def stubbed(command):
        module = load(command)
        return types.SimpleNamespace(
            schema=module.schema,
            parse=module.parse,
            run=lambda cfg, resume=False: ran.append(cfg),
            summary=lambda result: "",
        )

    monkeypatch.setattr(cli.registry, "load", stubbed)
    monkeypatch.setattr(serve, "run", lambda cfg: ran.append(cfg))
    return ran


def check_hftune(args: list[str], ran: list) -> str | None:
    """Run one `hftune` command the way the module docstring says; a problem, or None."""
    from hftune import cli

    if not args:
        return "no verb"
    verb = args[0]
    if args[:2] == ["label", "auto"]:  # reads a finished label folder: its arguments are checked only
        from hftune.errors import UserError
        from hftune.label import auto

        try:
            auto.parse(args[2:])
        except UserError as err:
            return str(err)
        return None
    if verb in PARSE_ONLY or args[:2] == ["label", "stats"]:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                _, rest = cli.build_parser().parse_known_args(args)
            except SystemExit:
                return f"the CLI's parser refused it: {err.getvalue().strip()}"
        expected = args[1:3] if verb == "label" else []
        return f"unknown arguments {rest}" if rest != expected else None
    if verb == "pipeline" and "--dry-run" not in args and "--help" not in args:
        args = [*args, "--dry-run"]
    if verb == "tiny" and "--pretrain_steps" not in args and "--help" not in args:
        args = [*args, "--pretrain_steps", "0"]
    before = len(ran)
    code, output = run_cli(args)
    if code != 0:
        return f"exit {code}: {output.strip()[-2000:]}"
    stubbed = verb in TRAINING_VERBS or verb == "label"
    if stubbed and not {"--help", "--help-all", "-h"} & set(args) and len(ran) != before + 1:
        return "the stage was not reached"
    return None


def check(command: Command, ran: list, workdir: Path) -> str | None:
    """Check one documented command; a problem, or None."""
    _, argv = argv_of(command)
    if not argv:
        return "no command"
    missing = [p for p in named_paths(argv) if not (REPO / p).exists() and p not in DEFINED]
    if missing:
        return f"names missing files: {missing}"
    if any(key in command.text for key in ALLOWED):
        return None
    args = hftune_argv(argv)
    if args is not None:
        if args[:2] == ["data", "preview"]:
            return None  # run for real by test_documented_data_previews_run
        return check_hftune(args, ran)
    program = argv[0]
    if program == "make":
        targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
        unknown = set(targets) - makefile_targets()
        return f"no Makefile target {sorted(unknown)}" if unknown or not targets else None
    if program in ("python", "python3", "bash", "sbatch") and len(argv) > 1:
        script = REPO / argv[1]
        if not script.is_file():
            return f"no file {argv[1]}"
        text = script.read_text()
        flags = [a.split("=")[0] for a in argv[2:] if re.match(r"^--[\w-]+(=.*)?$", a)]
        unknown = [f for f in flags if f'"{f}"' not in text]
        return f"{argv[1]} takes no {unknown}" if unknown else None
    if argv[:2] == ["pip", "install"]:
        wanted = [re.fullmatch(r"hftune\[([\w,-]+)\]", a) for a in argv[2:]]
        if not all(wanted):
            return "only `pip install 'hftune[EXTRA]'` is checked"
        unknown = {e for m in wanted for e in m.group(1).split(",")} - extras()
        return f"no extra {sorted(unknown)} in setup.cfg" if unknown else None
    return "no rule checks this command: add one to tests/test_docs.py, or an ALLOWED entry with the reason"


def test_the_pages_show_commands():
    assert len(ALL_COMMANDS) > 40, "the extraction found too few commands"
    readme = [argv_of(c)[1] for c in ALL_COMMANDS if c.page.name == "README.md"]
    assert ["make", "quickstart"] in readme and ["make", "test"] in readme


def test_documented_commands_run(workdir, monkeypatch):
    ran = stub_stages(monkeypatch)
    problems = []
    for command in ALL_COMMANDS:
        problem = check(command, ran, workdir)
        if problem:
            problems.append(f"{command}\n    {problem}")
    assert not problems, f"{len(problems)} documented commands fail:\n" + "\n".join(problems)


def test_documented_data_previews_run(workdir, tiny_llama):
    """`hftune data preview` loads the model's tokenizer: `tiny:llama` is the suite's shared tiny model."""
    previews = [c for c in ALL_COMMANDS if (hftune_argv(argv_of(c)[1]) or [])[:2] == ["data", "preview"]]
    assert previews
    problems = []
    for command in previews:
        code, output = run_cli(hftune_argv(argv_of(command)[1]))
        if code != 0 or "kept" not in output:
            problems.append(f"{command}\n    exit {code}: {output.strip()[-2000:]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("hftune sft --config configs/tiny/no_such.yaml", "names missing files"),
        ("hftune sft --config configs/tiny/sft.yaml --learnig_rate 1e-4", "unknown key"),
        ("hftune sftt --config configs/tiny/sft.yaml", "invalid choice"),
        ("hftune pipeline --config configs/tiny/pipeline.yaml --forse sft", "unexpected arguments"),
        ("hftune push runs/tiny/sft --repo-id ORG/NAME --no-such-flag", "unknown arguments"),
        ("hftune merge runs/tiny/ppo", "refused"),
        ("make no-such-target", "no Makefile target"),
        ("python bench/sft_throughput.py --no-such-flag", "takes no"),
        ("pip install 'hftune[no-such-extra]'", "no extra"),
        ("curl https://example.com", "no rule"),
    ],
)
def test_a_broken_command_is_caught(workdir, monkeypatch, text, problem):
    ran = stub_stages(monkeypatch)
    found = check(Command(REPO / "README.md", 0, text), ran, workdir)
    assert found and problem in found, found


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    too_wide = [line for _, _, body in fenced_blocks(REPO / "README.md") for line in body if len(line) > 100]
    assert not too_wide, "README code lines wider than 100 columns:\n" + "\n".join(too_wide)
    pages = {p.name for p in PAGES if p.parent.name == "docs"}
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", readme))
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    problems = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{page.name}: {target} (no such heading)")
    assert not problems, "\n".join(problems)


def test_each_docs_page_says_what_it_is_for_and_links_back():
    for page in PAGES:
        if page.parent.name != "docs" or page.name == "architecture.md":
            continue  # architecture.md has its own owner and shape
        head = page.read_text().split("\n", 6)[:6]
        assert head[0].startswith("# "), page.name
        assert any(line.startswith("Purpose:") for line in head), f"{page.name}: no one-line purpose"
        assert "](../README.md)" in "\n".join(head), f"{page.name}: no link back to the README"


def test_python_names_the_pages_show_exist():
    """`from hftune... import NAME` in a ```python block, and `hftune.X:NAME` (a verifier a config names)."""
    import importlib

    names = set()
    for page in PAGES:
        for lang, _, body in fenced_blocks(page):
            if lang == "python":
                names |= set(re.findall(r"^from (hftune[\w.]*) import (\w+)", "\n".join(body), flags=re.M))
        names |= set(re.findall(r"`(hftune(?:\.\w+)+):(\w+)`", page.read_text()))
    assert names
    missing = [f"{m}:{n}" for m, n in sorted(names) if not hasattr(importlib.import_module(m), n)]
    assert not missing, f"the pages name Python objects that do not exist: {missing}"
