"""The models an eval compares, loaded so that variants sharing weights share memory, and their replies.

Variants whose models differ only by their last LoRA adapter are one model in memory: the shared weights
(with any inner adapters merged) plus each variant's adapter under its own name. A variant is picked with
`set_adapter`, and the variant that *is* the shared weights (the SFT model under a PPO adapter, the base
under an SFT adapter) runs with `disable_adapter()`, never by loading a second copy.

Replies are cached by (model fingerprint, prompt tokens, decoding, seed). Sampled replies are drawn per
prompt, K at a time, with a seed made from the suite's seed and the prompt, so a prompt's samples do not
depend on which other prompts are evaluated: that is what makes them cacheable and best-of-N with n=1
identical to plain sampling. They are generated in batches all the same (`generation.sample_seeded` draws
each prompt's tokens from its own generator), with the replies one-at-a-time sampling gives.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hftune.evaluation.cache import Cache, fingerprint, key
from hftune.models import generation, loading

logger = logging.getLogger(__name__)


@dataclass
class ModelVariant:
    """One model variant: a loaded model (maybe shared), the adapter that makes it this variant (None: all
    adapters off), and the fingerprint of what it computes."""

    name: str
    model: Any
    adapter: str | None
    fingerprint: str

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        model = self.model
        if not hasattr(model, "peft_config"):
            yield model
        elif self.adapter is None:
            with model.disable_adapter():
                yield model
        else:
            model.set_adapter(self.adapter)
            yield model


def source_fingerprint(source: loading.ModelSource) -> str:
    return key([fingerprint(source.base), *(fingerprint(a) for a in source.adapters)])


def load_variants(
    paths: dict[str, str], model_args, *, trust_remote_code: bool = False
) -> dict[str, ModelVariant]:
    """Load `name -> model path`: variants that differ only by their last adapter are one model."""
    groups: dict[loading.ModelSource, dict[str, str | None]] = {}
    sources = {name: loading.resolve_source(path) for name, path in paths.items()}
    for name, source in sources.items():
        # The shared part is everything but the last adapter; a variant without adapters is the shared
        # part itself (adapters off).
        shared = loading.ModelSource(source.base, source.adapters[:-1])
        groups.setdefault(shared, {})[name] = source.adapter
    variants: dict[str, ModelVariant] = {}
    for shared, members in groups.items():
        adapters = {name: folder for name, folder in members.items() if folder is not None}
        model = loading.load_adapter_group(shared, adapters, model_args, trust_remote_code=trust_remote_code)
        if len(members) > 1:
            logger.info("variants %s share one model in memory (adapters switched)", ", ".join(members))
        for name, folder in members.items():
            variants[name] = ModelVariant(
                name, model, name if folder else None, source_fingerprint(sources[name])
            )
    return variants


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


def _as_row(reply: generation.Reply) -> dict[str, Any]:
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

    def generate(missing: list[int]) -> list[list[dict[str, Any]]]:
        bar = tqdm(total=len(missing), desc=desc, leave=False, unit="prompt")
        with variant.active() as model:
            if decoding.temperature is None:
                got = generation.generate(
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
                got = generation.sample_seeded(
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
                out = [[_as_row(r) for r in reps] for reps in got]
        bar.close()
        return out

    settings = decoding.as_dict()
    keys = [key("reply", variant.fingerprint, ids, settings) for ids in encoded]
    return cache.get_or_compute("replies", keys, generate)


def prompt_seed(seed: int, prompt_ids: list[int]) -> int:
    """A prompt's own sampling seed: the same for that prompt whatever else is evaluated."""
    return int(key("seed", seed, prompt_ids)[:8], 16)


def logprobs(
    variant: ModelVariant,
    prompts: list[list[int]],
    replies_ids: list[list[int]],
    pad_token_id: int,
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
            return generation.reply_logprobs(
                model,
                [prompts[i] for i in missing],
                [replies_ids[i] for i in missing],
                pad_token_id,
                temperature=temperature,
                batch_size=batch_size,
            )

    return cache.get_or_compute("logprobs", keys, compute)
