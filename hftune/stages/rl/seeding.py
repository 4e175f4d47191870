"""One seed for an RL run, set before anything draws from a random generator, so that the same config on the
same machine gives the same run: the same metrics.jsonl and a byte-identical adapter on CPU.

What draws, and why seeding the global generators once (`seed_run`, at the start of `stage.prepare`) is
still needed:
- The fresh LoRA adapter's `lora_A` (peft's kaiming init) and the PPO value head hftune rebuilds draw from
  torch's global generator while the trainer is built. torch seeds that generator from the OS at start-up,
  and in a pipeline earlier stages leave it wherever they stopped, so without a seed the policy started
  from a different adapter every run.
- hftune's PPO (`ppo_trainer.py`) draws each step's prompts, samples and minibatch order from generators
  seeded by (seed, step), so it needs nothing more, and a resumed run replays the uninterrupted one.
- RLOO / GRPO sample from torch's global generator and order prompts with TRL's seeded `RepeatSampler`;
  `Trainer`'s `set_seed` reseeds torch, so they repeat once the draws before them do.
hftune's own checks draw nothing from these: the held-out check decodes greedily inside
`torch.random.fork_rng` (`hftune.models.generation`), and the console and the logs only read.

CPU needs no `torch.use_deterministic_algorithms`: its kernels reduce in a fixed order for a given thread
count (the same machine and `OMP_NUM_THREADS`; checked with 1 and 2 threads). A GPU does not: cuBLAS picks
split-K reductions whose order varies unless `CUBLAS_WORKSPACE_CONFIG` is set before its first use, and
scatter / index-add backward passes (embedding gradients) and SDPA / flash-attention backward accumulate with
atomic adds in whatever order threads finish. `full_determinism: true` (TrainingArguments) asks for
transformers' `enable_full_determinism`: `CUBLAS_WORKSPACE_CONFIG`, `CUDA_LAUNCH_BLOCKING` (slower) and
`torch.use_deterministic_algorithms(True)`, under which an op with no deterministic kernel fails rather than
silently varying. RLOO / GRPO's `Trainer` honours the flag itself; hftune applies it here, before any
trainer is built, for every algorithm. It cannot make a GPU run repeat when CUDA was already in use in the
process (a pipeline's earlier stage: set `CUBLAS_WORKSPACE_CONFIG` in the environment instead), across GPU
models, drivers or library versions, or with vLLM generation, whose batching depends on timing. A
multi-process run repeats only with the same number of processes.
"""

from __future__ import annotations


def seed_run(args) -> None:
    """Seed python's `random`, numpy and torch (every device) with the run's `seed`, the same on every
    process so that each builds the same initial adapter; with `full_determinism`, also ask for
    deterministic kernels."""
    from transformers.trainer_utils import enable_full_determinism, set_seed

    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
