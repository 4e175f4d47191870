"""Shared fixtures: tiny local models (built once per session) and an isolated hftune cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Nothing may be fetched from the Hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))  # see hftune/cli.py


@pytest.fixture(scope="session", autouse=True)
def hftune_cache(tmp_path_factory):
    """`tiny:ARCH` models are cached here; CI sets HFTUNE_CACHE so they are built once per run."""
    if "HFTUNE_CACHE" not in os.environ:
        os.environ["HFTUNE_CACHE"] = str(tmp_path_factory.mktemp("hftune-cache"))
    return Path(os.environ["HFTUNE_CACHE"])


@pytest.fixture(scope="session")
def tiny_llama(hftune_cache) -> str:
    from hftune.models.tiny import resolve_tiny

    return resolve_tiny("tiny:llama")


@pytest.fixture(scope="session")
def chat_tokenizer():
    """The tiny models' tokenizer (byte-level BPE, ChatML template with generation markers), no model."""
    from hftune.models.tiny import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(), 1024)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """One untrained tiny model per supported architecture (loading and LoRA targeting tests)."""
    from hftune.models.tiny import ARCHITECTURES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-archs")
    return {arch: str(build_tiny_model(root / arch, arch=arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def chain(tmp_path_factory, tiny_llama) -> dict[str, str]:
    """The tiny RLHF chain's first two stages: full-FT SFT and a LoRA reward model on top of it."""
    from hftune.stages import reward, sft

    root = tmp_path_factory.mktemp("rl-chain")
    sft.run(sft.parse(str(REPO / "configs/tiny/sft_full.yaml"), ["--output_dir", str(root / "sft")]))
    reward.run(
        reward.parse(
            str(REPO / "configs/tiny/reward.yaml"),
            ["--model_name_or_path", str(root / "sft"), "--output_dir", str(root / "rm")],
        )
    )
    return {"sft": str(root / "sft"), "rm": str(root / "rm"), "root": str(root)}


@pytest.fixture(scope="session")
def lora_sft(tmp_path_factory, tiny_llama) -> Path:
    """A 2-step LoRA SFT adapter on tiny:llama, for tests of what consumes an SFT folder (card, push,
    merge)."""
    from hftune.stages import sft

    out = tmp_path_factory.mktemp("lora-sft") / "sft"
    argv = ["--output_dir", str(out), "--max_steps", "2", "--max_samples", "32"]
    sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    return out
