"""`algorithm: ppo` (the RL stage's default, see `stage.py`): TRL's experimental PPOTrainer, and the one
module that imports `trl.experimental`.

TRL removed PPOTrainer in 1.13; 1.10-1.12 ship it as `trl.experimental.ppo`. Keeping every use of it here
means a future TRL bump touches one file, and `algorithm: rloo` / `grpo` (`group.py`) keep working without
it. hftune adds what TRL's PPO lacks: rewards scored through hftune's path (`RewardFn`), the value model
saved with each checkpoint, and `--resume`.

    hftune ppo --config configs/tiny/ppo.yaml
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from hftune.errors import UserError
from hftune.models import loading
from hftune.stages import common
from hftune.stages.rl.rewards import RewardFn, encode_prompts

logger = logging.getLogger(__name__)

VALUE_WEIGHTS = "value_model.safetensors"
# hftune pins the TRL releases that ship experimental PPO; the "experimental API" notice is known.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def config_class():
    from trl.experimental.ppo import PPOConfig

    return PPOConfig


def build_trainer(
    cfg,
    tokenizer,
    prompts,
    heldout,
    reward_fn: RewardFn,
    resume_from: str | None,
    *,
    separate_reference: bool = False,
):
    """TRL's PPOTrainer: the policy is the SFT model with a fresh LoRA adapter (the adapter switched off is
    the reference policy), the value model starts from the reward model, the reward model is frozen and
    scored through `hftune.models.scoring`. `separate_reference` loads a second copy as reference instead
    (only for measuring what the shared reference saves)."""
    from datasets import Dataset

    args, model_args, extras = cfg.training, cfg.model, cfg.hftune
    args.response_length = extras.response_length
    args.kl_coef = extras.kl_coef
    args.missing_eos_penalty = None  # applied by RewardFn, the same way for every algorithm
    args.stop_token = "eos"  # responses end at the end-of-turn token (the tokenizer's eos)
    args.sft_model_path = model_args.model_name_or_path
    args.reward_model_path = extras.reward_model_path
    if args.max_steps and args.max_steps > 0:
        # PPO counts episodes; `max_steps` means PPO updates, as it means optimizer steps elsewhere.
        args.total_episodes = (
            args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        )
    if args.num_sample_generations:
        args.num_sample_generations = 0  # hftune writes samples itself (heldout_every), to samples.jsonl

    tokenizer.padding_side = "left"  # queries are left padded so generation continues each prompt directly
    queries = encode_prompts(tokenizer, prompts)
    heldout_queries = encode_prompts(tokenizer, heldout) or queries[: args.per_device_eval_batch_size]

    policy = loading.load_model(model_args.model_name_or_path, model_args, for_training=True)
    common.ignore_bias_buffers(policy, cfg)
    value = loading.load_reward_model(extras.reward_model_path, model_args, for_training=True)
    value.config.pad_token_id = tokenizer.pad_token_id
    if reward_fn.normalize:
        _normalise_value_head(value, reward_fn.scorer.stats)
    reference = None
    if separate_reference:
        reference = loading.load_model(model_args.model_name_or_path, model_args, for_training=True).eval()
        reference.requires_grad_(False)

    trainer = ScoredPPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward_fn.scorer.model,
        train_dataset=Dataset.from_dict({"input_ids": queries}),
        value_model=value,
        eval_dataset=Dataset.from_dict({"input_ids": heldout_queries}),
        peft_config=loading.lora_config(model_args),
    )
    trainer.hftune_reward_fn = reward_fn
    trainer.hftune_prompt_of = {tuple(q): p for q, p in zip(queries, prompts, strict=True)}
    trainer.hftune_steps_done = 0
    trainer.add_callback(SaveValueModel())
    if resume_from:
        _resume(trainer, Path(resume_from))
    return trainer


def _normalise_value_head(value, stats: dict[str, float]) -> None:
    """Start the value model on the scale of the rewards it must predict: rewards are normalised with the
    reward stage's statistics, so the head copied from the reward model is too (measured: with raw-scale
    values against normalised rewards, early advantages are mostly value error and the reward falls)."""
    head = value.score
    scaled = torch.nn.Linear(
        head.in_features, head.out_features, bias=True, dtype=head.weight.dtype, device=head.weight.device
    )
    with torch.no_grad():
        bias = head.bias if head.bias is not None else torch.zeros_like(scaled.bias)
        scaled.weight.copy_(head.weight / stats["std"])
        scaled.bias.copy_((bias - stats["mean"]) / stats["std"])
    value.score = scaled


def score_through_hftune(trainer, original, model, query_responses, pad_token_id, context_length):
    """TRL's `get_reward`, except for the reward model: its scores come from `hftune.models.scoring` on the
    decoded (prompt, response), exactly as the reward stage and the eval harness score them."""
    if model is not trainer.reward_model:
        return original(model, query_responses, pad_token_id, context_length)
    tokenizer = trainer.processing_class
    eos = tokenizer.eos_token_id
    prompts, texts, ended, lengths = [], [], [], []
    for row in query_responses.tolist():
        query = tuple(t for t in row[:context_length] if t != pad_token_id)
        response = row[context_length:]
        stop = response.index(eos) + 1 if eos in response else None
        reply = response[:stop] if stop else [t for t in response if t != pad_token_id]
        prompts.append(trainer.hftune_prompt_of[query])
        texts.append(tokenizer.decode(reply, skip_special_tokens=True))
        ended.append(stop is not None)
        lengths.append(len(reply))
    scores = trainer.hftune_reward_fn.rewards(prompts, texts, ended, lengths)
    return None, scores.to(query_responses.device), None


def _trainer_class():
    from trl.experimental.ppo import PPOTrainer

    return PPOTrainer


class ScoredPPOTrainer(_trainer_class()):
    def train(self):
        import trl.experimental.ppo.ppo_trainer as ppo_module

        if self.args.num_total_batches == 0:
            return  # resumed from the final checkpoint: nothing left to train, only the artifact to save

        # TRL orders minibatches with numpy's global generator and samples with torch's; the stage seeded
        # both before the trainer was built (`seeding.seed_run`), so the same seed repeats the run.
        original = ppo_module.get_reward
        ppo_module.get_reward = functools.partial(score_through_hftune, self, original)
        try:
            return super().train()
        finally:
            ppo_module.get_reward = original


class SaveValueModel(TrainerCallback):
    """PPO checkpoints hold the policy adapter, optimizer and scheduler; the value model is saved beside
    them so `--resume` continues with the value estimates it had."""

    def on_save(self, args, state, control, model=None, **kwargs):
        from safetensors.torch import save_model

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if model is not None and folder.is_dir():
            save_model(model.value_model, str(folder / VALUE_WEIGHTS))


def _resume(trainer, checkpoint: Path) -> None:
    """Continue an interrupted PPO run: policy adapter, value model, optimizer and scheduler from the
    checkpoint, and only the updates still to do (TRL's PPOTrainer has no resume of its own). The random
    state is not restored: the resumed updates draw prompts, samples and minibatch order as a fresh run with
    the same seed does, so resuming repeats itself but does not replay the uninterrupted run."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file, load_model

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    done = int(state["global_step"])
    adapter = checkpoint / "adapter_model.safetensors"
    value = checkpoint / VALUE_WEIGHTS
    if not adapter.is_file() or not value.is_file():
        raise UserError(f"{checkpoint} is not a complete PPO checkpoint (adapter or value model missing)")
    policy = trainer.model.policy
    set_peft_model_state_dict(policy, load_file(str(adapter)))
    load_model(trainer.model.value_model, str(value))
    for name, target in (("optimizer.pt", trainer.optimizer), ("scheduler.pt", trainer.lr_scheduler)):
        path = checkpoint / name
        if path.is_file():
            target.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    args = trainer.args
    remaining = args.num_total_batches - done
    if remaining <= 0:
        # Interrupted after its last checkpoint, while saving: the policy is final, only the save is left.
        logger.info("%s holds all %d updates: saving it without training", checkpoint, done)
    args.num_total_batches = max(remaining, 0)
    trainer.hftune_steps_done = done
