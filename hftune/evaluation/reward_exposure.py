"""Whether each trained variant was optimised against the reward model the eval scores it with.

A policy trained against a reward model (PPO, RLOO, GRPO) is scored by the very model it learnt to please,
and may partly exploit it; a policy that never saw it (DPO, KTO, ORPO, SimPO, trained offline on preference
pairs) is scored by an outside judge. Their reward and win rates are then not the same kind of number, and
the reports say so beside them. This is read from the lineage (`hftune.lineage`: every manifest behind the
variant's folder), never from a variant's name: a variant counts as trained against the reward model when
some stage of its lineage names that reward model (the same folder, or a folder with the same manifest) as
its `reward_model` parent.

`annotate` adds to each trained variant of results.json `trained_against_reward_model` (true, false, or null
when its lineage is not recorded) and, unless true, a `reward_model_note` saying why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hftune import artifacts
from hftune.lineage import lineage, read_manifest

REWARD_ROLE = "reward_model"  # how a stage's manifest names the reward model it trained against


def _same_folder(a: str, b: str) -> bool:
    return Path(a).exists() and Path(b).exists() and os.path.realpath(a) == os.path.realpath(b)


def exposure(folder: str, reward_model: str) -> tuple[bool | None, str | None]:
    """(trained against `reward_model`?, why not): True when a stage behind `folder` trained against it,
    False when none did (the reason says which reward model it used, if another), None when the folder's
    lineage is not recorded (no manifest: a Hub model, a folder hftune did not write)."""
    if not Path(folder).is_dir() or read_manifest(folder) is None:
        return None, (
            f"{folder} has no manifest.json, so whether it was trained against this reward model is not "
            "recorded"
        )
    chain = lineage(folder)
    target = artifacts.manifest_sha256(reward_model)
    others = []
    for node in chain.nodes:
        for ref in (node.manifest or {}).get("parents") or []:
            if ref.get("role") != REWARD_ROLE or not ref.get("name_or_path"):
                continue
            recorded = ref.get("manifest_sha256")
            if recorded and target:
                # The same reward model, wherever it lies now; a retrained one at the same path is another.
                if recorded == target:
                    return True, None
            elif _same_folder(ref["name_or_path"], reward_model):
                return True, None
            others.append(f"its {node.stage} stage against {ref['name_or_path']}")
    stages = " <- ".join(node.stage for node in reversed(chain.nodes) if node.role != REWARD_ROLE)
    if others:
        return False, (
            f"trained against another reward model ({'; '.join(others)}), not the one scoring it "
            f"({reward_model})"
        )
    return False, f"no stage of its lineage ({stages}) was trained against a reward model"


def annotate(variants: dict[str, Any], runs: dict[str, list[str]], reward_model: str) -> None:
    """Set `trained_against_reward_model` (and `reward_model_note` unless true) on each trained variant of
    results.json's `variants`; `runs` is variant -> its folders (`suite.rlhf_runs`: several for a variant
    trained with several seeds, which agree unless the runs were trained differently)."""
    for name, folders in runs.items():
        if name not in variants:
            continue
        found = [exposure(folder, reward_model) for folder in folders]
        flags = {flag for flag, _ in found}
        mixed = len(flags) > 1
        flag = None if mixed else flags.pop()  # runs that disagree: neither claim holds for all of them
        variants[name]["trained_against_reward_model"] = flag
        if flag is not True:
            notes = list(dict.fromkeys(note for f, note in found if note and f is not True))
            if mixed:
                notes.insert(0, "its seed runs differ in whether they were trained against this reward model")
            variants[name]["reward_model_note"] = "; ".join(notes)
