"""hftune's own PPO against TRL 1.12's PPOTrainer (the last TRL with one), on the same tiny chain, seed and
settings, measured in one run of this script: the reward and KL curves, the time per update, and the
held-out reward of both trained policies scored the same way.

    make quickstart                    # once: the SFT and reward models both PPOs train from
    python bench/ppo_parity.py [--run runs/quickstart] [--steps 30] [--repeats 2]   # from the folder
                                                                      # the quickstart ran in

TRL 1.12 runs in a venv this script makes beside the project's (`.venv-trl112`): TRL 1.12 installed there
without dependencies, on top of the project venv's packages (a .pth file), so nothing is downloaded but
the TRL wheel. Both sides run in fresh processes with one torch thread (OMP_NUM_THREADS=1: on a shared
2-core machine two threads swing timings 10-45x), alternating, `--repeats` times each.

Same on both sides: the quickstart's SFT model as the policy with a fresh LoRA adapter (r 8, alpha 16, all
linear layers; adapter off = reference), the value model started from the reward model, rollouts of 32
prompts, one reply each, 16 tokens at temperature 1.0, 4 PPO epochs of 1 minibatch, learning rate 2e-3,
KL coefficient 0.2 (k1), missing-EOS penalty 1.0 (configs/biased/ppo.yaml's settings), raw reward-model
scores (`normalize_rewards: false`: TRL has no normalisation), no gradient clipping (TRL's PPO clips
none). The held-out reward is the reward model's score (hftune's scoring path) of greedy replies to the
prompts the PPO data held out (the SFT split's), averaged over prompts with a 95% bootstrap interval; the
difference is paired by prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "learning_rate": 2e-3,
    "kl_coef": 0.2,
    "response_length": 16,
    "temperature": 1.0,
    "per_device_train_batch_size": 32,
    "num_ppo_epochs": 4,
    "num_mini_batches": 1,
    "missing_eos_penalty": 1.0,
    "seed": 1,
}

HFTUNE_CHILD = r"""
import json, sys, time
from pathlib import Path
from hftune.stages import ppo as rl
run, out, steps, s = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
argv = ["--model_name_or_path", str(run / "sft"), "--reward_model_path", str(run / "reward"),
        "--output_dir", out, "--max_steps", steps, "--normalize_rewards", "false", "--max_grad_norm", "0",
        "--heldout_every", "0", "--max_kl", "1000", "--min_mean_length", "0", "--max_mean_length", "1000"]
for key, value in s.items():
    argv += ["--" + key, str(value)]
cfg = rl.parse(sys.argv[5], argv)
p = rl.prepare(cfg)
start = time.perf_counter()
p.trainer.train()
seconds = time.perf_counter() - start
rl.trained_policy(p.trainer).save_pretrained(out + "-adapter")
rows = [json.loads(l) for l in (p.dirs.work / "metrics.jsonl").read_text().splitlines()]
curve = [(r["objective/scores"], r["objective/kl"]) for r in rows]
print(json.dumps({"seconds": seconds, "updates": len(rows), "curve": curve, "adapter": out + "-adapter"}))
"""

TRL_CHILD = r"""
import json, sys, time, os
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
from pathlib import Path
import torch
from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig
from trl.experimental.ppo import PPOConfig, PPOTrainer
from hftune.models import loading
from hftune.models.tokenizer import load_tokenizer
from hftune.stages.rl.rewards import encode_prompts
run, out, steps, s = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
prompts = json.loads(Path(sys.argv[5]).read_text())
set_seed(s["seed"])
tok = load_tokenizer(str(run / "sft"))
tok.padding_side = "left"
margs = ModelConfig(dtype="float32", use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                    lora_target_modules="all-linear")
policy = loading.load_model(str(run / "sft"), margs, for_training=True)
value = loading.load_reward_model(str(run / "reward"), margs, for_training=True)
reward = loading.load_reward_model(str(run / "reward"), margs, for_training=False)
for m in (value, reward):
    m.config.pad_token_id = tok.pad_token_id
args = PPOConfig(output_dir=out, learning_rate=s["learning_rate"], kl_coef=s["kl_coef"],
                 response_length=s["response_length"], temperature=s["temperature"],
                 per_device_train_batch_size=s["per_device_train_batch_size"],
                 num_ppo_epochs=s["num_ppo_epochs"],
                 num_mini_batches=s["num_mini_batches"], missing_eos_penalty=s["missing_eos_penalty"],
                 seed=s["seed"], stop_token="eos", total_episodes=steps * s["per_device_train_batch_size"],
                 num_sample_generations=0, gradient_checkpointing=False, report_to=[], logging_steps=1,
                 save_strategy="no", use_cpu=True, bf16=False)
queries = encode_prompts(tok, prompts)
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                     train_dataset=Dataset.from_dict({"input_ids": queries}), value_model=value,
                     eval_dataset=Dataset.from_dict({"input_ids": queries[:8]}),
                     peft_config=loading.lora_config(margs))
start = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - start
trainer.model.policy.save_pretrained(out + "-adapter")
rows = [r for r in trainer.state.log_history if "objective/scores" in r]
curve = [(r["objective/scores"], r["objective/kl"]) for r in rows]
print(json.dumps({"seconds": seconds, "updates": len(rows), "curve": curve, "adapter": out + "-adapter"}))
"""


def trl112_python() -> Path:
    """A venv with TRL 1.12 over the project venv's packages (made once, beside `.venv`)."""
    venv = REPO / ".venv-trl112"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        # The project venv's packages after this venv's own: its TRL 1.12 shadows the project's TRL.
        # (`addsitedir`, so the project venv's own .pth files run too: hftune's editable install is one.)
        project = sysconfig.get_paths()["purelib"]
        (Path(site) / "project-venv.pth").write_text(f"import site; site.addsitedir({project!r})\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0"], check=True)
    return python


def child(python: Path, code: str, *argv: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [str(python), "-c", code, *argv], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{python} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def heldout_rewards(run: Path, adapter: str | None, prompts: list) -> list[float]:
    """The reward model's score of the greedy reply of SFT (+ `adapter`) to each held-out prompt."""
    from peft import PeftModel
    from trl import ModelConfig

    from hftune.models import generation, loading, scoring
    from hftune.models.tokenizer import load_tokenizer
    from hftune.stages.rl.rewards import encode_prompts

    tok = load_tokenizer(str(run / "sft"))
    base = loading.load_model(str(run / "sft"), ModelConfig(dtype="float32"), for_training=False)
    policy = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    replies = generation.generate(policy, tok, encode_prompts(tok, prompts), SETTINGS["response_length"])
    scorer = scoring.load_scorer(str(run / "reward"), ModelConfig(dtype="float32"))
    return scorer.score(prompts, [r.text for r in replies]).tolist()


def interval(values: list[float]) -> tuple[float, float, float]:
    import numpy as np

    v = np.asarray(values)
    means = v[np.random.default_rng(0).integers(0, len(v), size=(2000, len(v)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def prompt_sets(run: Path) -> tuple[list, list]:
    """The PPO stage's training prompts and the prompts its data held out (as the RL stage splits them)."""
    from hftune.stages import ppo as rl
    from hftune.stages.rl.rewards import prompt_rows

    argv = ["--model_name_or_path", str(run / "sft"), "--reward_model_path", str(run / "reward")]
    cfg = rl.parse(str(REPO / "configs/biased/ppo.yaml"), [*argv, "--output_dir", tempfile.mkdtemp()])
    from hftune.models.tokenizer import load_tokenizer
    from hftune.stages import common

    dirs = common.run_dirs(cfg)
    _, data = common.load_data(cfg, load_tokenizer(str(run / "sft")), dirs, formats=("prompt_only",))
    return prompt_rows(data.train), prompt_rows(data.eval)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(REPO / "runs/quickstart"), help="a quickstart run folder")
    parser.add_argument("--steps", type=int, default=30, help="PPO updates (rollouts) per run")
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    run = Path(ns.run)
    if not (run / "sft").is_dir() or not (run / "reward").is_dir():
        sys.exit(f"{run}: no sft/ and reward/ folders; run `make quickstart` first")
    train, heldout = prompt_sets(run)
    trl_python = trl112_python()
    config = str(REPO / "configs/biased/ppo.yaml")
    results: dict[str, list[dict]] = {"hftune": [], "trl-1.12": []}
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(train))
        for i in range(ns.repeats):
            for side in ("trl-1.12", "hftune"):
                out = str(Path(tmp) / f"{side}-{i}")
                common = (str(run), out, str(ns.steps), json.dumps(SETTINGS))
                if side == "hftune":
                    got = child(Path(sys.executable), HFTUNE_CHILD, *common, config)
                else:
                    got = child(trl_python, TRL_CHILD, *common, str(prompts_file))
                got["heldout"] = heldout_rewards(run, got["adapter"], heldout)
                results[side].append(got)
                per_update = got["seconds"] / got["updates"]
                print(
                    f"{side:9s} run {i + 1}: {got['updates']} updates, {per_update:.3f} s/update, "
                    f"held-out reward {statistics.mean(got['heldout']):.3f}",
                    flush=True,
                )
    print("\ntrain reward / KL over the run, 6 points (first run of each):")
    for side, runs in results.items():
        curve = runs[0]["curve"]
        points = "  ".join(f"{s:+.2f}/{k:.2f}" for s, k in curve[:: max(1, len(curve) // 6)])
        print(f"  {side:9s} {points}")
    sft = heldout_rewards(run, None, heldout)
    for side, runs in results.items():
        mean, low, high = interval(runs[0]["heldout"])
        gain = interval([a - b for a, b in zip(runs[0]["heldout"], sft, strict=True)])
        times = [r["seconds"] / r["updates"] for r in runs]
        print(
            f"{side:9s} held-out reward {mean:.3f} [{low:.3f}, {high:.3f}], over SFT {gain[0]:+.3f} "
            f"[{gain[1]:+.3f}, {gain[2]:+.3f}]; median {statistics.median(times):.3f} s/update"
        )
    diff = interval(
        [
            a - b
            for a, b in zip(results["hftune"][0]["heldout"], results["trl-1.12"][0]["heldout"], strict=True)
        ]
    )
    ratio = statistics.median(r["seconds"] / r["updates"] for r in results["hftune"]) / statistics.median(
        r["seconds"] / r["updates"] for r in results["trl-1.12"]
    )
    print(
        f"hftune - TRL 1.12 held-out reward {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] ({len(heldout)} "
        f"prompts); time per update hftune/TRL {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
