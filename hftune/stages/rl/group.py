"""`algorithm: rloo` / `grpo`: TRL's maintained RLOOTrainer / GRPOTrainer, which compare several sampled
completions of each prompt instead of learning a value model. They get the same reward (`RewardFn`) and
read the same hftune keys as PPO (`ppo.py`)."""

from __future__ import annotations

from hftune.config import StageConfig
from hftune.models import loading
from hftune.stages import common
from hftune.stages.rl.rewards import RewardFn


def build_trainer(cfg: StageConfig, tokenizer, prompts, heldout, reward_fn: RewardFn):
    """RLOO / GRPO on TRL's maintained trainers, with the same reward and the same hftune keys."""
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    args, model_args, extras = cfg.training, cfg.model, cfg.hftune
    args.max_completion_length = extras.response_length
    args.beta = extras.kl_coef
    args.num_generations = extras.num_generations
    policy = loading.load_model(
        model_args.model_name_or_path,
        model_args,
        for_training=True,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    common.ignore_bias_buffers(policy, cfg)
    # TRL >= 1.14.2 ends a completion at every eos id of the policy's generation config as well as the
    # tokenizer's; a base model's config can name another one (e.g. <|endoftext|> beside the chat template's
    # <|im_end|>). Rollouts end at the end-of-turn token only, as the reward's missing-EOS check, the
    # held-out check and the eval read them.
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    cls = RLOOTrainer if extras.algorithm == "rloo" else GRPOTrainer
    trainer = cls(
        model=policy,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        eval_dataset=Dataset.from_dict({"prompt": heldout}) if heldout else None,
        processing_class=tokenizer,
        peft_config=loading.lora_config(model_args),
    )
    # TRL moves the models it is given; a reward *function* keeps its model where it was loaded (the CPU).
    if reward_fn.scorer is not None:
        reward_fn.scorer.model.to(trainer.accelerator.device)
    return trainer
