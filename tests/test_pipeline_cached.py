"""A rerun with nothing to do answers from the ledger without parsing (no torch, transformers or TRL
imported); a changed setting, data file or recipe makes it take the full path; the plan is printed before
any stage trains, also into a file; a stage's config is parsed from memory, never through a scratch file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from hftune import pipeline, quick_fingerprint
from hftune.config import ConfigError
from hftune.resources import builtin_dir

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny"
HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def write_pipeline(tmp: Path, name: str = "pipeline.yaml", **sft) -> Path:
    """SFT on a recipe and data file of the test's own (so it can change them), then a reward model."""
    stages = [
        {
            "stage": "sft",
            "config": str(TINY / "sft_full.yaml"),
            "data_recipe": str(tmp / "recipe.yaml"),
            "max_steps": 2,
            "max_samples": 40,
            "max_length": 128,
            **sft,
        },
        {"stage": "reward", "config": str(TINY / "reward.yaml"), "max_steps": 2, "max_samples": 40},
    ]
    path = tmp / name
    path.write_text(yaml.safe_dump({"output_dir": str(tmp / "run"), "stages": stages}))
    return path


def hftune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`python -m hftune ARGS` in a fresh process (nothing imported yet), from the repository."""
    return subprocess.run([sys.executable, "-m", "hftune", *args], cwd=REPO, text=True, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama):
    """A finished two-stage pipeline, run by the CLI with its output (stdout and stderr) going to a file."""
    tmp = tmp_path_factory.mktemp("cached")
    recipe = (builtin_dir("data_recipes") / "tiny_alpaca.yaml").read_text()
    (tmp / "recipe.yaml").write_text(recipe.replace("fixtures/alpaca.jsonl", "data.jsonl"))
    rows = (builtin_dir("data_recipes") / "fixtures/alpaca.jsonl").read_text().splitlines()
    (tmp / "data.jsonl").write_text("\n".join(rows[:60]) + "\n")
    config = write_pipeline(tmp)
    log = tmp / "first-run.log"
    with log.open("w") as out:
        done = hftune("pipeline", "--config", str(config), stdout=out, stderr=subprocess.STDOUT)
    assert done.returncode == 0, log.read_text()[-3000:]
    return tmp, config, log.read_text()


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # where the CLI runs below: relative paths are read from there, in both


def quick_answer(config: Path) -> bool:
    """Whether the pipeline would answer `config` from the ledger (every run up to date, nothing parsed)."""
    root, plan, _ = pipeline.load_plan(str(config))
    return pipeline._up_to_date_quickly(root, plan, quick_fingerprint.environment())


def actions(plan) -> dict[str, str]:
    return {s.key: s.action for s in plan}


def printed_plan(text: str, title: str = "pipeline plan:") -> dict[str, str]:
    """Run -> action, as the first plan titled `title` in `text` lists them."""
    rows = {}
    for line in text[text.index(title) :].splitlines()[1:]:
        if not line.startswith("  "):
            break
        key, action = line.split()[:2]
        if key != "memory:":
            rows[key] = action
    return rows


@pytest.mark.slow(35)  # the module's two-stage pipeline, trained once by the CLI
def test_the_plan_is_printed_before_the_first_stage_trains_also_into_a_file(finished):
    _, _, text = finished
    plan = text.index("pipeline plan:")
    assert plan < text.index("stage sft: run") < text.index("== sft ==") < text.index("== reward ==")
    assert printed_plan(text) == {"sft": "run", "reward": "run"}
    assert "memory: ~" in text[plan : text.index("stage sft: run")]  # the estimates, before training
    # And at the end what ran, with how long each run and the whole pipeline took.
    done = re.search(r"pipeline done in [0-9.]+ s:\n((?:  .*\n?)+)", text)
    assert done and done.start() > text.index("== reward =="), text[-1000:]
    ran = {line.split()[0]: line for line in done.group(1).splitlines()}
    assert set(ran) == {"sft", "reward"} and all(re.search(r"\([0-9.]+ s\)$", r) for r in ran.values()), ran


def test_no_stage_config_file_is_written_for_an_in_process_stage(finished, monkeypatch):
    tmp, config, _ = finished
    assert not (tmp / "run" / ".pipeline").exists()  # the first run wrote none either
    monkeypatch.setattr(pipeline, "_write_stage_config", lambda *a: pytest.fail("a stage config was written"))
    for name in ("TemporaryDirectory", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, lambda *a, **k: pytest.fail("a scratch file was made"))
    calls = []
    load = pipeline.registry.load

    class Spy:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            return getattr(self.module, name)

        def parse(self, config_path, argv=None, **kwargs):
            calls.append((config_path, kwargs))
            return self.module.parse(config_path, argv, **kwargs)

    monkeypatch.setattr(pipeline.registry, "load", lambda name: Spy(load(name)))
    plan = pipeline.run(str(config), dry_run=True)
    assert set(actions(plan).values()) == {"skip"}
    assert [path for path, _ in calls] == [None, None]
    for (_, kwargs), stage in zip(calls, plan, strict=True):
        assert kwargs["values"] == stage.values and str(TINY) in kwargs["source"]
        assert stage.cfg.source == stage.source  # errors while it runs name the user's file


def test_a_bad_key_names_the_users_file_and_the_key(finished):
    tmp, _, _ = finished
    config = write_pipeline(tmp, "typo.yaml", learning_rat=1.0e-3)
    with pytest.raises(ConfigError) as err:
        pipeline.run(str(config), dry_run=True)
    text = str(err.value)
    assert str(TINY / "sft_full.yaml") in text and "stage sft" in text and "`learning_rat`" in text
    assert "did you mean `learning_rate`" in text


def test_a_rerun_skips_every_stage_without_importing_torch(finished):
    tmp, config, _ = finished
    ledger = json.loads((tmp / "run" / pipeline.LEDGER).read_text())
    assert all(ledger[key]["quick_inputs"] for key in ("sft", "reward"))
    script = (
        "import sys\n"
        "from hftune import cli\n"
        f"code = cli.main(['pipeline', '--config', {str(config)!r}])\n"
        f"print('imported:', [m for m in {HEAVY!r} if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    started = time.time()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, text=True, capture_output=True)
    took = time.time() - started
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout, done.stdout
    assert printed_plan(done.stdout) == {"sft": "skip", "reward": "skip"}, done.stdout
    assert took < 10, took  # about 0.5 s alone; generous for a loaded machine running tests in parallel
    assert json.loads((tmp / "run" / pipeline.LEDGER).read_text()) == ledger  # nothing re-recorded


def test_force_and_dry_run_take_the_full_path(finished):
    _, config, _ = finished
    assert quick_answer(config)
    plan = pipeline.run(str(config), dry_run=True)
    assert set(actions(plan).values()) == {"skip"} and all(s.cfg is not None for s in plan)  # parsed
    assert actions(pipeline.run(str(config), dry_run=True, force="reward")) == {
        "sft": "skip",
        "reward": "run",
    }


def test_a_changed_setting_is_not_answered_quickly(finished):
    tmp, _, _ = finished
    changed = write_pipeline(tmp, "changed.yaml", learning_rate=2.0e-3)
    assert not quick_answer(changed)
    assert actions(pipeline.run(str(changed), dry_run=True)) == {"sft": "run", "reward": "run"}


def test_a_changed_recipe_takes_the_full_path_which_confirms_and_records(finished):
    """A recipe's description changes nothing the stages compute: the quick answer cannot tell, so the full
    path decides (every stage up to date) and records the new quick fingerprint for the next rerun."""
    tmp, config, _ = finished
    recipe = tmp / "recipe.yaml"
    original = recipe.read_text()
    try:
        recipe.write_text(original.replace("description: ", "description: (a copy) "))
        assert not quick_answer(config)
        plan = pipeline.run(str(config))
        assert set(actions(plan).values()) == {"skip"} and all(s.cfg is not None for s in plan)
        assert quick_answer(config)
    finally:
        recipe.write_text(original)
    assert not quick_answer(config)  # back to the recorded recipe: the ledger now holds the copy's


def test_a_changed_data_file_reruns_sft_and_what_takes_from_it(finished):
    tmp, config, _ = finished
    data = tmp / "data.jsonl"
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same rows in another order
    assert not quick_answer(config)
    plan = pipeline.run(str(config))
    assert actions(plan) == {"sft": "run", "reward": "run"}
    assert quick_answer(config)  # recorded as it ran


def test_hftune_files_include_the_linked_built_in_recipes_and_their_data(tmp_path):
    """Built-in recipes are named, not given as paths: the quick fingerprint sees them (and their data) as
    hftune's own files, which in a checkout are links to the repository's folders."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("DEFAULTS = {}\n")
    (tmp_path / "pkg" / "data_recipes").symlink_to(tmp_path / "data")
    before = quick_fingerprint._package_hash(tmp_path / "pkg")
    (tmp_path / "data" / "rows.jsonl").write_text('{"text": "b"}\n')
    assert quick_fingerprint._package_hash(tmp_path / "pkg") != before
    assert quick_fingerprint.environment()["hftune_files"] == quick_fingerprint.environment()["hftune_files"]


def test_a_variable_hftune_sets_on_import_is_no_change(monkeypatch):
    """hftune.stages.dpo sets TRL_EXPERIMENTAL_SILENCE when imported: a run recorded before that import (a
    pipeline in a fresh process) and a rerun after it (or the other way round) see the same environment,
    while any other TRL_ variable is a change."""
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)
    before = quick_fingerprint.environment()["env"]
    import hftune.stages.dpo  # noqa: F401

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    assert quick_fingerprint.environment()["env"] == before
    monkeypatch.setenv("TRL_SOMETHING_ELSE", "1")
    assert quick_fingerprint.environment()["env"] != before
