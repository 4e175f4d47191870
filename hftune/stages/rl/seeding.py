"""One seed for an RL run, set before anything draws from a random generator, so that the same config on the
same machine gives the same run: the same metrics.jsonl and a byte-identical adapter on CPU.

What draws, and why seeding the global generators once (`seed_run`, at the start of `stage.prepare`) is the
fix rather than handing each its own generator: TRL gives no hook for one.
- The fresh LoRA adapter's `lora_A` (peft's kaiming init) and the PPO value head hftune rebuilds draw from
  torch's global generator while the trainer is built, *before* TRL or transformers seed anything. torch
  seeds that generator from the OS at start-up, and in a pipeline earlier stages leave it wherever they
  stopped (a rerun that skips finished stages leaves it elsewhere), so the policy started from a different
  adapter every run.
- TRL's experimental PPO shuffles each update's minibatches with `np.random.permutation`, numpy's global
  generator, which nothing seeds (PPOTrainer skips `Trainer.__init__` and its `set_seed`): numpy seeds it
  from the OS, so the order of the gradient steps changed every run.
- Rollout sampling and the prompt order draw from torch's global generator too; TRL reseeds that itself
  (PPO to `seed + 100003 * rank` in its `__init__`, RLOO / GRPO through `Trainer`'s `set_seed` and a seeded
  `RepeatSampler`), so it repeats once the draws before it do.
hftune's own checks draw nothing from these: the held-out check decodes greedily inside
`torch.random.fork_rng` (`hftune.models.generation`), and the console and the logs only read.

CPU needs no `torch.use_deterministic_algorithms`: its kernels reduce in a fixed order for a given thread
count (the same machine and `OMP_NUM_THREADS`; checked with 1 and 2 threads). A GPU does not: cuBLAS picks
split-K reductions whose order varies unless `CUBLAS_WORKSPACE_CONFIG` is set before its first use, and
scatter / index-add backward passes (embedding gradients) and SDPA / flash-attention backward accumulate with
atomic adds in whatever order threads finish. `full_determinism: true` (TrainingArguments) asks for
transformers' `enable_full_determinism`: `CUBLAS_WORKSPACE_CONFIG`, `CUDA_LAUNCH_BLOCKING` (slower) and
`torch.use_deterministic_algorithms(True)`, under which an op with no deterministic kernel fails rather than
silently varying. RLOO / GRPO's `Trainer` honours the flag itself; TRL's PPO ignores it, so hftune applies it
here for every algorithm. It cannot make a GPU run repeat when CUDA was already in use in the process (a
pipeline's earlier stage: set `CUBLAS_WORKSPACE_CONFIG` in the environment instead), across GPU models,
drivers or library versions, or with vLLM generation, whose batching depends on timing. A multi-process run
repeats only with the same number of processes.
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
