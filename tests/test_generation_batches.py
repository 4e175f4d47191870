"""The eval's cached computations (greedy and sampled replies, reply log-probabilities, reward scores) give
each prompt the value it gets alone, whatever else shares its batch and whatever the batch size: batches
hold one length only, so nothing is padded. That is what lets the eval use large batches and what keeps
its cache valid across runs with other prompts or batch sizes."""

from __future__ import annotations

import random

import pytest
import torch
from trl import ModelConfig

from hftune.models import generation, loading, scoring
from hftune.models.tokenizer import load_tokenizer


class Spy:
    """A model that records the attention mask of every forward and generate call it is given."""

    def __init__(self, model):
        self.model, self.masks = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        self.masks.append(kwargs["attention_mask"])
        return self.model.generate(**kwargs)

    def __call__(self, **kwargs):
        self.masks.append(kwargs["attention_mask"])
        return self.model(**kwargs)

    def padded(self) -> bool:
        return any(not bool(mask.all()) for mask in self.masks)


@pytest.fixture(scope="module")
def lm(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = loading.load_model(tiny_llama, ModelConfig(dtype="auto"), for_training=False).eval()
    return model, tok


@pytest.fixture(scope="module")
def prompts(lm) -> list[list[int]]:
    """24 prompts of 6 lengths, shuffled, so batches of every size mix lengths if they are allowed to."""
    _, tok = lm
    rng = random.Random(0)
    specials = set(tok.all_special_ids)
    vocab = [t for t in range(len(tok)) if t not in specials]
    out = [[rng.choice(vocab) for _ in range(length)] for length in range(3, 9) for _ in range(4)]
    rng.shuffle(out)
    return out


def test_greedy_replies_are_the_ones_each_prompt_gets_alone(lm, prompts):
    model, tok = lm
    alone = [generation.generate(model, tok, [p], 12)[0].ids for p in prompts]
    for batch_size in (1, 3, 64):
        spy = Spy(model)
        got = generation.greedy_by_length(spy, tok, prompts, 12, batch_size=batch_size)
        assert [r.ids for r in got] == alone, f"batch_size {batch_size}"
        assert not spy.padded(), "a greedy batch was padded: its replies could depend on what shares it"
    assert len({tuple(r) for r in alone}) > 1


def test_sampled_replies_do_not_depend_on_the_batch_size(lm, prompts):
    model, tok = lm
    seeds = [generation.prompt_seed(0, p) for p in prompts]

    def sampled(batch_size: int) -> list[list[list[int]]]:
        spy = Spy(model)
        got = generation.sample_seeded(
            spy, tok, prompts, 12, temperature=1.0, seeds=seeds, num_return_sequences=2, batch_size=batch_size
        )
        assert not spy.padded()
        return [[r.ids for r in reps] for reps in got]

    one = sampled(2)  # one prompt (two rows) per batch
    assert sampled(6) == one and sampled(128) == one
    # The first prompt alone, through plain `generate` seeded like it: the per-prompt sampler draws the same.
    alone = generation.generate(
        model, tok, [prompts[0]], 12, temperature=1.0, seed=seeds[0], num_return_sequences=2
    )
    assert [r.ids for r in alone] == one[0]


def test_reply_logprobs_do_not_depend_on_the_batch(lm, prompts):
    model, tok = lm
    replies = [generation.generate(model, tok, [p], 1 + i % 5)[0].ids for i, p in enumerate(prompts)]
    replies[0] = []  # an empty reply: log-probability 0, and not run through the model
    values = {}
    for batch_size in (1, 5, 64):
        spy = Spy(model)
        values[batch_size] = generation.reply_logprobs(spy, prompts, replies, batch_size=batch_size)
        assert not spy.padded()
    assert values[5] == values[1] and values[64] == values[1]  # exactly: bit for bit
    assert values[1][0] == 0.0 and all(v < 0 for v in values[1][1:])


def test_cached_reward_scores_are_not_padded(tiny_llama, prompts):
    tok = load_tokenizer(tiny_llama)
    model = loading.load_reward_model(tiny_llama, ModelConfig(dtype="auto")).eval()
    model.config.pad_token_id = tok.pad_token_id
    scores = {}
    for batch_size in (1, 5, 64):
        spy = Spy(model)
        scores[batch_size] = scoring.score_ids(spy, prompts, tok.pad_token_id, batch_size, one_length=True)
        assert not spy.padded()
    # Not bit for bit: the one-column score head rounds by how many rows a CPU matmul holds (score_ids).
    for batch_size in (5, 64):
        torch.testing.assert_close(scores[batch_size], scores[1], rtol=0, atol=1e-6)
    # Without `one_length` (reward training and PPO) sequences of several lengths share a padded batch.
    spy = Spy(model)
    scoring.score_ids(spy, prompts, tok.pad_token_id, 64)
    assert spy.padded()


def test_length_batches_hold_one_length_each_at_most_per_batch():
    encoded = [[1] * n for n in (2, 3, 2, 2, 3, 4, 2)]
    batches = generation.length_batches(encoded, 2)
    assert sorted(i for b in batches for i in b) == list(range(len(encoded)))
    assert all(len(b) <= 2 and len({len(encoded[i]) for i in b}) == 1 for b in batches)
    assert batches[0] == [0, 2]  # in input order within a length: a prompt's batch is reproducible
