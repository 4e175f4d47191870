"""The `hftune` command line.

User mistakes (`UserError`) print one readable message and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path

from hftune import __version__, logs
from hftune.errors import UserError
from hftune.stages import registry
from hftune.stages.common import HARDWARE_DEFAULTS

logger = logging.getLogger("hftune")


def _stage_help(module, command: str) -> str:
    """The epilog of a stage's --help: hftune's own options and the defaults hftune changes. Built from the
    stage module's EXTRAS / DEFAULTS / TRL_CONFIGS, so it needs neither TRL nor torch."""
    from hftune.config import describe_fields

    lines = ["hftune options (config keys or --flags):"]
    for name, kind, help_text in describe_fields(module.EXTRAS):
        lines.append(f"  --{name}  ({kind})")
        lines.extend("      " + w for w in textwrap.wrap(help_text, 88))
    if not module.TRL_CONFIGS:  # an hftune-only config (eval suites)
        return "\n".join(lines)
    lines.append("")
    lines.append("defaults hftune sets differently from TRL:")
    for key, value in module.DEFAULTS.items():
        lines.append(f"  {key}: {value!r}")
    for key, how in HARDWARE_DEFAULTS.items():
        lines.append(f"  {key}: {how}")
    lines.append("")
    lines += textwrap.wrap(
        f"Every field of TRL's {', '.join(module.TRL_CONFIGS)} and ScriptArguments is also a config key / "
        f"flag (TRL's docs apply); `hftune {command} --help-all` lists them all. From ScriptArguments: "
        "`dataset_name` (a Hub id, a local data file or a folder, with `dataset_config` and "
        "`dataset_train_split`) reads data already in a TRL format, its layout detected, or gives a "
        "`data_recipe` its rows; `dataset_test_split` is not read: hftune holds out its own prompts "
        "(`eval_fraction`), so that no prompt is both trained on and evaluated. A config file's `env:` "
        "block sets environment variables, as TRL's CLI does.",
        96,
    )
    return "\n".join(lines)


def _print_all_fields(schema) -> None:
    from hftune.config import describe_fields

    for section, cls in schema.classes.items():
        print(f"\n== {cls.__name__} ({section}) ==")
        for name, kind, help_text in describe_fields(cls):
            print(f"  --{name}  ({kind})")
            for w in textwrap.wrap(help_text, 88):
                print("      " + w)


def _cmd_stage(ns: argparse.Namespace, rest: list[str]) -> int:
    module = registry.load(ns.command)
    if ns.help_all:
        _print_all_fields(module.schema())
        return 0
    cfg = dataclasses.replace(module.parse(ns.config, rest), overwrite=ns.overwrite)
    from hftune import artifacts, distributed

    # One run at a time per output folder (the launcher's other processes write through the main one).
    lock = artifacts.output_lock(cfg.output_dir) if distributed.is_main_process() else nullcontext()
    with lock:
        result = module.run(cfg, resume=getattr(ns, "resume", False))
    if distributed.is_main_process():
        print(module.summary(result))
    return 0


def _cmd_pipeline(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune import pipeline

    if rest:
        raise UserError(f"unexpected arguments: {' '.join(rest)} (stage keys go in the pipeline config)")
    if ns.max_parallel is not None and (problem := pipeline.max_parallel_problem(ns.max_parallel)):
        raise UserError(f"--max-parallel: {problem}")
    pipeline.run(
        ns.config,
        dry_run=ns.dry_run,
        force=ns.force,
        output_dir=ns.output_dir,
        overwrite=ns.overwrite,
        max_parallel=ns.max_parallel,
    )
    return 0


def _cmd_data(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune import data

    if rest:
        raise UserError(f"unexpected arguments: {' '.join(rest)}")
    if ns.data_command == "list":
        for name in data.list_recipes():
            recipe = data.load_recipe(name)
            print(f"{name:24s} {getattr(recipe, 'description', '') or ''}")
        return 0
    from hftune.stages import preview

    shown = dict(chat_template=ns.chat_template, n=ns.n, max_length=ns.max_length)
    if ns.config:
        if ns.recipe or ns.data_files:
            raise UserError(
                "data preview --config: the config names the data; drop the RECIPE / --data_files"
            )
        print(preview.preview_config(ns.config, ns.stage, model=ns.model, **shown))
    elif not ns.recipe or not ns.model:
        raise UserError("data preview: give a RECIPE (or a data file) and --model, or --config FILE")
    else:
        print(preview.preview_recipe(ns.recipe, ns.model, data_files=ns.data_files, **shown))
    return 0


def _cmd_label(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune.label import config as label_config

    if rest[:1] == ["stats"]:
        from hftune.label import stats

        if len(rest) != 2 or ns.config:
            raise UserError(
                "label stats: give the label folder (or its labels.jsonl): hftune label stats DIR"
            )
        print(stats.render(stats.compute(Path(rest[1]))))
        return 0
    if rest[:1] == ["auto"]:
        from hftune.label import auto

        if ns.config:
            raise UserError(f"label auto: takes no --config: {auto.USAGE}")
        print(auto.command(rest[1:]))
        return 0
    if ns.help_all:
        _print_all_fields(label_config.schema())
        return 0
    from hftune.label.serve import run

    run(label_config.parse(ns.config, rest))
    return 0


def _cmd_tiny(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune.models.tiny import build_tiny_model, check_sizes

    if rest:
        raise UserError(f"unexpected arguments: {' '.join(rest)}")
    check_sizes(
        vocab_size=ns.vocab_size,
        hidden_size=ns.hidden_size,
        num_layers=ns.num_layers,
        pretrain_steps=ns.pretrain_steps,
        seed=ns.seed,
    )
    path = build_tiny_model(
        ns.output_dir,
        arch=ns.arch,
        vocab_size=ns.vocab_size,
        hidden_size=ns.hidden_size,
        num_layers=ns.num_layers,
        pretrain_steps=ns.pretrain_steps,
        seed=ns.seed,
        overwrite=ns.overwrite,
    )
    print(f"saved tiny {ns.arch} model: {path}")
    return 0


def _cmd_card(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune.publish import card

    if rest:
        raise UserError(f"unexpected arguments: {' '.join(rest)}")
    kwargs = dict(eval_dir=ns.eval, repo_id=ns.repo_id, base_model_id=ns.base_model_id, license=ns.license)
    if ns.output:
        print(f"wrote {card.write(ns.dir, ns.output, overwrite=ns.overwrite, **kwargs)}")
    else:
        print(card.render(ns.dir, **kwargs))
    return 0


def _cmd_push(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune.publish import hub

    if rest:
        raise UserError(
            f"unexpected arguments: {' '.join(rest)} (the token comes from HF_TOKEN or `hf auth login`)"
        )
    if not ns.debug:
        # Like httpx's in logs.setup: huggingface_hub's HTTP client (httpx2 in recent versions) logs
        # every request at INFO.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    result = hub.push(
        ns.dir,
        ns.repo_id,
        private=ns.private,
        dry_run=ns.dry_run,
        eval_dir=ns.eval,
        revision=ns.revision,
        commit_message=ns.commit_message,
        base_model_id=ns.base_model_id,
        license=ns.license,
        overwrite=ns.overwrite,
    )
    print(hub.summary(result))
    return 0


def _cmd_merge(ns: argparse.Namespace, rest: list[str]) -> int:
    from hftune.publish import merge

    if rest:
        raise UserError(f"unexpected arguments: {' '.join(rest)}")
    from hftune import artifacts

    with artifacts.output_lock(ns.out):
        result = merge.merge(
            ns.dir, ns.out, dtype=ns.dtype, from_full_precision=ns.from_full_precision, overwrite=ns.overwrite
        )
    print(merge.summary(result))
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help text may be computed when it is shown (`help_text=callable` returning
    (description, epilog)): `hftune --help` then imports no stage, and `hftune sft --help` only sft's."""

    def __init__(self, *args, help_text=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._help_text = help_text

    def format_help(self) -> str:
        if self._help_text is not None:
            description, epilog = self._help_text()
            self.description = description or self.description
            self.epilog = epilog or self.epilog
            self._help_text = None
        return super().format_help()


def _pipeline_help() -> tuple[str, None]:
    from hftune import pipeline

    return (pipeline.__doc__ or "").strip(), None


def build_parser() -> argparse.ArgumentParser:
    from hftune.label import config as label_config
    from hftune.models.tiny import TINY_PRETRAIN_STEPS

    parser = _Parser(
        prog="hftune",
        description="Align open language models from config files: SFT → reward model → RLHF → eval, "
        "on TRL, PEFT and transformers.",
    )
    parser.add_argument("--version", action="version", version=f"hftune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, writes: str | None = None) -> None:
        # SUPPRESS: a subcommand's default must not undo `hftune --debug COMMAND`.
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show Python tracebacks and debug logs",
        )
        if writes:
            p.add_argument(
                "--overwrite",
                action="store_true",
                help=f"replace {writes} even if hftune did not write it (by default only a new, empty or "
                "hftune-written one is replaced; anything else is refused and left untouched)",
            )

    p = sub.add_parser(
        "pipeline",
        help="run the whole recipe (pretrain -> sft -> reward -> ppo/rloo/grpo -> eval) from one config",
        help_text=_pipeline_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", required=True, help="pipeline config YAML")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve and validate every stage, print the plan, load no weights",
    )
    p.add_argument("--force", metavar="STAGE", help="re-run STAGE and every stage after it")
    p.add_argument(
        "--output_dir", "--output-dir", metavar="DIR", help="write the run here (overrides the config's)"
    )
    p.add_argument(
        "--max-parallel",
        "--max_parallel",
        metavar="N",
        type=int,
        help="train at most N independent runs at once (seed runs, sibling branches), each with its share "
        "of the cores; 1 runs them one after another (overrides the config's `max_parallel`; default: two "
        "a core, one thread each, as far as memory allows on CPU, 1 with a GPU)",
    )
    common(p, writes="the output folder and its stage folders")
    p.set_defaults(func=_cmd_pipeline)

    for name, spec in registry.COMMANDS.items():
        p = sub.add_parser(
            name,
            help=spec.short,
            description=spec.description,
            help_text=lambda name=name: (None, _stage_help(registry.options(name), name)),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # `--res` must not silently mean `--resume`; unknown flags go to the config
        )
        p.add_argument("--config", metavar="FILE", help="stage config YAML")
        if spec.trains:  # the eval has no checkpoints: its cache of generations is what continues a run
            p.add_argument(
                "--resume",
                action="store_true",
                help="continue from the last checkpoint of an interrupted run (made with the same config)",
            )
        p.add_argument("--help-all", action="store_true", help="list every accepted config key with its help")
        common(p, writes="output_dir")
        p.set_defaults(func=_cmd_stage)

    p = sub.add_parser("data", help="inspect data recipes")
    common(p)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pl = dsub.add_parser("list", help="list built-in recipes")
    common(pl)
    pp = dsub.add_parser(
        "preview",
        help="render examples through the chat template, marking trained tokens, with length statistics",
    )
    pp.add_argument(
        "recipe",
        nargs="?",
        help="built-in recipe name, recipe YAML path, or a data file / folder in a TRL format (detected)",
    )
    pp.add_argument(
        "--config",
        metavar="FILE",
        help="preview what a stage config trains on (its recipe, mixture or dataset_name, max_length, "
        "too_long)",
    )
    pp.add_argument(
        "--stage",
        default="sft",
        choices=registry.DATA_STAGES,
        help="the stage --config is for (default sft)",
    )
    pp.add_argument(
        "--model", help="model/tokenizer: Hub id, folder, or tiny:ARCH (default with --config: its model)"
    )
    pp.add_argument("--n", type=int, default=3, help="examples to render (default 3)")
    pp.add_argument("--max_length", type=int, default=None, help="flag rows longer than this many tokens")
    pp.add_argument(
        "--data_files", default=None, help="local file in the recipe's schema, instead of its source"
    )
    pp.add_argument("--chat_template", default=None, help="chatml, a .jinja file, or a Jinja string")
    common(pp)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        "label",
        help="people rank the model's own samples in a browser; the rankings train the reward model",
        description="Sample K completions per prompt from a model (an SFT artifact or any model), on a "
        "recipe's training prompts (never a held-out one), and serve a local page where people rank them: "
        "one prompt at a time, the completions shuffled, rank by number keys or by dragging, ties allowed, "
        "skip or flag. Every submission is appended to OUTPUT_DIR/labels.jsonl at once (the `ranked` "
        "schema, with labeller and model), and a restart resumes. Train on it with `hftune reward "
        "--data_recipe OUTPUT_DIR/recipe.yaml`; `hftune label stats OUTPUT_DIR` counts and measures "
        "agreement between labellers, and with a machine: `hftune label auto OUTPUT_DIR --reward_model "
        "PATH` (or `--verifier module:function`) ranks every item into OUTPUT_DIR/auto.jsonl. With a "
        "`reward_model`, `order: uncertainty` serves first the items it is least sure of. Serves on "
        "127.0.0.1 only, unless `allow_remote` (then behind an access token). Needs "
        "`pip install 'hftune[label]'`.",
        help_text=lambda: (None, _stage_help(label_config, "label")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        # No positionals: `--max_prompts 6` must reach the config, and `stats DIR` is read from what is left.
        usage="hftune label --config FILE [--key value ...]\n       hftune label stats DIR\n"
        "       hftune label auto DIR --reward_model PATH | --verifier module:function",
    )
    p.add_argument("--config", metavar="FILE", help="label config YAML (keys below; --key value overrides)")
    p.add_argument("--help-all", action="store_true", help="list every config key with its help")
    common(p)
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser(
        "tiny",
        help="build a tiny local model + tokenizer (for tests and offline runs)",
        description="Build a tiny causal language model and its tokenizer in OUTPUT_DIR, with no download: a "
        "byte-level BPE tokenizer with a ChatML template trained on a built-in corpus, random weights of the "
        "chosen architecture, then a short language-model pretraining on that corpus so it behaves like a "
        "(very small) base model. `model_name_or_path: tiny:ARCH` in a config builds and caches the same "
        "model; this command puts one where you want it.",
    )
    p.add_argument(
        "output_dir", metavar="OUTPUT_DIR", help="folder to create (new, empty, or an earlier tiny model)"
    )
    p.add_argument("--arch", default="llama", help="llama, qwen2, mistral or gpt2 (default llama)")
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument(
        "--pretrain_steps",
        type=int,
        default=TINY_PRETRAIN_STEPS,
        help="language-model steps on the built-in corpus, as for `tiny:ARCH` "
        f"(default {TINY_PRETRAIN_STEPS}; 0 leaves the weights random)",
    )
    p.add_argument("--seed", type=int, default=0)
    common(p, writes="OUTPUT_DIR")
    p.set_defaults(func=_cmd_tiny)

    def publishing(p: argparse.ArgumentParser, writes: str) -> None:
        p.add_argument("--eval", metavar="EVAL_DIR", help="an `hftune eval` folder to tabulate in the card")
        p.add_argument(
            "--base-model-id",
            metavar="HUB_ID",
            help="the Hub id of the adapter's base, for adapters trained on a local folder (rewrites "
            "base_model_name_or_path in the uploaded adapter_config.json and the card's base_model)",
        )
        p.add_argument(
            "--license",
            metavar="ID",
            help="the card's license, a Hub license id (apache-2.0, mit, other, ...); default: the base "
            "model's license if its files name one, else `other` with a note in the card",
        )
        common(p, writes=writes)

    p = sub.add_parser(
        "card",
        help="render a model card (README.md) from an artifact's manifests",
        description="Render a model card for a finished artifact folder from its manifest chain: Hub "
        "metadata (base model, library, datasets, tags, pipeline), lineage with key metrics, training "
        "config, how to load it, and an eval table with --eval. Prints it unless --output is given.",
    )
    p.add_argument("dir", metavar="DIR", help="a finished stage folder (with manifest.json)")
    p.add_argument("--output", metavar="FILE", help="write the card here instead of printing it")
    p.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub repo named in the loading snippet")
    publishing(p, writes="the --output file")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser(
        "push",
        help="upload an artifact (weights, tokenizer, card, manifest) to the Hub in one commit",
        description="Upload a finished artifact to the Hugging Face Hub in one commit: adapter (or "
        "full-model) safetensors, tokenizer and chat template, a generated model card, manifest.json, "
        "config.hftune.yaml and metrics.json; never pickles, checkpoints or work folders. The token comes "
        "only from HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("dir", metavar="DIR", help="a finished stage folder (with manifest.json)")
    p.add_argument("--repo-id", metavar="ORG/NAME", required=True, help="Hub model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument(
        "--dry-run",
        metavar="OUTDIR",
        help="write the exact folder that would be uploaded to OUTDIR; upload nothing",
    )
    p.add_argument("--revision", default="main", help="branch to commit to (created if missing)")
    p.add_argument("--commit-message", metavar="TEXT", help="default: Upload hftune STAGE artifact")
    publishing(p, writes="the --dry-run OUTDIR")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter (chain) into its base: one full safetensors model",
        description="Merge a LoRA adapter folder, or a chain (base -> SFT adapter -> PPO adapter), into its "
        "base in full precision and save a full model (safetensors), its tokenizer and a manifest. "
        "Reward-model adapters become sequence classifiers. Adapters trained on a 4-bit/8-bit base (QLoRA) "
        "are refused: they learnt corrections to the quantized weights, so merging them into the "
        "full-precision base does not reproduce the trained model, and merging into quantized weights loses "
        "precision.",
    )
    p.add_argument("dir", metavar="DIR", help="a finished LoRA adapter folder")
    p.add_argument(
        "out", metavar="OUT", help="folder for the merged model (new, empty or an earlier hftune output)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="dtype of the saved weights (default float32); the merge itself always runs in float32",
    )
    p.add_argument(
        "--from-full-precision",
        action="store_true",
        help="merge a QLoRA (4/8-bit trained) adapter into the unquantized base anyway; the result "
        "approximates the trained model (the adapter was fitted to the quantized weights)",
    )
    common(p, writes="OUT")
    p.set_defaults(func=_cmd_merge)
    return parser


def entry() -> None:
    """The `hftune` command (and `python -m hftune`): `main()`, then the process ends without the
    interpreter's 1-1.5 s teardown where that is safe (`hftune.process_exit`). A traceback (`--debug`) or
    `SystemExit` (argparse's usage errors, `--help`) leaves the normal way."""
    from hftune.process_exit import exit_now

    exit_now(main())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logs.setup(debug)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Measured: with OMP_NUM_THREADS unset, PPO's generate/score loop on CPU ran 3x slower than with it set
    # to the same number of threads torch picks anyway.
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    try:
        parser = build_parser()
        ns, rest = parser.parse_known_args(argv)
        if not getattr(ns, "func", None):
            parser.print_help()
            return 2
        return ns.func(ns, rest)
    except UserError as err:
        if debug:
            raise
        from hftune import distributed
        from hftune.config import ConfigError

        # A config is refused alike by every process of a launch: one of them says so.
        if not isinstance(err, ConfigError) or distributed.is_main_process():
            print(f"hftune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hftune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from hftune.artifacts import no_space_message

        message = no_space_message(err)
        if message is None or debug:
            raise
        print(f"hftune: error: {message}", file=sys.stderr)
        return 1
