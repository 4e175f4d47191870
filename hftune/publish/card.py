"""Model cards rendered from an artifact's manifest chain.

    hftune card runs/tiny/ppo [--eval runs/tiny/eval] [--output README.md]

The card says what the folder is, where it came from (base -> SFT -> reward model -> PPO, walking the
`parents` of each `manifest.json`, with each stage's key metrics), the resolved training config, how to
load it, and the eval comparison when an eval folder is given. Its YAML front matter is written by
`huggingface_hub.ModelCardData`, so the Hub and `ModelCard` read it back. Everything is rendered from files
already on disk; nothing is fetched, and the text goes through `strip_secrets` last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftune import artifacts
from hftune.config import strip_secrets
from hftune.errors import UserError
from hftune.evaluation.report import markdown
from hftune.evaluation.report import results as eval_results
from hftune.evaluation.report.sections import metrics_table
from hftune.models.tiny import TINY_PREFIX

logger = logging.getLogger(__name__)

# Roles a manifest gives the model a stage started from; every other parent (a reward model) is a side input.
_MAIN_ROLES = ("base_model", "sft_model", "model", "adapter", "policy")
_STAGE_TAGS = {"sft": ["sft"], "reward": ["reward-model"], "ppo": ["rlhf"], "merge": ["merged"]}
_STAGE_NAMES = {
    "sft": "supervised fine-tuning",
    "reward": "reward model",
    "ppo": "RLHF",
    "merge": "merged adapter",
    "eval": "evaluation",
}
# The few numbers worth a line in the lineage table, per stage (the full set is in each manifest).
_KEY_METRICS = {
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
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_hub_id(name: str) -> bool:
    """A name a Hub user can load: `org/name` or `name`, and not a folder on this machine."""
    if name.startswith((TINY_PREFIX, ".", "/", "~")) or Path(name).exists():
        return False
    return bool(_HUB_ID.match(name)) and not name.endswith((".", "-"))


@dataclass
class Node:
    """One model of the lineage: a finished hftune stage (with its manifest) or a base model."""

    name: str  # as the manifest that mentions it names it
    manifest: dict[str, Any] | None = None
    folder: Path | None = None
    role: str | None = None
    note: str | None = None  # e.g. "changed since" when the recorded manifest hash no longer matches

    @property
    def stage(self) -> str:
        return (self.manifest or {}).get("stage") or "base"


@dataclass
class Lineage:
    nodes: list[Node] = field(default_factory=list)  # parents before children; the folder itself is last

    @property
    def root(self) -> Node:
        """The base model the policy line started from: follow the main parent until there is none."""
        node = self.nodes[-1]
        by_name = {_key(n.name): n for n in self.nodes}
        while node.manifest:
            parents = [p for p in node.manifest.get("parents", []) if p.get("role") in _MAIN_ROLES]
            if not parents:
                break
            node = by_name.get(_key(parents[0]["name_or_path"]), Node(parents[0]["name_or_path"]))
        return node

    def local_only(self) -> list[str]:
        return [n.name for n in self.nodes if not n.manifest and not is_hub_id(n.name)]


def _key(name: str) -> str:
    return os.path.realpath(name) if Path(name).exists() else name


def lineage(folder: str | os.PathLike) -> Lineage:
    """Every model behind `folder`, walking `parents` recursively (each model once)."""
    folder = Path(folder)
    manifest = artifacts.read_manifest(folder)
    if manifest is None:
        raise UserError(
            f"{folder}: no manifest.json, so not a finished hftune stage (still running, or failed?)"
        )
    out = Lineage()
    seen: set[str] = set()

    def visit(node: Node, depth: int) -> None:
        if depth > 16:
            raise UserError(f"{folder}: manifests name each other as parents more than 16 deep (a cycle?)")
        for ref in (node.manifest or {}).get("parents", []):
            name = ref["name_or_path"]
            if _key(name) in seen:
                continue
            seen.add(_key(name))
            visit(_parent_node(ref), depth + 1)
        out.nodes.append(node)

    seen.add(_key(str(folder)))
    visit(Node(str(folder), manifest, folder, role="this model"), 0)
    return out


def _parent_node(ref: dict[str, Any]) -> Node:
    name = ref["name_or_path"]
    path = Path(name)
    node = Node(name, role=ref.get("role"))
    if (path / artifacts.MANIFEST).is_file():
        node.manifest, node.folder = artifacts.read_manifest(path), path
        recorded = ref.get("manifest_sha256")
        if recorded and recorded != artifacts.manifest_sha256(path):
            node.note = "changed since it was used (its manifest differs from the recorded hash)"
    elif ref.get("stage"):
        # The parent was an hftune stage when it was used, but its folder is not here any more.
        node.note = f"{ref['stage']} stage; folder not found on this machine"
    return node


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
    adapter_file = folder / "adapter_config.json"
    adapter_config = json.loads(adapter_file.read_text()) if adapter_file.is_file() else {}
    is_adapter = adapter_file.is_file()
    if is_adapter:
        is_rm = adapter_config.get("task_type") == "SEQ_CLS"
    else:
        config = folder / "config.json"
        archs = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
        is_rm = any(a.endswith("ForSequenceClassification") for a in archs)
    is_rm = is_rm or chain.nodes[-1].stage == "reward"
    load_base = (base_model_id or adapter_config.get("base_model_name_or_path")) if is_adapter else None
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
    if readme.is_file():
        license_ = (metadata_load(readme) or {}).get("license")
        if license_:
            return str(license_)
    if config.is_file():
        license_ = json.loads(config.read_text()).get("license")
        return str(license_) if license_ else None
    return None


def _metadata(info: CardInfo, root_name: str) -> str:
    from huggingface_hub import ModelCardData

    hub_datasets, recipes = _datasets_and_recipes(info.lineage)
    tags = ["hftune", "trl"]
    if info.is_adapter:
        tags += ["peft"] + (["lora"] if info.adapter_config.get("peft_type") == "LORA" else [])
    for node in info.lineage.nodes:
        tags += _STAGE_TAGS.get(node.stage, [])
        algorithm = ((node.manifest or {}).get("metrics") or {}).get("algorithm")
        if node.stage == "ppo":
            tags.append(str(algorithm or "ppo"))
    tags += recipes
    data = ModelCardData(
        base_model=root_name,
        library_name="peft" if info.is_adapter else "transformers",
        datasets=hub_datasets or None,
        tags=list(dict.fromkeys(tags)),
        license=_license(info.lineage.root.name),
        pipeline_tag="text-classification" if info.is_reward_model else "text-generation",
    )
    return data.to_yaml()


# -------------------------------------------------------------------------------------------------- body


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _key_metrics(node: Node) -> str:
    metrics = (node.manifest or {}).get("metrics") or {}
    keys = [k for k in _KEY_METRICS.get(node.stage, ()) if k in metrics]
    if not keys:  # a stage this module does not know: its first few numbers
        keys = [k for k, v in metrics.items() if isinstance(v, int | float)][:4]
    return ", ".join(f"{k} {_fmt(metrics[k])}" for k in keys) or "-"


def _code(text: Any) -> str:
    """A name as a code span in a table cell: escapes do not work in a code span, except a pipe's (the
    table is split into cells first), and a newline would end the row."""
    return "`" + str(text).replace("|", "\\|").replace("\n", " ") + "`"


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
        if node.stage == "ppo":
            stage = f"RLHF ({((node.manifest or {}).get('metrics') or {}).get('algorithm', 'ppo')})"
        where = _code(node.name) + ("" if node.manifest or is_hub_id(node.name) else " (local)")
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
            f"(`base_model_name_or_path` in adapter_config.json) is `{info.load_base}`, a folder on the "
            "machine that trained it, not a Hub model. Push that base too (or merge the chain with `hftune "
            "merge` and push the merged model), then push this adapter again with "
            "`--base-model-id ORG/NAME`.",
            "",
        ]
    local = [n for n in info.lineage.local_only() if n != info.load_base]
    if local:
        names = ", ".join(f"`{n}`" for n in local)
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
    config = strip_secrets(yaml.safe_load(path.read_text()) or {})
    title = "" if source == folder else f" (of `{source}`, which this model was made from)"
    return [
        "## Training config",
        "",
        f"The resolved hftune config{title}: every default explicit, secrets removed.",
        "",
        "<details><summary>config.hftune.yaml</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=True).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]


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
            f'base = {auto}.from_pretrained("{info.load_base}"{extra})',
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


def _eval_section(eval_dir: str | os.PathLike | None, folder: Path) -> list[str]:
    """The eval's metrics table, as report.md shows it but turned on its side (a row per metric fits a card
    better than a column per metric), so both list the same metrics in the same order, formatted alike."""
    title = ["## Evaluation", ""]
    if eval_dir is None:
        return [*title, "No evaluation was given for this card (`--eval EVAL_DIR` adds one).", ""]
    results = _read_results(Path(eval_dir))
    level = eval_results.confidence(results)
    note = (
        f"From `{eval_dir}`: each cell is the mean and its paired bootstrap {level} CI over the same "
        "held-out prompts, with the same decoding for every variant; ↑ higher is better, ↓ lower is better."
    )
    if "win_rate" in eval_results.metric_names(results):
        win = eval_results.info(results, "win_rate")["description"]
        note += f" **{markdown.escape(eval_results.label(results, 'win_rate'))}**: {markdown.escape(win)}"
    lines = [*title, note, "", *markdown.table(metrics_table(results).transposed("metric"))]
    n = _prompt_counts(results)
    if n:
        lines += [f"n (prompts per cell): {', '.join(str(x) for x in sorted(n))}", ""]
    if not _evaluated(Path(eval_dir), folder):
        lines += [f"Note: this evaluation does not list `{folder}` among the models it compared.", ""]
    return lines


def _prompt_counts(results: dict[str, Any]) -> set[int]:
    cells = (
        eval_results.stat(results, variant, metric)
        for variant in eval_results.variant_names(results)
        for metric in eval_results.metric_names(results)
    )
    return {cell["n"] for cell in cells if isinstance(cell, dict) and cell.get("n") is not None}


def _read_results(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "results.json"
    if not path.is_file():
        raise UserError(f"--eval {eval_dir}: no results.json (is it an `hftune eval` output folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"--eval {path}: not valid JSON ({err})") from None


def _evaluated(eval_dir: Path, folder: Path) -> bool:
    manifest = artifacts.read_manifest(eval_dir) or {}
    mine = os.path.realpath(folder)
    return any(os.path.realpath(p.get("name_or_path", "")) == mine for p in manifest.get("parents", []))


def _provenance(info: CardInfo) -> list[str]:
    manifest = info.lineage.nodes[-1].manifest or {}
    libs = ", ".join(f"{k} {v}" for k, v in (manifest.get("libraries") or {}).items())
    lines = [
        "## Provenance",
        "",
        f"- manifest.json sha256: `{artifacts.manifest_sha256(info.folder)}`",
        f"- created: {manifest.get('created', '?')}, seed {manifest.get('seed', '?')}, "
        f"git revision {manifest.get('git_revision') or 'unknown'}",
    ]
    if libs:
        lines.append(f"- libraries: {libs}")
    data = manifest.get("data") or {}
    if data.get("recipe"):
        lines.append(
            f"- data: recipe `{data['recipe']}`, {data.get('n_train', '?')} training rows, "
            f"fingerprint `{data.get('fingerprint', '?')}`, dropped {json.dumps(data.get('dropped') or {})}"
        )
    return [*lines, ""]


def _summary(info: CardInfo, root: str) -> str:
    last = info.lineage.nodes[-1]
    kind = "LoRA adapter (PEFT)" if info.is_adapter else "full model"
    what = {
        "sft": "a supervised fine-tune",
        "reward": "a reward model (one scalar score per reply, from TRL's RewardTrainer)",
        "ppo": "an RLHF policy, trained against a reward model with a KL penalty to its SFT model",
        "merge": "a LoRA adapter (chain) merged into its base weights",
    }.get(last.stage, f"the output of the `{last.stage}` stage")
    return f"A {kind} built on `{root}`: {what}. Trained with hftune on TRL, PEFT and transformers."


def render(
    folder: str | os.PathLike,
    *,
    eval_dir: str | os.PathLike | None = None,
    repo_id: str | None = None,
    base_model_id: str | None = None,
) -> str:
    """The card (README.md text) for a finished artifact folder."""
    info = inspect_folder(folder, base_model_id)
    root = info.lineage.root.name
    # With --base-model-id the Hub link is the model a user loads this adapter on; the body keeps the full
    # local lineage either way.
    meta_base = base_model_id or root
    title = repo_id or info.folder.resolve().name
    body = [
        f"# {title}",
        "",
        _summary(info, root),
        "",
        *_warnings_section(info),
        *_lineage_section(info),
        *_eval_section(eval_dir, info.folder),
        *_usage(info, repo_id),
        *_training_config(info.folder, info.lineage),
        *_provenance(info),
    ]
    text = f"---\n{_metadata(info, meta_base)}\n---\n\n" + "\n".join(body)
    return strip_secrets(text)


def write(folder: str | os.PathLike, output: str | os.PathLike, **kwargs: Any) -> Path:
    text = render(folder, **kwargs)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(output, text)
    logger.info("wrote model card %s", output)
    return output
