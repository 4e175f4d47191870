"""hftune's PPO loop for language models, written in this project on `ppo_objective.py` (TRL removed its
PPOTrainer in 1.13). A `transformers.Trainer` subclass, so that the optimizer, learning-rate schedule,
callbacks (guardrails, progress line), logging and state are the Trainer's own; only `train` is PPO's.

One step, top to bottom:
1. **Rollout.** The step's prompts (a seeded order, `_prompt_batch`) are sampled by the policy at
   `temperature`, one reply each, cut at the end-of-turn token (`response_mask`).
2. **Score.** hftune's reward (`RewardFn`: the reward model through `hftune.models.scoring`, normalised,
   with `missing_eos_penalty`) on the decoded reply; log-probabilities of the sampled tokens under the
   policy and under the reference (the same weights with the LoRA adapter off, or a frozen copy for full
   fine-tuning); the value model's estimate before each token.
3. **Advantages.** Per-token rewards `-kl_coef * KL` plus the score on the last token, optionally whitened
   (`whiten_rewards`); GAE (`gamma`, `lam`); advantages whitened over the batch.
4. **Update.** `num_ppo_epochs` passes over the rollout in `num_mini_batches` seeded minibatches, each of
   `gradient_accumulation_steps` micro-batches: the clipped surrogate (`cliprange`) plus `vf_coef` times
   the clipped value loss (`cliprange_value`); one optimizer step a minibatch; the schedule steps once a
   rollout.

Every random draw of a step (its prompts, its samples, its minibatch order) comes from generators seeded by
(`seed`, step), so a run is a function of its seed, and a run resumed from a checkpoint (weights, value
model, optimizer, schedule) continues exactly as the uninterrupted run would have. Dropout is switched off
in the policy and the value model: the log-probabilities of the update must be those of the rollout.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerState

from hftune.models.generation import generation_config, left_pad
from hftune.stages.common import checkpoint_folders
from hftune.stages.rl import ppo_objective as obj

logger = logging.getLogger(__name__)

VALUE_WEIGHTS = "value_model.safetensors"
POLICY_WEIGHTS = "model.safetensors"  # a fully fine-tuned policy's checkpoint (a LoRA one is PEFT's files)
# Seeds of a step's generators: different streams for prompts, samples and minibatch order.
PROMPT_STREAM, SAMPLE_STREAM, MINIBATCH_STREAM = 1, 2, 3


def step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + stream) % (2**63 - 1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token: left-padded prompts then see the positions they
    see in generation (models do not derive them from the mask in a plain forward)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under `logits / temperature` (the distribution the tokens were sampled from)."""
    logits = logits.float() / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_values(value_model, input_ids, attention_mask, positions) -> torch.Tensor:
    """The value model's estimate at every position: its score head on each hidden state (the reward model
    it started from applies the head to the last one only)."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
    return value_model.score(hidden.last_hidden_state).squeeze(-1).float()


def switch_off_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module, so that one optimizer (and one DDP wrapper) holds both."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(self, input_ids, attention_mask):
        positions = position_ids(attention_mask)
        logits = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
        ).logits
        return logits, token_values(self.value_model, input_ids, attention_mask, positions)


@dataclass
class Rollout:
    """One step's samples and what PPO computes from them; rows are prompts, columns response tokens."""

    queries: torch.Tensor  # (B, Lq), left padded
    query_mask: torch.Tensor
    responses: torch.Tensor  # (B, R), padded after the stop token
    mask: torch.Tensor  # 1 on the reply's tokens, up to and including the stop token
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) hftune's reward of each reply
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def sequences(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        return joined(self.queries[rows], self.query_mask[rows], self.responses[rows])


def joined(queries, query_mask, responses) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + reply ids and their attention mask (every reply token attended: what follows the stop
    token is masked out of the losses, and a causal model never lets it change the tokens before)."""
    ids = torch.cat([queries, responses], dim=1)
    return ids, torch.cat([query_mask, torch.ones_like(responses)], dim=1)


class PPOTrainer(Trainer):
    """PPO on a policy (`PeftModel` with a fresh adapter, or a full model with `reference` given), a value
    model (`AutoModelForSequenceClassification`, trained) and `reward_fn` (frozen, hftune's scoring)."""

    def __init__(
        self, *, args, processing_class, policy, value_model, reward_fn, prompts, queries, reference=None
    ):
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a fully fine-tuned policy needs a separate `reference` model")
        for model in (policy, value_model):
            switch_off_dropout(model)
        super().__init__(
            model=PolicyAndValue(policy, value_model),
            args=args,
            processing_class=processing_class,
            data_collator=self.collate,
        )
        self.reward_fn = reward_fn
        self.prompts = list(prompts)  # the chat rows the reward model scores
        self.queries = [list(q) for q in queries]  # the same prompts, tokenized up to the reply
        self.reference = reference.to(self.args.device) if reference is not None else None
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        self.stop_token_id = processing_class.eos_token_id
        self.rollout_size = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
        )
        if len(self.queries) < self.rollout_size:
            raise ValueError(
                f"a PPO rollout takes {self.rollout_size} prompts (per_device_train_batch_size x "
                f"gradient_accumulation_steps x num_mini_batches) but the data has {len(self.queries)}"
            )
        self.total_steps = self._total_steps()
        self.start_step = 0

    # -- the pieces the loop is made of ---------------------------------------------------------------

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    def collate(self, rows):
        """Prompts left padded, so that generation continues each one directly."""
        ids, mask = left_pad([r["input_ids"] for r in rows], self.processing_class.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    def _total_steps(self) -> int:
        args = self.args
        if args.max_steps and args.max_steps > 0:
            return args.max_steps  # rollouts (each with its PPO epochs), as `max_steps` counts them
        if args.total_episodes:
            return max(1, args.total_episodes // self.rollout_size)
        per_epoch = len(self.queries) // self.rollout_size
        return max(1, int(args.num_train_epochs * per_epoch))

    def _prompt_batch(self, step: int) -> list[int]:
        """The rows of `step`'s rollout: each pass over the data in its own seeded order, the remainder
        that does not fill a rollout left out of that pass (a function of the step, so resumes repeat it)."""
        per_pass = len(self.queries) // self.rollout_size
        epoch, index = divmod(step, per_pass)
        generator = torch.Generator().manual_seed(step_seed(self.args.seed, epoch, PROMPT_STREAM))
        order = torch.randperm(len(self.queries), generator=generator)
        return order[index * self.rollout_size : (index + 1) * self.rollout_size].tolist()

    @torch.no_grad()
    def _sample(self, rows: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded queries, their mask, and one sampled reply each padded to `response_length`."""
        device, pad = self.args.device, self.processing_class.pad_token_id
        queries, query_mask = left_pad([self.queries[i] for i in rows], pad)
        queries, query_mask = queries.to(device), query_mask.to(device)
        # Plain sampling at `temperature`, ending at the end-of-turn token: the eval's and RLOO / GRPO's.
        config = generation_config(self.processing_class, self.args.response_length, self.args.temperature)
        chunk = self.args.local_rollout_forward_batch_size
        responses = torch.full((len(rows), self.args.response_length), pad, dtype=torch.long, device=device)
        self.policy.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_seed(self.args.seed, step, SAMPLE_STREAM))
            for start in range(0, len(rows), chunk):
                part = slice(start, start + chunk)
                out = self.policy.generate(
                    input_ids=queries[part], attention_mask=query_mask[part], generation_config=config
                )
                generated = out[:, queries.shape[1] :]
                responses[part, : generated.shape[1]] = generated
        return queries, query_mask, responses

    def score(self, rows: list[int], responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hftune's reward of each reply: decoded up to its stop token and scored as the reward stage and
        the eval harness score it (`RewardFn`, which also applies `missing_eos_penalty`)."""
        tok = self.processing_class
        lengths = mask.sum(dim=1).long().tolist()
        replies = [row[:n] for row, n in zip(responses.tolist(), lengths, strict=True)]
        ended = [bool(reply) and reply[-1] == self.stop_token_id for reply in replies]
        texts = [tok.decode(reply, skip_special_tokens=True) for reply in replies]
        prompts = [self.prompts[i] for i in rows]
        return self.reward_fn.rewards(prompts, texts, ended, lengths).to(responses.device).float()

    @torch.no_grad()
    def _rollout(self, step: int) -> Rollout:
        args = self.args
        rows = self._prompt_batch(step)
        queries, query_mask, responses = self._sample(rows, step)
        mask = obj.response_mask(responses, self.stop_token_id)
        context = queries.shape[1]
        logprobs, ref_logprobs, values = [], [], []
        self.model.eval()
        for start in range(0, len(rows), args.local_rollout_forward_batch_size):
            part = slice(start, start + args.local_rollout_forward_batch_size)
            ids, attn = joined(queries[part], query_mask[part], responses[part])
            logits, value = self.model(ids, attn)
            # The logit at position t predicts token t + 1; the value at t is the estimate before it.
            logprobs.append(token_logprobs(logits[:, context - 1 : -1], responses[part], args.temperature))
            values.append(value[:, context - 1 : -1])
            ref_logits = self._reference_logits(ids, attn)
            ref_logprobs.append(
                token_logprobs(ref_logits[:, context - 1 : -1], responses[part], args.temperature)
            )
        return Rollout(
            queries,
            query_mask,
            responses,
            mask,
            torch.cat(logprobs) * mask,
            torch.cat(ref_logprobs) * mask,
            torch.cat(values) * mask,
            self.score(rows, responses, mask),
        )

    def _reference_logits(self, ids, attn) -> torch.Tensor:
        """The SFT policy's logits: the policy with its adapter off (no second copy held), or the frozen
        reference a fully fine-tuned policy needs."""
        positions = position_ids(attn)
        if self.reference is not None:
            return self.reference(input_ids=ids, attention_mask=attn, position_ids=positions).logits
        with self.policy.disable_adapter():
            return self.policy(input_ids=ids, attention_mask=attn, position_ids=positions).logits

    def _advantages(self, r: Rollout) -> torch.Tensor:
        """Per-token rewards and GAE; returns the per-token KL estimate (for the logs)."""
        args = self.args
        kl = obj.per_token_kl(r.logprobs, r.ref_logprobs, args.kl_estimator) * r.mask
        rewards = obj.token_rewards(r.scores, kl, r.mask, args.kl_coef)
        if args.whiten_rewards:
            rewards = obj.whiten(rewards, r.mask, shift_mean=False)
        advantages, r.returns = obj.gae(rewards, r.values, r.mask, args.gamma, args.lam)
        r.advantages = obj.whiten(advantages, r.mask)
        return kl

    def _update(self, r: Rollout, step: int) -> dict[str, float]:
        """`num_ppo_epochs` x `num_mini_batches` optimizer steps on one rollout; the mean of each part."""
        args = self.args
        generator = torch.Generator().manual_seed(step_seed(args.seed, step, MINIBATCH_STREAM))
        context = r.queries.shape[1]
        totals: dict[str, list[float]] = {}
        self.model.train()
        for _ in range(args.num_ppo_epochs):
            for minibatch in obj.minibatches(len(r.scores), args.num_mini_batches, generator):
                for micro in minibatch.split(args.per_device_train_batch_size):
                    micro = micro.to(r.queries.device)
                    ids, attn = r.sequences(micro)
                    logits, values = self.model(ids, attn)
                    logits = logits[:, context - 1 : -1]
                    new_logprobs = token_logprobs(logits, r.responses[micro], args.temperature)
                    mask = r.mask[micro]
                    pg = obj.policy_loss(
                        new_logprobs, r.logprobs[micro], r.advantages[micro], mask, args.cliprange
                    )
                    vf = obj.value_loss(
                        values[:, context - 1 : -1],
                        r.values[micro],
                        r.returns[micro],
                        mask,
                        args.cliprange_value,
                    )
                    loss = pg.loss + args.vf_coef * vf.loss
                    self.accelerator.backward(loss / args.gradient_accumulation_steps)
                    with torch.no_grad():
                        parts = {
                            "loss/policy_avg": pg.loss.detach(),
                            "loss/value_avg": vf.loss.detach(),
                            "policy/clipfrac_avg": pg.clipfrac,
                            "val/clipfrac_avg": vf.clipfrac,
                            "policy/approxkl_avg": pg.approx_kl,
                            "policy/entropy_avg": obj.masked_mean(entropy(logits, args.temperature), mask),
                            "val/ratio": obj.masked_mean(torch.exp(new_logprobs - r.logprobs[micro]), mask),
                        }
                    for key, value in parts.items():
                        totals.setdefault(key, []).append(float(value))
                if args.max_grad_norm and args.max_grad_norm > 0:
                    grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    totals.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        return {key: sum(values) / len(values) for key, values in totals.items()}

    def _rollout_metrics(self, r: Rollout, kl: torch.Tensor) -> dict[str, float]:
        sequence_kl = kl.sum(dim=1)
        non_score = -self.args.kl_coef * sequence_kl
        last = (r.mask.sum(dim=1).long() - 1).clamp(min=0)
        ended = r.responses.gather(1, last.unsqueeze(1)).squeeze(1) == self.stop_token_id
        return {
            "objective/kl": float(sequence_kl.mean()),
            "objective/entropy": float((-r.logprobs * r.mask).sum(dim=1).mean()),
            "objective/non_score_reward": float(non_score.mean()),
            "objective/rlhf_reward": float((r.scores + non_score).mean()),
            "objective/scores": float(r.scores.mean()),
            "val/num_eos_tokens": float(ended.sum()),
        }

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        args = self.args
        self.create_optimizer_and_scheduler(num_training_steps=self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
        )
        self.state.compute_steps(args, self.total_steps)
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        self.state.max_steps = self.total_steps
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = self.model, self.optimizer, self.lr_scheduler
        self.control = handler.on_train_begin(args, self.state, self.control)
        started = time.monotonic()
        for step in range(self.state.global_step, self.total_steps):
            self.control = handler.on_step_begin(args, self.state, self.control)
            rollout = self._rollout(step)
            kl = self._advantages(rollout)
            logs = self._rollout_metrics(rollout, kl)
            logs.update(self._update(rollout, step))
            logs["lr"] = self.lr_scheduler.get_last_lr()[0]
            logs["episode"] = (step + 1) * self.rollout_size
            logs["eps"] = (step + 1 - self.start_step) * self.rollout_size / (time.monotonic() - started)
            self.state.global_step = step + 1
            self.state.epoch = (step + 1) * self.rollout_size / len(self.queries)
            self.log(logs)
            self.control = handler.on_step_end(args, self.state, self.control)
            if self.control.should_save:
                self.save_checkpoint()
                self.control = handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = handler.on_train_end(args, self.state, self.control)
        return None

    # -- checkpoints: what a resume needs to continue exactly --------------------------------------------

    def save_checkpoint(self) -> Path:
        """`checkpoint-N` in the work folder: the policy (PEFT adapter, or full weights), the value model,
        optimizer and schedule; trainer_state.json last, so a folder without it was cut off mid-write."""
        from safetensors.torch import save_model

        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if not self.is_world_process_zero():
            return folder
        # A cut-off folder of a later step was removed when the run resumed (`last_complete_checkpoint`).
        folder.mkdir(parents=True, exist_ok=True)
        policy = self.policy
        if hasattr(policy, "peft_config"):
            policy.save_pretrained(str(folder))
        else:
            save_model(policy, str(folder / POLICY_WEIGHTS))
        save_model(self.accelerator.unwrap_model(self.model).value_model, str(folder / VALUE_WEIGHTS))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), folder / "scheduler.pt")
        self.state.save_to_json(str(folder / "trainer_state.json"))
        self._keep_latest_checkpoints()
        return folder

    def _keep_latest_checkpoints(self) -> None:
        """`save_total_limit`: the oldest checkpoints go. `output_dir` is the stage's work folder (hftune's,
        `common.run_dirs`), and only its `checkpoint-N` folders are listed."""
        limit = self.args.save_total_limit
        if not limit:
            return
        for old in checkpoint_folders(Path(self.args.output_dir))[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file, load_model

        unwrapped = self.accelerator.unwrap_model(self.model)
        adapter = folder / "adapter_model.safetensors"
        if hasattr(unwrapped.policy, "peft_config") and adapter.is_file():
            set_peft_model_state_dict(unwrapped.policy, load_file(str(adapter)))
        elif (folder / POLICY_WEIGHTS).is_file():
            load_model(unwrapped.policy, str(folder / POLICY_WEIGHTS))
        else:
            raise FileNotFoundError(f"{folder} holds no policy weights")
        load_model(unwrapped.value_model, str(folder / VALUE_WEIGHTS))
        for name, target in (("optimizer.pt", self.optimizer), ("scheduler.pt", self.lr_scheduler)):
            target.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True))
        saved = TrainerState.load_from_json(str(folder / "trainer_state.json"))
        self.state.global_step, self.state.log_history = saved.global_step, saved.log_history
        self.state.epoch = saved.epoch
        self.start_step = saved.global_step
