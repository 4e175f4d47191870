"""Wall time of the quickstart's PPO stage with `freeze_gc: true` (hftune's default) vs false, and whether
the two runs train the same numbers, measured in one run of this script.

    make quickstart                    # once: the SFT and reward models this bench trains PPO from
    python bench/ppo_gc_freeze.py [--run runs/quickstart] [--repeats 2]

Each run is `hftune ppo` with the quickstart's PPO settings (configs/biased/ppo.yaml, seed 1) in a fresh
process with one torch thread (OMP_NUM_THREADS=1: on a shared 2-core
machine two threads swing the timing 10-45x). The two settings alternate, `--repeats` times each, and the
script prints every run's time, the median ratio on/off, and whether the final metrics match.

Why it mattered: TRL's old PPO loop called `gc.collect()` twice per update (hftune's own PPO calls none;
what is left is Python's own collections, and TRL's RLOO / GRPO). A full collection walks every tracked
Python object, and transformers, datasets and the models leave ~500k of them alive, so each call cost
~0.3 s: over half of a tiny run. `gc.freeze()` moves the objects alive before training out of the
collector's scans (it changes no number).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from pathlib import Path
from hftune.stages import ppo as rl
cfg = rl.parse(sys.argv[1], json.loads(sys.argv[2]))
start = time.perf_counter()
result = rl.run(cfg)
seconds = time.perf_counter() - start
metrics = json.loads((Path(sys.argv[3]) / "metrics.json").read_text())
print(json.dumps({"seconds": seconds, "metrics": metrics}))
"""


def run_once(run: Path, out: Path, freeze: bool) -> dict:
    argv = [
        "--model_name_or_path", str(run / "sft"),
        "--reward_model_path", str(run / "reward"),
        "--output_dir", str(out),
        "--seed", "1",
        "--freeze_gc", "true" if freeze else "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    config = str(REPO / "configs/biased/ppo.yaml")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, config, json.dumps(argv), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"PPO run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(REPO / "runs/quickstart"), help="a quickstart run folder")
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    run = Path(ns.run)
    if not (run / "sft").is_dir() or not (run / "reward").is_dir():
        sys.exit(f"{run}: no sft/ and reward/ folders; run `make quickstart` first")
    times: dict[bool, list[float]] = {True: [], False: []}
    metrics: dict[bool, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.repeats):
            for freeze in (False, True):
                started = time.time()
                got = run_once(run, Path(tmp) / f"ppo-{freeze}-{i}", freeze)
                times[freeze].append(got["seconds"])
                metrics[freeze] = got["metrics"]
                print(
                    f"freeze_gc={str(freeze).lower():5s} run {i + 1}: {got['seconds']:.1f} s training "
                    f"({time.time() - started:.1f} s with start-up)",
                    flush=True,
                )
    on, off = statistics.median(times[True]), statistics.median(times[False])
    keys = sorted(
        k for k in metrics[True] if isinstance(metrics[True][k], int | float) and "runtime" not in k
    )
    keys = [k for k in keys if "per_second" not in k and "time" not in k]
    same = all(metrics[True][k] == metrics[False].get(k) for k in keys)
    print(f"median training time: freeze_gc on {on:.1f} s, off {off:.1f} s; ratio on/off {on / off:.2f}")
    print(f"final metrics identical ({len(keys)} compared): {same}")
    if not same:
        for k in keys:
            if metrics[True][k] != metrics[False].get(k):
                print(f"  {k}: on {metrics[True][k]} off {metrics[False].get(k)}")


if __name__ == "__main__":
    main()
