"""Batched generation with explicit decoding settings: the one generate loop the RL stage's held-out check,
the eval harness and the label tool share.

Prompts are left padded (every prompt ends where generation starts); decoding is greedy or plain sampling
at a temperature (no top-k/top-p, as the RL trainers sample), always from settings passed in here, never
from a checkpoint's `generation_config`. Sampling runs under its own seed inside `torch.random.fork_rng`,
so it leaves the caller's random state (a training run's) untouched.

`replies` and `logprobs` run a loaded model variant (`loading.load_variants`) through the cache
(`models/cache.py`), keyed by (model fingerprint, prompt tokens, decoding, seed). Sampled replies are drawn
per prompt, K at a time, with a seed made from the decoding's seed and the prompt, so a prompt's samples do
not depend on which other prompts are sampled: that is what makes them cacheable and best-of-N with n=1
identical to plain sampling. They are generated in batches all the same (`sample_seeded` draws each
prompt's tokens from its own generator), with the replies one-at-a-time sampling gives.

The cached paths (`greedy_by_length`, `sample_seeded`, `reply_logprobs`) batch only prompts (sequences) of
one length, so nothing is padded and a value never depends on what shared its batch or on the batch size:
a padded row can come out different in the last bits, enough to flip a near-tied greedy token. That is
also what makes large batches safe: with a small model, per-call and per-step overhead, not arithmetic,
is most of generation's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hftune.models.cache import Cache, key

if TYPE_CHECKING:
    from hftune.models.loading import ModelVariant


@dataclass
class Reply:
    ids: list[int]  # generated tokens, up to and including the end-of-turn token when it was emitted
    text: str  # decoded without special tokens, cut at a stop string if one was hit
    ended: bool  # stopped by itself (end-of-turn token or stop string) rather than by the length limit


def generation_config(
    tokenizer,
    max_new_tokens: int,
    temperature: float | None,
    num_return_sequences: int = 1,
    stop_strings: Sequence[str] = (),
):
    from transformers import GenerationConfig

    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_return_sequences=num_return_sequences,
        stop_strings=list(stop_strings) or None,
        **(sampling or {"do_sample": False}),
    )


def left_pad(batch: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(batch):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _reply(tokenizer, row: list[int], stop_strings: Sequence[str]) -> Reply:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    stop = row.index(eos) + 1 if eos in row else None
    ids = row[:stop] if stop else [t for t in row if t != pad]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ended = stop is not None
    for s in stop_strings:
        # A stop string ends a base model's document-style answer ("\nQ:" starts the next question).
        if s in text:
            text, ended = text[: text.index(s)], True
    return Reply(ids, text, ended)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    stop_strings: Sequence[str] = (),
    progress=None,
) -> list[Reply]:
    """Replies to token-id prompts, `num_return_sequences` per prompt (consecutive in the output): greedy,
    or sampled at `temperature` with `seed`. `progress` is called with the number of prompts done."""
    config = generation_config(tokenizer, max_new_tokens, temperature, num_return_sequences, stop_strings)
    extra = {"tokenizer": tokenizer} if stop_strings else {}  # generate needs it to match stop strings
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    replies: list[Reply] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(encoded), batch_size):
                batch = encoded[start : start + batch_size]
                ids, mask = left_pad(batch, tokenizer.pad_token_id)
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    **extra,
                )
                replies += [_reply(tokenizer, row, stop_strings) for row in out[:, ids.shape[1] :].tolist()]
                if progress is not None:
                    progress(len(batch))
    finally:
        model.train(was_training)
    return replies


def length_batches(encoded: Sequence[Sequence[int]], per_batch: int) -> list[list[int]]:
    """Indices of `encoded` in batches of at most `per_batch` prompts of one length. A batch of equal
    lengths needs no padding, so each row computes what it computes alone: its reply depends neither on
    what shares its batch nor on the batch size."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(encoded):
        by_length.setdefault(len(prompt), []).append(i)
    return [
        group[start : start + per_batch]
        for group in by_length.values()
        for start in range(0, len(group), per_batch)
    ]


def greedy_by_length(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 64,
    stop_strings: Sequence[str] = (),
    progress=None,
) -> list[Reply]:
    """Greedy replies, each the one its prompt gets alone, in batches of prompts of one length.

    `generate` left-pads a batch of mixed lengths, and a padded row's numbers can differ in the last bits
    from the unpadded ones (another attention width, another kernel), enough to flip a near-tie argmax: a
    reply there depends on its batch. Here it does not, so the eval's cached greedy replies stay valid
    whatever batch size or other prompts produced them, and a large batch is safe."""
    got = _by_length(
        model,
        tokenizer,
        encoded,
        max_new_tokens,
        max(1, batch_size),
        stop_strings=stop_strings,
        progress=progress,
    )
    return [replies[0] for replies in got]


@torch.no_grad()
def _by_length(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int,
    per_batch: int,
    *,
    k: int = 1,
    sampler=None,
    stop_strings: Sequence[str] = (),
    progress=None,
) -> list[list[Reply]]:
    """What the cached paths share: batches of at most `per_batch` prompts of one length (no padding), each
    prompt `k` times in a row, decoded greedily; `sampler(batch)`, when given, is a logits processor that
    draws each row's token instead (`sample_seeded`). Each prompt's `k` replies, in the input order."""
    from transformers import LogitsProcessorList

    config = generation_config(tokenizer, max_new_tokens, None, 1, stop_strings)
    extra = {"tokenizer": tokenizer} if stop_strings else {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[Reply]] = [[] for _ in encoded]
    try:
        for batch in length_batches(encoded, per_batch):
            ids = torch.tensor([list(encoded[i]) for i in batch for _ in range(k)], dtype=torch.long)
            if sampler is not None:
                extra["logits_processor"] = LogitsProcessorList([sampler(batch)])
            got = model.generate(
                input_ids=ids.to(device),
                attention_mask=torch.ones_like(ids).to(device),
                generation_config=config,
                **extra,
            )
            rows = got[:, ids.shape[1] :].tolist()
            for j, i in enumerate(batch):
                out[i] = [_reply(tokenizer, row, stop_strings) for row in rows[j * k : (j + 1) * k]]
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out


class _SeededSampler:
    """A logits processor that samples each prompt's rows with that prompt's own generator.

    Run under greedy decoding, it turns each row's scores into the token it drew (0 there, -inf elsewhere),
    so the argmax that follows is the draw. The draw is computed exactly as `generate` samples
    (temperature, softmax, `torch.multinomial` over the prompt's `k` rows), from a generator seeded as one
    prompt's `generate` call seeds torch, so a prompt's samples come out as they do alone, whatever else
    shares its batch.
    """

    def __init__(self, seeds: Sequence[int], k: int, temperature: float, device):
        self.k, self.temperature = k, temperature
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids, scores):
        # Softmax is row-wise, so one call over the batch gives each row the probabilities its prompt's own
        # slice would; only the draw needs each prompt's generator (one small call per prompt and step).
        probs = torch.nn.functional.softmax(scores / self.temperature, dim=-1)
        k = self.k
        tokens = torch.cat(
            [
                torch.multinomial(probs[g * k : (g + 1) * k], num_samples=1, generator=generator)
                for g, generator in enumerate(self.generators)
            ]
        )
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


@torch.no_grad()
def sample_seeded(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float,
    seeds: Sequence[int],
    num_return_sequences: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    progress=None,
) -> list[list[Reply]]:
    """`num_return_sequences` samples for each prompt, prompt i sampled with `seeds[i]`, in batches.

    The same replies as `generate` called on each prompt alone with its seed (the eval's cacheable,
    per-prompt samples), at the speed of batches: prompts of one length share a batch, so no row is padded
    and each row computes what it computes alone.
    """
    k = num_return_sequences
    device = next(model.parameters()).device
    return _by_length(
        model,
        tokenizer,
        encoded,
        max_new_tokens,
        max(1, batch_size // k),
        k=k,
        sampler=lambda batch: _SeededSampler([seeds[i] for i in batch], k, temperature, device),
        stop_strings=stop_strings,
        progress=progress,
    )


@torch.no_grad()
def reply_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[float]:
    """Sum of log p(reply token | prompt, earlier reply tokens) for each (prompt, reply), at `temperature`
    (the distribution the replies were sampled from). Batched by total length, one length per batch: no
    row is padded (padding moved values in the last bits), so a value is the one its sequence gets alone,
    whatever shares its batch and whatever the batch size: a cached value does not depend on the run that
    computed it."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [0.0] * len(prompts)
    seqs = [list(p) + list(r) for p, r in zip(prompts, replies, strict=True)]
    scored = [i for i in range(len(seqs)) if len(replies[i])]  # an empty reply has log-probability 0
    try:
        for batch in length_batches([seqs[i] for i in scored], max(1, batch_size)):
            chunk = [scored[j] for j in batch]
            ids = torch.tensor([seqs[i] for i in chunk], dtype=torch.long)
            logits = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)).logits
            logits = logits.float()
            logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            for row, i in enumerate(chunk):
                first = len(prompts[i]) - 1  # the logit at position t predicts token t + 1
                out[i] = float(token_logp[row, first : first + len(replies[i])].sum())
    finally:
        model.train(was_training)
    return out


@dataclass
class Decoding:
    max_new_tokens: int
    temperature: float | None = None  # None: greedy
    num_samples: int = 1
    seed: int = 0
    stop_strings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        if self.temperature is None:
            return {
                "do_sample": False,
                "max_new_tokens": self.max_new_tokens,
                "stop_strings": self.stop_strings,
            }
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": 0,
            "top_p": 1.0,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "stop_strings": self.stop_strings,
        }


def _as_row(reply: Reply) -> dict[str, Any]:
    return {"ids": reply.ids, "text": reply.text, "ended": reply.ended}


def replies(
    variant: ModelVariant,
    tokenizer,
    encoded: list[list[int]],
    decoding: Decoding,
    cache: Cache,
    *,
    batch_size: int,
    desc: str,
) -> list[list[dict[str, Any]]]:
    """Per prompt, its replies (one when greedy, `num_samples` when sampling), from the cache where there."""
    from tqdm.auto import tqdm

    def compute(missing: list[int]) -> list[list[dict[str, Any]]]:
        bar = tqdm(total=len(missing), desc=desc, leave=False, unit="prompt")
        with variant.active() as model:
            if decoding.temperature is None:
                # One length per batch: each reply is the one its prompt gets alone (cacheable).
                got = greedy_by_length(
                    model,
                    tokenizer,
                    [encoded[i] for i in missing],
                    decoding.max_new_tokens,
                    batch_size=batch_size,
                    stop_strings=decoding.stop_strings,
                    progress=bar.update,
                )
                out = [[_as_row(r)] for r in got]
            else:
                # Batched, yet each prompt sampled with its own seed: the same replies as one at a time.
                sampled = sample_seeded(
                    model,
                    tokenizer,
                    [encoded[i] for i in missing],
                    decoding.max_new_tokens,
                    temperature=decoding.temperature,
                    seeds=[prompt_seed(decoding.seed, encoded[i]) for i in missing],
                    num_return_sequences=decoding.num_samples,
                    batch_size=batch_size * decoding.num_samples,
                    stop_strings=decoding.stop_strings,
                    progress=bar.update,
                )
                out = [[_as_row(r) for r in reps] for reps in sampled]
        bar.close()
        return out

    settings = decoding.as_dict()
    keys = [key("reply", variant.fingerprint, ids, settings) for ids in encoded]
    return cache.get_or_compute("replies", keys, compute)


def prompt_seed(seed: int, prompt_ids: list[int]) -> int:
    """A prompt's own sampling seed: the same for that prompt whatever else is sampled."""
    return int(key("seed", seed, prompt_ids)[:8], 16)


def logprobs(
    variant: ModelVariant,
    prompts: list[list[int]],
    replies_ids: list[list[int]],
    temperature: float,
    cache: Cache,
    *,
    batch_size: int,
) -> list[float]:
    """Log-probability of each reply under `variant` (cached), for KL estimates."""
    keys = [
        key("logp", variant.fingerprint, p, r, temperature) for p, r in zip(prompts, replies_ids, strict=True)
    ]

    def compute(missing: list[int]) -> list[float]:
        with variant.active() as model:
            return reply_logprobs(
                model,
                [prompts[i] for i in missing],
                [replies_ids[i] for i in missing],
                temperature=temperature,
                batch_size=batch_size,
            )

    return cache.get_or_compute("logprobs", keys, compute)
