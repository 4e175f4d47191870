"""Every shipped config parses with its stage's strict parser, and every pipeline dry-runs (no weights,
no network: Hub models and datasets are only named, never fetched, by a dry run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftune import pipeline
from hftune.config import load_yaml_mapping
from hftune.errors import UserError
from hftune.evaluation import suite
from hftune.stages import registry

REPO = Path(__file__).resolve().parent.parent
# configs/accelerate/ holds accelerate launch configs, not stage configs (their own test parses them).
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts)
SUITES = sorted((REPO / "eval" / "suites").rglob("*.yaml"))
STAGE_OF = {
    name: name for name in ("pretrain", "sft", "reward", "ppo", "rloo", "grpo", "dpo", "kto", "orpo", "simpo")
}


def _stage(path: Path) -> str:
    if "stages" in load_yaml_mapping(path):
        return "pipeline"
    return STAGE_OF[path.stem.split("_")[0]]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_parses_or_dry_runs(path, capsys):
    kind = _stage(path)
    if kind == "pipeline":
        plan = pipeline.run(str(path), dry_run=True)
        assert plan and "pipeline plan" in capsys.readouterr().out
    else:
        module = registry.load(kind)
        assert module.parse(str(path)).hftune.data_recipe


@pytest.mark.parametrize("path", SUITES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_eval_suite_parses(path):
    cfg = suite.parse(str(path), ["--sft_model", "m", "--rlhf_models", "p", "--reward_model", "r"])
    assert cfg.hftune.data_recipe


def test_a_builtin_eval_suite_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # package data, not a path relative to the checkout
    cfg = suite.parse("tiny", ["--sft_model", "m", "--rlhf_models", "p", "--reward_model", "r"])
    assert Path(cfg.source).name == "tiny.yaml" and cfg.hftune.data_recipe
    with pytest.raises(UserError, match=r"unknown eval suite `tiyn`.*tiny, ultrachat"):
        suite.parse("tiyn")
