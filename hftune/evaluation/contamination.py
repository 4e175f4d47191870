"""The contamination audit: no eval number may come from a prompt any stage behind the evaluated models
trained on.

For every evaluated model (and the reward model that scores them) the audit walks its lineage (the
`parents` of each `manifest.json`) and compares the evaluated prompts' keys with what each stage recorded
it trained on (`prompts.json`: SFT rows, reward pairs, RL prompts, pretraining texts matched whole). It
runs before anything is generated. An overlap is an error naming the stage and the count, unless the suite
sets `allow_contamination: true`: then the eval runs, results.json and the report carry the overlap, and
every metric is also given on the clean prompts alone.
"""

from __future__ import annotations

from typing import Any

from hftune.artifacts import is_complete
from hftune.data.prompt_keys import read_prompts
from hftune.errors import UserError
from hftune.lineage import lineage


def audit(
    keys: list[str], models: dict[str, str | None], duplicates: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Overlap of the evaluated prompt `keys` with the training prompts of each stage behind `models`
    (name -> folder: the variants and the reward model). Stages without a record (a Hub model, a folder hftune
    did not train) are listed as unaudited. `duplicates` (`prompts.distinct`: the repeated rows dropped
    before the eval, so each prompt counts once) is recorded with the audit, which lists what the
    evaluated prompts are."""
    stages: dict[str, dict[str, Any]] = {}
    used_by: dict[str, list[str]] = {}
    unaudited: set[str] = set()
    for name, folder in models.items():
        if not folder:
            continue
        if not is_complete(folder):  # a Hub id, or a folder hftune did not train
            unaudited.add(str(folder))
            continue
        for node in lineage(folder).nodes:
            if node.folder is None:  # a base model or a random initialisation: nothing hftune trained
                continue
            label = str(node.folder)
            used_by.setdefault(label, [])
            if name not in used_by[label]:
                used_by[label].append(name)
            if label in stages:
                continue
            record = read_prompts(node.folder)
            if record is None:
                unaudited.add(label)
                continue
            seen = [i for i, k in enumerate(keys) if k in record["trained"]]  # evaluated prompts, repeats too
            stages[label] = {"stage": node.stage, "overlap": len(seen), "prompts": seen}
    for label, entry in stages.items():
        entry["used_by"] = used_by[label]
    contaminated = sorted({i for entry in stages.values() for i in entry["prompts"]})
    return {
        "n_prompts": len(keys),
        "stages": stages,
        "contaminated_prompts": contaminated,
        "clean_prompts": len(keys) - len(contaminated),
        "unaudited": sorted(unaudited),
        **({"duplicates": duplicates} if duplicates else {}),
    }


def refuse_if_contaminated(result: dict[str, Any], allowed: bool, source: str) -> None:
    """Exit 2 naming every stage that trained on evaluated prompts, unless the suite allows it."""
    bad = {label: e for label, e in result["stages"].items() if e["overlap"]}
    if not bad or allowed:
        return
    lines = [
        f"  - stage {e['stage']} ({label}, behind {', '.join(e['used_by'])}) trained on {e['overlap']} of "
        f"the {result['n_prompts']} evaluated prompts"
        for label, e in bad.items()
    ]
    raise UserError(
        f"{source}: the eval would score prompts the models trained on:\n" + "\n".join(lines) + "\n"
        "Evaluate on held-out prompts (the SFT model's, the default when it records them), or set "
        "`allow_contamination: true` to run anyway (the report then flags the overlap and also gives every "
        "metric on the clean prompts alone)."
    )


def summary_line(result: dict[str, Any]) -> str:
    overlapping = [f"{e['stage']} {e['overlap']}" for e in result["stages"].values() if e["overlap"]]
    audited = len(result["stages"])
    if not overlapping:
        line = f"contamination audit: 0 of {result['n_prompts']} prompts seen in training ({audited} stages)"
    else:
        line = (
            f"contamination audit: {len(result['contaminated_prompts'])} of {result['n_prompts']} prompts "
            f"seen in training ({', '.join(overlapping)}); metrics on the {result['clean_prompts']} clean "
            "ones are in results.json (`clean_subset`)"
        )
    return line + duplicates_clause(result.get("duplicates"))


def duplicates_clause(duplicates: dict[str, Any] | None) -> str:
    """'; 281 distinct prompts (300 rows, 19 repeats dropped: ...)' when rows repeated a prompt."""
    if not duplicates or not duplicates.get("n_dropped"):
        return ""
    return (
        f"; {duplicates['n_distinct']} distinct prompts ({duplicates['n_rows']} rows, "
        f"{duplicates['n_dropped']} repeats dropped: results.json `duplicates`)"
    )
