"""Shared fixtures: tiny local models and one tiny chain, each built once per test run (also when
pytest-xdist runs the suite in several processes), an isolated hftune cache, one torch thread per process,
and the test tiers.

Tiers (markers, set here from what a test uses or on the test itself):
- unit (no marker): no model is trained and no process launched; `make test-fast` runs only these.
- `integration`: trains or loads a tiny model, or launches a process.
- `e2e`: a whole pipeline or a multi-process launch, the slowest end of the suite.
`make test` (and CI) runs every tier, in parallel (`-n auto`, one worker a core).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Nothing may be fetched from the Hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread a process (set before torch is imported, and inherited by the processes tests launch).
# With two threads a process spin-waits (OpenMP) whenever the other core is busy, so on a loaded 2-core
# machine the suite slowed down tenfold instead of in proportion to the load; with one thread a process,
# parallel test workers use the cores instead. The RL stages are reproducible for a fixed thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Fixtures that build a model: a test using one (directly or through another fixture) is `integration`.
MODEL_FIXTURES = {"tiny_llama", "tiny_models", "chain", "lora_sft", "ppo_run_printed"}


def pytest_collection_modifyitems(config, items):
    """Mark the tiers, and start the modules that take longest first. The suite is spread over workers a
    module at a time (`--dist loadfile`, so a module's fixtures are built once), and a long module handed
    out last would run on alone after the others finished."""
    for item in items:
        if item.get_closest_marker("e2e") is None and MODEL_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)

    def seconds(item) -> float:
        """`@pytest.mark.slow(S)`: about S seconds on 2 busy cores (measured with --durations; 10 if
        not given); a few seconds for other tests that train, none for unit tests."""
        slow = item.get_closest_marker("slow")
        if slow is not None:
            return float(slow.args[0]) if slow.args else 10.0
        return 1.0 if item.get_closest_marker("integration") or item.get_closest_marker("e2e") else 0.0

    module_seconds: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_seconds[module] = module_seconds.get(module, 0.0) + seconds(item)
    # A stable sort on the module's total keeps each module's tests together and in their order.
    items.sort(key=lambda item: -module_seconds[item.nodeid.split("::")[0]])


def shared_root(tmp_path_factory) -> Path:
    """A folder every worker of this test run sees (under pytest-xdist each worker has its own basetemp, in
    one folder for the run)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "shared"
    root.mkdir(exist_ok=True)
    return root


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` runs once per test run for `name`: the first worker to ask builds it while the
    others wait on the lock, then all read it. Tests that change what was built copy it first."""
    from filelock import FileLock

    root = shared_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def hftune_cache(tmp_path_factory):
    """`tiny:ARCH` models are cached here (one cache for all workers); CI sets HFTUNE_CACHE itself."""
    if "HFTUNE_CACHE" not in os.environ:
        os.environ["HFTUNE_CACHE"] = str(shared_root(tmp_path_factory) / "hftune-cache")
    return Path(os.environ["HFTUNE_CACHE"])


@pytest.fixture(scope="session")
def tiny_llama(hftune_cache) -> str:
    from hftune.models.tiny import resolve_tiny

    return resolve_tiny("tiny:llama")  # built under a file lock: once for every worker


@pytest.fixture(scope="session")
def chat_tokenizer():
    """The tiny models' tokenizer (byte-level BPE, ChatML template with generation markers), no model."""
    from hftune.models.tiny import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(), 1024)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """One untrained tiny model per supported architecture (loading and LoRA targeting tests)."""
    from hftune.models.tiny import ARCHITECTURES, build_tiny_model

    def build(root: Path) -> None:
        for arch in ARCHITECTURES:
            build_tiny_model(root / arch, arch=arch)

    root = built_once(tmp_path_factory, "tiny-archs", build)
    return {arch: str(root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def chain(tmp_path_factory, tiny_llama) -> dict[str, str]:
    """The tiny RLHF chain's first two stages: full-FT SFT and a LoRA reward model on top of it."""
    from hftune.stages import reward, sft

    def build(root: Path) -> None:
        sft.run(sft.parse(str(REPO / "configs/tiny/sft_full.yaml"), ["--output_dir", str(root / "sft")]))
        reward.run(
            reward.parse(
                str(REPO / "configs/tiny/reward.yaml"),
                ["--model_name_or_path", str(root / "sft"), "--output_dir", str(root / "rm")],
            )
        )

    root = built_once(tmp_path_factory, "rl-chain", build)
    return {"sft": str(root / "sft"), "rm": str(root / "rm"), "root": str(root)}


@pytest.fixture(scope="session")
def lora_sft(tmp_path_factory, tiny_llama) -> Path:
    """A 2-step LoRA SFT adapter on tiny:llama, for tests of what consumes an SFT folder (card, push,
    merge)."""
    from hftune.stages import sft

    def build(root: Path) -> None:
        argv = ["--output_dir", str(root / "sft"), "--max_steps", "2", "--max_samples", "32"]
        sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))

    return built_once(tmp_path_factory, "lora-sft", build) / "sft"


@pytest.fixture(scope="session")
def ppo_run_printed(chain, tmp_path_factory):
    """A short PPO run on the chain (4 steps, held-out check every 2), and what it printed: the RL tests
    read the run and its trainer, the eval tests evaluate its policy. In memory, so once per worker."""
    import contextlib
    import io

    from test_ppo import rl_config

    from hftune.stages import ppo as rl

    cfg = rl_config(chain, tmp_path_factory.mktemp("ppo") / "ppo")  # 4 steps, held-out check every 2
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        result = rl.run(cfg)
    return result, printed.getvalue()


@pytest.fixture(scope="session")
def ppo_run(ppo_run_printed):
    return ppo_run_printed[0]
