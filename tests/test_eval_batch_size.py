"""The eval suite's `batch_size`: null picks one from the size of the models evaluated (results do not depend
on it: tests/test_generation_batches.py), and a batch of fewer than one prompt is refused."""

from __future__ import annotations

import pytest

from hftune.errors import UserError
from hftune.evaluation import harness, suite

BASE = [
    "--data_recipe",
    "tiny_alpaca",
    "--sft_model",
    "some/sft",
    "--variants",
    "[sft]",
    "--metrics",
    "[length]",
]


def test_batch_size_defaults_to_null_and_is_chosen_from_model_size():
    assert harness.parse(None, BASE).hftune.batch_size is None
    assert harness.parse(None, [*BASE, "--batch_size", "8"]).hftune.batch_size == 8
    assert suite.auto_batch_size(426_000) == suite.AUTO_BATCH_SMALL  # a tiny tutorial model: overhead-bound
    assert suite.auto_batch_size(1_500_000_000) == suite.AUTO_BATCH


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(UserError, match="batch_size"):
        harness.parse(None, [*BASE, "--batch_size", "0"])
