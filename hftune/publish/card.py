"""Model cards rendered from an artifact's manifest chain.

    hftune card runs/tiny/ppo [--eval runs/tiny/eval] [--output README.md]

The card says what the folder is, where it came from (base -> SFT -> reward model -> PPO, walking the
`parents` of each `manifest.json`, with each stage's key metrics; a line pretrained from scratch starts at
its random initialisation and names no Hub base model), the resolved training config, how to load it, and
the eval comparison when an eval folder is given. Its YAML front matter is written by
`huggingface_hub.ModelCardData`, so the Hub and `ModelCard` read it back. Everything is rendered from files
already on disk; nothing is fetched, and the text goes through `strip_secrets` last. Every name that comes
from those files (paths, variants, metrics) is escaped or put in a code span it cannot leave: a viewer
renders raw HTML. `--output` replaces only a card hftune wrote and nobody edited since (its marker line).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hftune import artifacts
from hftune.config import strip_secrets
from hftune.errors import UserError
from hftune.evaluation import verdict
from hftune.evaluation.report import markdown
from hftune.evaluation.report import results as eval_results
from hftune.evaluation.report.sections import metrics_table
from hftune.evaluation.report.table import Cell, stat_cell
from hftune.lineage import Lineage, Node, is_hub_id, lineage, read_manifest

logger = logging.getLogger(__name__)

# The RL stages (`hftune ppo --algorithm ...`): one kind of model, an RLHF policy.
_RL_STAGES = ("ppo", "rloo", "grpo")
_STAGE_TAGS = {
    "sft": ["sft"],
    "reward": ["reward-model"],
    **{rl: ["rlhf"] for rl in ("ppo", "rloo", "grpo")},
    "merge": ["merged"],
    **{po: ["preference-optimization", po] for po in ("dpo", "kto", "orpo", "simpo")},
}
_STAGE_NAMES = {
    "init": "from scratch",
    "pretrain": "pretraining",
    "sft": "supervised fine-tuning",
    "reward": "reward model",
    "ppo": "RLHF",
    "dpo": "DPO",
    "kto": "KTO",
    "orpo": "ORPO",
    "simpo": "SimPO",
    "merge": "merged adapter",
    "eval": "evaluation",
}
# The few numbers worth a line in the lineage table, per stage (the full set is in each manifest).
_KEY_METRICS = {
    "pretrain": ("eval_loss_before", "eval_loss", "train_loss", "global_step"),
    "sft": ("eval_loss_before", "eval_loss", "train_loss", "global_step"),
    "reward": ("accuracy", "accuracy_before", "mean_margin", "length_correlation", "global_step"),
    "ppo": (
        "algorithm",
        "heldout/reward first",
        "heldout/reward last",
        "objective/scores last",
        "reward last",
        "objective/kl last",
        "kl last",
        "steps",
        "alarm",
    ),
    "merge": ("dtype", "merged_adapters", "max_abs_logit_diff"),
    **{
        po: ("heldout/rewards/accuracies", "heldout/rewards/margins", "heldout/logps/chosen", "global_step")
        for po in ("dpo", "kto", "orpo", "simpo")
    },
}
# The first line after the metadata of every card hftune renders: which command wrote it (`card`, or `push`
# for a staged upload) and the sha256 of the rest of the card. `write` replaces an existing file only if it
# carries this line and is unchanged since; `push --dry-run` replaces only a folder it staged before.
_MARKER = "<!-- written by hftune {by}; sha256 of the rest of this file: {digest} -->"
_MARKER_LINE = re.compile(
    r"<!-- written by hftune (card|push); sha256 of the rest of this file: ([0-9a-f]{64}) -->\n"
)


# ---------------------------------------------------------------------------------------------- metadata


@dataclass
class CardInfo:
    """What the card needs to know about the folder (push warns from it too)."""

    folder: Path
    lineage: Lineage
    is_adapter: bool
    is_reward_model: bool
    adapter_config: dict[str, Any]
    load_base: str | None  # what an adapter names as its base (after --base-model-id)


def inspect_folder(folder: str | os.PathLike, base_model_id: str | None = None) -> CardInfo:
    folder = Path(folder)
    chain = lineage(folder)
    if chain.nodes[-1].stage == "eval":
        raise UserError(
            f"{folder} is an `hftune eval` folder (results, no model): give it to the model's card as "
            f"`--eval {folder}`, e.g. `hftune push MODEL_DIR --repo-id ORG/NAME --eval {folder}`"
        )
    adapter_file = folder / "adapter_config.json"
    is_adapter = adapter_file.is_file()
    adapter_config = artifacts.read_json_object(adapter_file) if is_adapter else {}
    if is_adapter:
        is_rm = adapter_config.get("task_type") == "SEQ_CLS"
    else:
        config = (
            artifacts.read_json_object(folder / "config.json") if (folder / "config.json").is_file() else {}
        )
        archs = config.get("architectures") or []
        is_rm = isinstance(archs, list) and any(str(a).endswith("ForSequenceClassification") for a in archs)
    is_rm = is_rm or chain.nodes[-1].stage == "reward"
    load_base = (base_model_id or adapter_config.get("base_model_name_or_path")) if is_adapter else None
    if load_base is not None and not isinstance(load_base, str):
        raise UserError(f"{adapter_file}: `base_model_name_or_path` is not a string")
    return CardInfo(folder, chain, is_adapter, is_rm, adapter_config, load_base)


def _datasets_and_recipes(chain: Lineage) -> tuple[list[str], list[str]]:
    hub, recipes = [], []
    for node in chain.nodes:
        data = (node.manifest or {}).get("data") or {}
        hub_id = _hub_dataset(data.get("source"))
        if hub_id:
            hub.append(hub_id)
        elif data.get("recipe"):
            recipes.append(str(data["recipe"]))
    return list(dict.fromkeys(hub)), list(dict.fromkeys(recipes))


def _hub_dataset(source: Any) -> str | None:
    """A manifest records a recipe source as a mapping, or (written through `default=str`) as the repr of
    `data.Source`; either way only a `hub` source is a Hub dataset."""
    if isinstance(source, dict):
        return source.get("hub") or None
    if isinstance(source, str):
        match = re.search(r"hub='([^']+)'", source)
        return match.group(1) if match else None
    return None


def _license(base: str) -> str | None:
    """The base model's license, only from files already on this machine (its folder or the Hub cache)."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    folder = Path(base)
    readme, config = folder / "README.md", folder / "config.json"
    if not folder.is_dir() and is_hub_id(base):
        for name in ("README.md", "config.json"):
            try:
                cached = try_to_load_from_cache(base, name)
            except Exception:  # a malformed id or cache: no license is a fine answer
                cached = None
            if isinstance(cached, str):
                readme, config = (Path(cached), config) if name == "README.md" else (readme, Path(cached))
    # Another project's files: one that cannot be read says nothing about the license; no reason to fail.
    try:
        license_ = (metadata_load(readme) or {}).get("license") if readme.is_file() else None
    except Exception:
        license_ = None
    if not license_ and config.is_file():
        try:
            license_ = json.loads(config.read_text(encoding="utf-8")).get("license")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            license_ = None
    return str(license_) if license_ and isinstance(license_, str | int | float) else None


def _metadata(
    info: CardInfo,
    base: str | None,
    relation: str | None,
    license_: str,
    model_name: str,
    evaluation: Evaluation | None,
) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    hub_datasets, recipes = _datasets_and_recipes(info.lineage)
    tags = ["hftune", "trl"]
    if info.is_adapter:
        tags += ["peft"] + (["lora"] if info.adapter_config.get("peft_type") == "LORA" else [])
    for node in info.lineage.nodes:
        tags += _STAGE_TAGS.get(node.stage, [])
        algorithm = ((node.manifest or {}).get("metrics") or {}).get("algorithm")
        if node.stage in _RL_STAGES:  # (older manifests: `stage: ppo`, the algorithm in their metrics)
            tags.append(str(algorithm or node.stage))
    tags += recipes
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type="hftune-eval",
            dataset_name=evaluation.suite,
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for metric, value in (evaluation.headline() if evaluation else [])
    ]
    data = ModelCardData(
        base_model=base,
        library_name="peft" if info.is_adapter else "transformers",
        datasets=hub_datasets or None,
        tags=list(dict.fromkeys(tags)),
        license=license_,
        pipeline_tag="text-classification" if info.is_reward_model else "text-generation",
        model_name=model_name if results else None,
        eval_results=results or None,
        **({"base_model_relation": relation} if base and relation else {}),
    )
    return data.to_yaml()


_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")


def _license_choice(license_: str | None, info: CardInfo) -> tuple[str, str | None]:
    """The `license` of the metadata and where it came from: `--license`, else the base model's license (from
    its files on this machine), else `other` with None (the card then says no license was given)."""
    if license_ is not None:
        if not _LICENSE_ID.fullmatch(license_):
            raise UserError(
                f"--license {license_!r}: expected a Hub license id such as apache-2.0, mit or other "
                "(lowercase letters, digits, '.', '+', '-')"
            )
        return license_, "--license"
    inherited = _license(info.lineage.root.name)
    if inherited:
        return inherited, "the base model's license"
    return "other", None


def _real_base(info: CardInfo, base_model_id: str | None) -> tuple[str | None, str | None]:
    """The Hub metadata's `base_model` and `base_model_relation`. An adapter's base is the model it loads on:
    `--base-model-id`, else its direct parent as the manifest names it (an SFT folder for an adapter trained
    on one, not the root of the lineage). A full model links to the root of its lineage (none for a model
    trained from scratch)."""
    if base_model_id:
        return base_model_id, "adapter" if info.is_adapter else "finetune"
    if info.lineage.from_scratch:
        return None, None  # trained from random weights here: no model on the Hub to link to
    if info.is_adapter:
        parent = _model_parent(info.lineage.nodes[-1])
        return parent or info.load_base, "adapter"
    return info.lineage.root.name, "finetune"  # a merged LoRA chain too: its weights are the fine-tune


def _model_parent(node: Node) -> str | None:
    """The model a stage trained on (not the reward model it trained against), as its manifest names it."""
    for ref in (node.manifest or {}).get("parents") or []:
        if isinstance(ref, dict) and ref.get("role") != "reward_model" and ref.get("name_or_path"):
            return str(ref["name_or_path"])
    return None


# -------------------------------------------------------------------------------------------------- body


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _key_metrics(node: Node) -> str:
    metrics = (node.manifest or {}).get("metrics") or {}
    kind = "ppo" if node.stage in _RL_STAGES else node.stage
    keys = [k for k in _KEY_METRICS.get(kind, ()) if k in metrics]
    if not keys:  # a stage this module does not know: its first few numbers
        keys = [k for k, v in metrics.items() if isinstance(v, int | float)][:4]
    return ", ".join(f"{k} {_fmt(metrics[k])}" for k in keys) or "-"


def _code(text: Any, *, cell: bool = False) -> str:
    """A name (a path, an id) as a code span: nothing in it is Markdown or HTML, so a name cannot inject
    either. Escapes do not work in a code span, so it is fenced with more backticks than the name holds in
    a row; a newline would end a table row, and in a table cell a pipe is escaped (cells are split first)."""
    text = " ".join(str(text).splitlines())
    if cell:
        text = text.replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in `text`, so no line of it can close the block."""
    return "`" * max(3, max(map(len, re.findall("`+", text)), default=0) + 1)


def _lineage_section(info: CardInfo) -> list[str]:
    lines = [
        "## Lineage",
        "",
        "Each model below was trained from the one above it (a reward model scores the RLHF stage's "
        "replies). Read from each stage's `manifest.json`; the full metrics are in those manifests.",
        "",
        "| # | stage | model | role | key metrics |",
        "|---|---|---|---|---|",
    ]
    for i, node in enumerate(info.lineage.nodes):
        stage = _STAGE_NAMES.get(node.stage, node.stage)
        if node.stage in _RL_STAGES:
            stage = f"RLHF ({((node.manifest or {}).get('metrics') or {}).get('algorithm', node.stage)})"
        local = not (node.manifest or node.from_scratch or is_hub_id(node.name))
        where = _code(node.name, cell=True) + (" (local)" if local else "")
        if node.note:
            where += f" ⚠ {markdown.escape(node.note)}"
        cells = [
            str(i),
            markdown.escape(stage),
            where,
            markdown.escape(node.role or "-"),
            markdown.escape(_key_metrics(node)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _warnings_section(info: CardInfo) -> list[str]:
    lines = []
    if info.is_adapter and info.load_base and not is_hub_id(info.load_base):
        lines += [
            f"> **Warning: this adapter cannot be loaded from the Hub as it is.** Its base "
            f"(`base_model_name_or_path` in adapter_config.json) is {_code(info.load_base)}, a folder on the "
            "machine that trained it, not a Hub model. Push that base too (or merge the chain with `hftune "
            "merge` and push the merged model), then push this adapter again with "
            "`--base-model-id ORG/NAME`.",
            "",
        ]
    local = [n for n in info.lineage.local_only() if n != info.load_base]
    if local:
        names = ", ".join(map(_code, local))
        lines += [
            f"> **Note:** the lineage starts from local-only models a Hub user cannot load: {names}. "
            "They are named for provenance only.",
            "",
        ]
    return lines


def _training_config(folder: Path, chain: Lineage) -> list[str]:
    """The folder's resolved config; a merged model shows the config of the adapter it was merged from."""
    source = folder
    for node in reversed(chain.nodes):
        if node.folder is not None and (node.folder / "config.hftune.yaml").is_file():
            source = node.folder
            break
    path = source / "config.hftune.yaml"
    if not path.is_file():
        return ["## Training config", "", "No `config.hftune.yaml` was found.", ""]
    try:
        config = strip_secrets(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not readable as YAML ({_first_line(err)})") from None
    title = "" if source == folder else f" (of {_code(source)}, which this model was made from)"
    text = yaml.safe_dump(config, sort_keys=True).rstrip()
    return [
        "## Training config",
        "",
        *_hyperparameters(config),
        f"The full resolved hftune config{title}: every default explicit, secrets removed.",
        "",
        "<details><summary>config.hftune.yaml</summary>",
        "",
        _fence(text) + "yaml",
        text,
        _fence(text),
        "",
        "</details>",
        "",
    ]


def _hyperparameters(config: Any) -> list[str]:
    """The few settings a reader looks for first, as a table (those the config has)."""
    if not isinstance(config, dict):
        return []

    def has(key: str) -> bool:
        return config.get(key) is not None and config.get(key) != ""

    rows = []
    for key, label in (("algorithm", "algorithm"), ("learning_rate", "learning rate")):
        if has(key):
            rows.append((label, config[key]))
    if has("max_steps") and isinstance(config["max_steps"], int) and config["max_steps"] > 0:
        rows.append(("steps", config["max_steps"]))
    elif has("num_train_epochs"):
        rows.append(("epochs", config["num_train_epochs"]))
    if has("per_device_train_batch_size"):
        batch = f"{config['per_device_train_batch_size']} per device"
        if (
            isinstance(config.get("gradient_accumulation_steps"), int)
            and config["gradient_accumulation_steps"] > 1
        ):
            batch += f" x {config['gradient_accumulation_steps']} accumulation steps"
        rows.append(("batch size", batch))
    if config.get("use_peft") is True:
        rows.append(("LoRA r / alpha", f"{config.get('lora_r', '?')} / {config.get('lora_alpha', '?')}"))
    elif config.get("use_peft") is False:
        rows.append(("LoRA", "no (full fine-tune)"))
    for key, label in (
        ("max_length", "max_length"),
        ("beta", "beta"),
        ("kl_coef", "kl_coef"),
        ("seed", "seed"),
    ):
        if has(key):
            rows.append((label, config[key]))
    if not rows:
        return []
    return [
        "| setting | value |",
        "|---|---|",
        *(f"| {markdown.escape(k)} | {markdown.escape(_fmt(v))} |" for k, v in rows),
        "",
    ]


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _usage(info: CardInfo, repo_id: str | None) -> list[str]:
    repo = repo_id or "ORG/NAME"
    auto = "AutoModelForSequenceClassification" if info.is_reward_model else "AutoModelForCausalLM"
    head = ["## How to load", "", "```python"]
    if info.is_adapter:
        extra = ", num_labels=1" if info.is_reward_model else ""
        code = [
            "from peft import PeftModel",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            # json.dumps: a Python string literal whatever the (local) path holds.
            f"base = {auto}.from_pretrained({json.dumps(info.load_base)}{extra})",
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # with its chat template',
        ]
    else:
        code = [
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f'model = {auto}.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # with its chat template',
        ]
    if info.is_reward_model:
        tail = [
            "```",
            "",
            "The score is read at the reply's last token (its end-of-turn token), with the conversation "
            "rendered by the tokenizer's chat template; `hftune.models.scoring.load_scorer` does exactly "
            "that.",
            "",
        ]
    else:
        code += [
            "",
            'messages = [{"role": "user", "content": "What is 2 + 2?"}]',
            'ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))",
        ]
        tail = ["```", ""]
    if info.is_adapter and len(info.lineage.nodes) > 2 and info.lineage.nodes[-2].manifest:
        tail += [
            "This adapter sits on another fine-tuned model, not directly on a base model; `hftune merge` "
            "writes the whole chain as one full model.",
            "",
        ]
    return head + code + tail


@dataclass
class Evaluation:
    """An eval folder's results.json, and where this card's model is in it: its variant, and for one seed run
    of a seeded variant, that run (its index in `seed_runs`, its name and seed)."""

    folder: Path
    results: dict[str, Any]
    variant: str | None
    seed_index: int | None = None
    seed_run: str | None = None
    seed: Any = None

    @property
    def suite(self) -> str:
        return str((self.results.get("suite") or {}).get("name") or "eval")

    def own(self, metric: str) -> float | None:
        """This model's own mean of `metric`: its seed run's where it is one, else its variant's."""
        if self.variant is None:
            return None
        cell = eval_results.stat(self.results, self.variant, metric)
        if not isinstance(cell, dict):
            return None
        if self.seed_index is not None:
            per_seed = (cell.get("seeds") or {}).get("per_seed") or []
            value = per_seed[self.seed_index] if self.seed_index < len(per_seed) else None
        else:
            value = cell.get("mean")
        return float(value) if eval_results.finite(value) else None

    def headline(self) -> list[tuple[str, float]]:
        """This model's metrics for the Hub's model-index: every metric the eval measured for it, in the
        report's order (a seed run's own numbers, not its variant's mean)."""
        out = []
        for metric in eval_results.metric_names(self.results):
            value = self.own(metric)
            if value is not None:
                out.append((eval_results.label(self.results, metric), value))
        return out

    def verdicts(self) -> tuple[list[dict], bool]:
        """The eval's verdicts about this model's variant (as the variant or its baseline), and whether they
        were chosen that way (False: every verdict, since the variant is unknown)."""
        entries = [e for e in self.results.get("verdicts") or [] if isinstance(e, dict) and e.get("line")]
        if self.variant is not None:
            mine = [e for e in entries if self.variant in (e.get("variant"), e.get("baseline"))]
            if mine:
                return mine, True
        return entries, False


def _evaluation(eval_dir: str | os.PathLike | None, folder: Path) -> Evaluation | None:
    if eval_dir is None:
        return None
    results = _read_results(Path(eval_dir))
    mine = os.path.realpath(folder)

    def same(path: Any) -> bool:
        return isinstance(path, str) and os.path.realpath(path) == mine

    for variant, entry in (results.get("variants") or {}).items():
        for i, run in enumerate(entry.get("seed_runs") or []):
            if isinstance(run, dict) and same(run.get("model")):
                return Evaluation(Path(eval_dir), results, variant, i, str(run.get("run")), run.get("seed"))
        models = entry.get("model")
        if any(same(m) for m in (models if isinstance(models, list) else [models])):
            return Evaluation(Path(eval_dir), results, variant)
    return Evaluation(Path(eval_dir), results, None)


def _eval_section(evaluation: Evaluation | None, folder: Path) -> list[str]:
    """The eval's metrics table, as report.md shows it but turned on its side (a row per metric fits a card
    better than a column per metric), so both list the same metrics in the same order, formatted alike. This
    model's column is marked; a seed run gets a column of its own numbers beside its variant's mean."""
    title = ["## Evaluation", ""]
    if evaluation is None:
        return [*title, "No evaluation was given for this card (`--eval EVAL_DIR` adds one).", ""]
    results, eval_dir = evaluation.results, evaluation.folder
    level = eval_results.confidence(results)
    note = (
        f"From {_code(eval_dir)}: each cell is the mean and its paired bootstrap {level} CI over the same "
        "held-out prompts, with the same decoding for every variant; ↑ higher is better, ↓ lower is better."
    )
    if "win_rate" in eval_results.metric_names(results):
        win = eval_results.info(results, "win_rate")["description"]
        note += f" **{markdown.escape(eval_results.label(results, 'win_rate'))}**: {markdown.escape(win)}"
    lines = [*title, note, "", *_own_column_note(evaluation), *markdown.table(_marked_table(evaluation))]
    n = _prompt_counts(results)
    if n:
        lines += [f"n (prompts per cell): {', '.join(str(x) for x in sorted(n))}", ""]
    if evaluation.variant is None and not _evaluated(eval_dir, folder):
        lines += [f"Note: this evaluation does not list {_code(folder)} among the models it compared.", ""]
    return lines


def _own_column_note(evaluation: Evaluation) -> list[str]:
    variant = evaluation.variant
    if variant is None:
        return []
    name = markdown.escape(variant)
    if evaluation.seed_run is None:
        return [f"This model is the **{name}** column (marked *this model*).", ""]
    runs = (evaluation.results["variants"][variant].get("seed_runs")) or []
    return [
        f"This model is one seed run of the **{name}** variant: {_code(evaluation.seed_run)} (seed "
        f"{markdown.escape(evaluation.seed)}). The **{name}** column is the mean over its {len(runs)} seed "
        f"runs; the column marked *this model* is this run's own mean over the same prompts (no interval: "
        "one run).",
        "",
    ]


def _marked_table(evaluation: Evaluation):
    """The transposed metrics table, this model's column marked (a seed run: its own column after its
    variant's)."""
    table = metrics_table(evaluation.results).transposed("metric")
    if evaluation.variant is None:
        return table
    header, rows = list(table.header), [list(row) for row in table.rows]
    at = next((i for i, c in enumerate(header) if i > 0 and c.text == evaluation.variant), None)
    if at is None:
        return table
    if evaluation.seed_run is None:
        header[at] = replace(header[at], tag="this model", strong=True)
    else:
        header.insert(at + 1, Cell(evaluation.seed_run, tag="this model", strong=True))
        for row, metric in zip(rows, eval_results.metric_names(evaluation.results), strict=False):
            value = evaluation.own(metric)
            row.insert(at + 1, stat_cell(None if value is None else {"mean": value}))
    return replace(table, header=header, rows=rows)


def _prompt_counts(results: dict[str, Any]) -> set[int]:
    cells = (
        eval_results.stat(results, variant, metric)
        for variant in eval_results.variant_names(results)
        for metric in eval_results.metric_names(results)
    )
    return {cell["n"] for cell in cells if isinstance(cell, dict) and isinstance(cell.get("n"), int)}


def _read_results(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "results.json"
    if not path.is_file():
        raise UserError(f"--eval {eval_dir}: no results.json (is it an `hftune eval` output folder?)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--eval {path}: not valid JSON ({err})") from None
    problem = _results_problem(results)
    if problem:
        raise UserError(f"--eval {path}: not the results.json `hftune eval` writes ({problem})")
    return results


def _results_problem(results: Any) -> str | None:
    """What keeps `results` from being read as results.json (the shape the report code relies on)."""
    variants = results.get("variants") if isinstance(results, dict) else None
    if not isinstance(variants, dict):
        return "no `variants` mapping each variant to its `metrics`"
    if not isinstance(results.get("baseline") or "", str):
        return "`baseline` is not a variant name"
    for key in ("suite", "metric_info", "win_rates", "decoding"):
        if not isinstance(results.get(key) or {}, dict):
            return f"`{key}` is not an object"
    for key in ("metric_info", "win_rates"):
        for name, entry in (results.get(key) or {}).items():
            if not isinstance(entry, dict):
                return f"`{key}` of {name!r} is not an object"
    for variant, entry in variants.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics") or {}, dict):
            return f"variant {variant!r} has no `metrics` object"
        for metric, cell in (entry.get("metrics") or {}).items():
            if cell is not None and not isinstance(cell, dict):
                return f"variant {variant!r}, metric {metric!r} is {cell!r}, not its mean, CI and n"
    return None


def _evaluated(eval_dir: Path, folder: Path) -> bool:
    try:
        manifest = read_manifest(eval_dir) or {}
    except UserError as err:
        raise UserError(f"--eval {eval_dir}: {err}") from None
    mine = os.path.realpath(folder)
    names = (p.get("name_or_path") for p in manifest.get("parents") or [])
    return any(isinstance(n, str) and os.path.realpath(n) == mine for n in names)


def _provenance(info: CardInfo) -> list[str]:
    manifest = info.lineage.nodes[-1].manifest or {}
    esc = markdown.escape
    libs = ", ".join(f"{esc(k)} {esc(v)}" for k, v in (manifest.get("libraries") or {}).items())
    lines = [
        "## Provenance",
        "",
        f"- manifest.json sha256: `{artifacts.manifest_sha256(info.folder)}`",
        f"- created: {esc(manifest.get('created', '?'))}, seed {esc(manifest.get('seed', '?'))}, "
        f"git revision {esc(manifest.get('git_revision') or 'unknown')}",
    ]
    if libs:
        lines.append(f"- libraries: {libs}")
    data = manifest.get("data") or {}
    if data.get("recipe"):
        lines.append(
            f"- data: recipe {_code(data['recipe'])}, {esc(data.get('n_train', '?'))} training rows, "
            f"fingerprint {_code(data.get('fingerprint', '?'))}, "
            f"dropped {_code(json.dumps(data.get('dropped') or {}, default=str))}"
        )
    return [*lines, ""]


def _reward_report(node: Node) -> dict[str, Any]:
    """A reward model's held-out report: its reward_report.json, else the numbers its manifest kept."""
    if node.folder is not None and (node.folder / "reward_report.json").is_file():
        try:
            report = artifacts.read_json_object(node.folder / "reward_report.json")
        except UserError:
            report = {}
        if report:
            return report
    return dict((node.manifest or {}).get("metrics") or {})


def _reward_nodes(info: CardInfo) -> list[Node]:
    return [n for n in info.lineage.nodes if n.stage == "reward" and n.manifest]


def _synthetic_recipes(info: CardInfo) -> list[str]:
    """The lineage's data recipes that are hftune's built-in synthetic ones (their description says so)."""
    from hftune.data.recipe import BUILTIN_RECIPES_DIR

    found = []
    for node in info.lineage.nodes:
        recipe = ((node.manifest or {}).get("data") or {}).get("recipe")
        path = (
            BUILTIN_RECIPES_DIR / f"{recipe}.yaml"
            if isinstance(recipe, str) and recipe.isidentifier()
            else None
        )
        if path is None or not path.is_file():
            continue
        try:
            description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description") or ""
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            continue
        if str(description).lower().startswith("synthetic"):
            found.append(recipe)
    return list(dict.fromkeys(found))


def _ci_text(cell: dict | None) -> str:
    if not isinstance(cell, dict) or not eval_results.finite(cell.get("mean")):
        return "-"
    low, high = cell.get("ci_low"), cell.get("ci_high")
    ci = (
        f" [{_fmt(float(low))}, {_fmt(float(high))}]"
        if eval_results.finite(low) and eval_results.finite(high)
        else ""
    )
    return f"{_fmt(float(cell['mean']))}{ci}"


def _recipes_text(info: CardInfo) -> str:
    recipes = _datasets_and_recipes(info.lineage)
    names = recipes[0] + recipes[1]
    return ", ".join(map(_code, names)) if names else "its training data"


def _use_sections(info: CardInfo, evaluation: Evaluation | None) -> list[str]:
    """Intended use, out-of-scope use and limitations, each sentence from what the run recorded."""
    own_recipe = ((info.lineage.nodes[-1].manifest or {}).get("data") or {}).get("recipe")
    data = _code(own_recipe) if own_recipe else _recipes_text(info)
    synthetic = _synthetic_recipes(info)
    if info.is_reward_model:
        intended = (
            f"Scoring replies to prompts like those of {data} (one scalar per reply; higher is preferred), "
            "e.g. as the reward model of an RLHF stage or to rank candidate replies."
        )
    else:
        intended = (
            "Generating chat replies (through the tokenizer's chat template) to prompts like those of "
            f"{data}."
        )
    if evaluation is not None and evaluation.variant is not None:
        intended += (
            f" It was evaluated as the {_code(evaluation.variant)} variant of the {_code(evaluation.suite)} "
            "suite (see Evaluation)."
        )
    measured = "the held-out split of each stage's training data (the metrics in Lineage)"
    if evaluation is not None and evaluation.variant is not None:
        measured += f" and the held-out prompts of the {_code(evaluation.suite)} evaluation"
    out_of_scope = [f"- Uses beyond what was measured: this card reports measurements only on {measured}."]
    if synthetic:
        out_of_scope.append(
            f"- Real-world prompts: the training data ({', '.join(map(_code, synthetic))}) is synthetic, "
            "generated by hftune's built-in recipes; nothing here measures behaviour on real user prompts."
        )
    if evaluation is None:
        out_of_scope.append(
            "- Decisions that need evaluation results: no evaluation was attached to this card."
        )
    return [
        "## Intended use",
        "",
        intended,
        "",
        "## Out-of-scope use",
        "",
        *out_of_scope,
        "",
        "## Limitations",
        "",
        *_limitations(info, evaluation, synthetic),
        "",
    ]


def _limitations(info: CardInfo, evaluation: Evaluation | None, synthetic: list[str]) -> list[str]:
    lines = []
    last = info.lineage.nodes[-1]
    manifest = last.manifest or {}
    if evaluation is not None and evaluation.seed_run is not None:
        runs = evaluation.results["variants"][evaluation.variant].get("seed_runs") or []
        seeds = ", ".join(markdown.escape(r.get("seed")) for r in runs if isinstance(r, dict))
        lines.append(
            f"- Seeds: this is one of {len(runs)} seed runs (seeds {seeds}) of the same recipe; the "
            "Evaluation shows its own numbers beside their mean."
        )
    elif evaluation is not None and evaluation.variant is not None:
        lines.append(
            f"- Seeds: one training run (seed {markdown.escape(manifest.get('seed', '?'))}); the evaluation "
            "has no other seed of this variant, so run-to-run variance was not measured."
        )
    else:
        lines.append(f"- Seeds: one training run (seed {markdown.escape(manifest.get('seed', '?'))}).")
    if evaluation is not None and evaluation.variant is not None:
        verifier = eval_results.stat(evaluation.results, evaluation.variant, "verifier")
        if isinstance(verifier, dict) and eval_results.finite(verifier.get("mean")):
            own = evaluation.own("verifier")
            text = markdown.escape(_ci_text(verifier))
            if evaluation.seed_run is not None and own is not None:
                text = f"this run {_fmt(own)}; the mean over its variant's seed runs {text}"
            lines.append(
                f"- Verifier accuracy (replies a programmatic checker marks correct) on the eval's prompts: "
                f"{text}."
            )
        kl = eval_results.stat(evaluation.results, evaluation.variant, "kl_to_sft")
        if isinstance(kl, dict) and eval_results.finite(kl.get("mean")):
            lines.append(
                f"- KL to the SFT model on the eval's prompts: {markdown.escape(_ci_text(kl))} nats."
            )
    metrics = manifest.get("metrics") or {}
    kl_last = metrics.get("objective/kl last", metrics.get("kl last"))
    if eval_results.finite(kl_last) and last.stage in _RL_STAGES:
        lines.append(
            f"- KL to the SFT model in training (the last logged `objective/kl`): {_fmt(float(kl_last))}."
        )
    for node in _reward_nodes(info):
        report = _reward_report(node)
        corr = report.get("length_correlation")
        if not eval_results.finite(corr):
            continue
        who = "This reward model's" if node is last else f"The reward model {_code(node.name)}'s"
        line = f"- {who} scores correlate with reply length: r = {float(corr):+.2f} on its held-out pairs"
        if report.get("length_flag"):
            line += (
                " (flagged: the reward may be tracking length, so a higher reward may partly be longer "
                "replies)"
            )
        lines.append(line + ".")
    if synthetic:
        lines.append(
            f"- Synthetic data: {', '.join(map(_code, synthetic))} are hftune's built-in synthetic recipes "
            "(small, templated tasks)."
        )
    return lines


def _verdict_section(evaluation: Evaluation | None) -> list[str]:
    if evaluation is None or not evaluation.results.get("verdicts"):
        return []
    entries, chosen = evaluation.verdicts()
    if not entries:
        return []
    note = (
        f"The evaluation's verdicts on the claims about {_code(evaluation.variant)}:"
        if chosen
        else "The evaluation's verdicts (this card could not tell which of them are about this model):"
    )
    return ["## Verdict", "", note, "", *(f"- {_verdict(entry)}" for entry in entries), ""]


def _verdict(entry: dict) -> str:
    """One verdict as the eval's reports show it: its head in bold, why, then each metric checked."""
    head, segments = verdict.parts(entry)
    if not segments:  # a line not in the verdicts' shape: as it is
        return markdown.escape(str(entry["line"]))
    why = f" {entry['why']}" if entry.get("why") else ""
    return f"**{markdown.escape(head)}.**{markdown.escape(why)} {markdown.escape(' · '.join(segments))}"


def _reward_accuracy(info: CardInfo) -> list[str]:
    if not info.is_reward_model or info.lineage.nodes[-1].stage != "reward":
        return []
    report = _reward_report(info.lineage.nodes[-1])
    accuracy = report.get("accuracy")
    if not eval_results.finite(accuracy):
        return []
    ci = report.get("accuracy_ci95")
    text = (
        f"Held-out pairwise accuracy (the chosen reply scored above the rejected one): {float(accuracy):.3f}"
    )
    if isinstance(ci, list) and len(ci) == 2 and all(eval_results.finite(x) for x in ci):
        text += f" (95% bootstrap CI {float(ci[0]):.3f}-{float(ci[1]):.3f})"
    if isinstance(report.get("n_pairs"), int):
        text += f" over {report['n_pairs']} pairs"
    if eval_results.finite(report.get("accuracy_before")):
        text += f"; before training {float(report['accuracy_before']):.3f}"
    return ["## Reward model accuracy", "", text + ".", ""]


def _license_lines(license_: str, source: str | None) -> list[str]:
    if source is None:
        return ["> **No license was given: set `--license`** (the metadata says `license: other`).", ""]
    if source == "--license":
        return [f"License: {_code(license_)}.", ""]
    return [f"License: {_code(license_)} ({source}, read from its files; `--license` sets another).", ""]


def _summary(info: CardInfo, root: str) -> str:
    last = info.lineage.nodes[-1]
    kind = "LoRA adapter (PEFT)" if info.is_adapter else "full model"
    what = {
        "pretrain": "a language model pretrained on plain text",
        "sft": "a supervised fine-tune",
        "reward": "a reward model (one scalar score per reply, from TRL's RewardTrainer)",
        "ppo": "an RLHF policy, trained against a reward model with a KL penalty to its SFT model",
        "dpo": "a policy trained on preference pairs with DPO (no reward model), kept near its SFT model",
        "kto": "a policy trained on good / bad replies with KTO (no reward model), kept near its SFT model",
        "orpo": "a policy trained on preference pairs with ORPO (no reward model, no reference)",
        "simpo": "a policy trained on preference pairs with SimPO (no reward model, no reference)",
        "merge": "a LoRA adapter (chain) merged into its base weights",
    }.get("ppo" if last.stage in _RL_STAGES else last.stage, f"the output of the {_code(last.stage)} stage")
    arch = info.lineage.from_scratch
    if arch is None:
        base = f"built on {_code(root)}"
    else:
        where = "" if info.lineage.root is last else f", pretrained by hftune in {_code(root)}"
        base = (
            f"trained from scratch (no pretrained base model: {markdown.escape(arch)} weights initialised at "
            f"random{where})"
        )
    return f"A {kind} {base}: {what}. Trained with hftune on TRL, PEFT and transformers."


def render(
    folder: str | os.PathLike,
    *,
    eval_dir: str | os.PathLike | None = None,
    repo_id: str | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    by: str = "card",
) -> str:
    """The card (README.md text) for a finished artifact folder. Its first line after the metadata is a
    comment naming the command `by` (card or push) and the sha256 of the rest of the card (see `marker`)."""
    if repo_id is not None and not (is_hub_id(repo_id) and "/" in repo_id):
        raise UserError(f"--repo-id {repo_id!r}: expected ORG/NAME (a user or organisation, then a name)")
    if base_model_id is not None and not is_hub_id(base_model_id):
        raise UserError(f"--base-model-id {base_model_id!r}: expected a Hub model id such as ORG/NAME")
    info = inspect_folder(folder, base_model_id)
    root = info.lineage.root.name
    # The Hub link is the model a user loads this on: an adapter's own base (--base-model-id, else its direct
    # parent), a full model's root; the body keeps the full local lineage either way. A model trained from
    # scratch has no base model to link to.
    meta_base, relation = _real_base(info, base_model_id)
    license_, license_source = _license_choice(license, info)
    evaluation = _evaluation(eval_dir, info.folder)
    name = repo_id or info.folder.resolve().name
    body = [
        f"# {markdown.escape(name)}",
        "",
        _summary(info, root),
        "",
        *_license_lines(license_, license_source),
        *_warnings_section(info),
        *_use_sections(info, evaluation),
        *_verdict_section(evaluation),
        *_reward_accuracy(info),
        *_lineage_section(info),
        *_eval_section(evaluation, info.folder),
        *_usage(info, repo_id),
        *_training_config(info.folder, info.lineage),
        *_provenance(info),
    ]
    meta = _metadata(info, meta_base, relation, license_, name, evaluation)
    text = strip_secrets(f"---\n{meta}\n---\n\n" + "\n".join(body))
    head, sep, rest = text.partition("\n---\n\n")
    return f"{head}{sep}{_MARKER.format(by=by, digest=_sha256(text))}\n{rest}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def marker(path: Path) -> tuple[str, bool] | None:
    """Which hftune command wrote the card at `path` ("card" or "push") and whether it is unchanged since
    (the sha256 its marker line records is the rest of the file's); None for any other file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = _MARKER_LINE.search(text)
    if not match:
        return None
    return match.group(1), _sha256(text[: match.start()] + text[match.end() :]) == match.group(2)


def write(
    folder: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False, **kwargs: Any
) -> Path:
    """Render the card and write it to `output` atomically. An existing file is replaced only if it is a card
    hftune wrote and nobody edited since, or with `overwrite=True`; a failed write leaves nothing behind."""
    output = Path(output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name (e.g. {output / 'README.md'})")
    if (output.exists() or output.is_symlink()) and not overwrite:
        found = marker(output)
        if found is None or not found[1]:
            what = "an hftune card edited since" if found else "not a card hftune wrote"
            raise UserError(
                f"--output {output} already exists and is {what}; not overwriting it. Choose another file, "
                "or pass --overwrite to replace it."
            )
    text = render(folder, **kwargs)
    with artifacts.new_parents(output):
        try:
            artifacts.write_text(output, text)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise  # the CLI says the disk is full and exits 1: not the user's mistake
            raise UserError(f"--output {output}: could not write the card ({err.strerror or err})") from None
    logger.info("wrote model card %s", output)
    return output
