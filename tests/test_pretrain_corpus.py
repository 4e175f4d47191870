"""`hftune pretrain` on a real corpus: documents far longer than `max_length` are concatenated (EOS between
them) and cut into blocks instead of being dropped, the tokens trained are counted exactly, and a corpus
too large for memory streams. Every figure is checked against the tokenizer itself, not only hftune's
counters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from bad_input import refused

from hftune.models.tiny import default_corpus
from hftune.models.tokenizer import load_tokenizer
from hftune.stages import pretrain

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/pretrain.yaml")
LENGTH = 32  # max_length: each document is over ten blocks long
N_DOCS = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_llama) -> dict:
    """A .txt corpus of 30 distinct documents (one a line), each longer than 10 x max_length tokens, and the
    token ids TRL trains on for each: the document with EOS appended, tokenized on its own."""
    tok = load_tokenizer(tiny_llama)
    words = " ".join(default_corpus()).split()
    rng = random.Random(0)
    docs = [" ".join(rng.choices(words, k=400)) for _ in range(N_DOCS)]
    ids = [tok(doc + tok.eos_token)["input_ids"] for doc in docs]
    assert all(len(i) > 10 * LENGTH for i in ids) and ids[0][-1] == tok.eos_token_id
    path = tmp_path_factory.mktemp("corpus") / "articles.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return {"path": path, "docs": docs, "ids": ids}


def _argv(model: str, corpus: dict, out: Path, *extra: str) -> list[str]:
    return [
        *("--init_architecture", "null", "--model_name_or_path", model),
        *("--data_files", str(corpus["path"]), "--output_dir", str(out)),
        *("--max_length", str(LENGTH), "--eval_fraction", "0.1", "--learning_rate", "1e-3"),
        *("--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16"),
        *("--logging_steps", "1000", "--save_steps", "1000", "--warmup_steps", "0"),
        *extra,
    ]


def _split(corpus: dict, out: Path) -> tuple[list[list[int]], list[list[int]]]:
    """(training documents' ids, held-out documents' ids) in file order, by the keys prompts.json lists."""
    from hftune.data.prompt_keys import prompt_key

    record = json.loads((out / "prompts.json").read_text())
    held = set(record["held_out"])
    assert held and not held & set(record["trained"])
    keys = [prompt_key(doc) for doc in corpus["docs"]]
    train = [ids for key, ids in zip(keys, corpus["ids"], strict=True) if key not in held]
    assert set(record["trained"]) == {key for key in keys if key not in held}
    return train, [ids for key, ids in zip(keys, corpus["ids"], strict=True) if key in held]


def _run(tiny_llama, corpus, out, *extra):
    argv = _argv(tiny_llama, corpus, out, "--max_steps", "-1", "--num_train_epochs", "1", *extra)
    return pretrain.run(pretrain.parse(CONFIG, argv))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, corpus) -> dict:
    root = tmp_path_factory.mktemp("pretrain-corpus")
    return {
        drop: (
            _run(tiny_llama, corpus, root / f"drop-{drop}", "--drop_partial_blocks", str(drop).lower()),
            root,
        )
        for drop in (False, True)
    }


def test_long_documents_are_chunked_not_dropped_and_every_token_is_trained(runs, corpus):
    result, _ = runs[False]
    out = result.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["dropped"] == {} and manifest["data"]["n_source_rows"] == N_DOCS

    train, held = _split(corpus, out)
    stream = [t for ids in train for t in ids]  # documents + EOS separators, training split, file order
    blocks = result.trainer.train_dataset["input_ids"]
    sizes = [len(b) for b in blocks]
    # Every block is full but the last; together they are exactly the training documents, in order, so no
    # held-out document's token reached training.
    assert all(n == LENGTH for n in sizes[:-1]) and 0 < sizes[-1] < LENGTH
    assert [t for b in blocks for t in b] == stream
    assert not any(ids[:LENGTH] == b for ids in held for b in blocks)

    m = result.metrics
    assert m["tokens_trained"] == len(stream) == m["corpus_tokens"]  # the Trainer's own counter, exact
    assert m["train_blocks"] == len(blocks) == -(-len(stream) // LENGTH)
    assert manifest["data"]["corpus_tokens"] == len(stream) and manifest["metrics"]["tokens_trained"] == len(
        stream
    )
    assert manifest["data"]["partial_block"] == "kept"
    assert "eval_loss" in m  # the held-out documents, chunked the same way
    assert f"trained on {len(stream):,} tokens" in pretrain.summary(result)


def test_drop_partial_blocks_drops_exactly_the_short_block(runs, corpus):
    kept, dropped = runs[False][0], runs[True][0]
    partial = kept.metrics["partial_block_tokens"]
    assert partial == kept.metrics["corpus_tokens"] % LENGTH > 0
    assert kept.metrics["tokens_trained"] - dropped.metrics["tokens_trained"] == partial
    assert dropped.metrics["train_blocks"] == kept.metrics["train_blocks"] - 1
    assert all(len(b) == LENGTH for b in dropped.trainer.train_dataset["input_ids"])
    assert dropped.manifest["data"]["partial_block"] == "dropped"


def test_streaming_reads_the_corpus_lazily(tmp_path, tiny_llama, corpus, monkeypatch):
    import datasets

    from hftune.data import sources

    whole_reads = []
    for name in ("read_text", "read_bytes"):
        original = getattr(Path, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if self == corpus["path"]:
                whole_reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, spy)
    monkeypatch.setattr(sources, "read_file", lambda *a, **k: whole_reads.append("read_file"))

    steps, batch = 3, 4
    out = tmp_path / "streamed"
    argv = _argv(tiny_llama, corpus, out, "--dataset_streaming", "true", "--max_steps", str(steps))
    argv += ["--per_device_train_batch_size", str(batch)]
    result = pretrain.run(pretrain.parse(CONFIG, argv))
    assert not whole_reads, "the streamed corpus was read whole"
    assert isinstance(result.trainer.train_dataset, datasets.IterableDataset)

    assert result.metrics["tokens_trained"] == steps * batch * LENGTH
    train, _ = _split_streamed(corpus, result.output_dir)
    stream = [t for ids in train for t in ids]
    first = [t for block in result.trainer.train_dataset.take(steps * batch) for t in block["input_ids"]]
    assert first == stream[: steps * batch * LENGTH]  # full blocks of training documents, in file order
    assert "eval_loss" not in result.metrics  # streaming computes none (see drop_partial_blocks' help)


def _split_streamed(corpus: dict, out: Path) -> tuple[list[list[int]], list[list[int]]]:
    """Streaming lists the documents it read: held-out ones are skipped, never trained."""
    from hftune.data.prompt_keys import is_held_out, prompt_key

    record = json.loads((out / "prompts.json").read_text())
    keys = [prompt_key(doc) for doc in corpus["docs"]]
    held = {key for key in keys if is_held_out(key, 0.1, record["seed"])}
    assert held and set(record["held_out"]) <= held and not set(record["trained"]) & held
    assert set(record["trained"]) == {key for key in keys if key not in held}  # read ahead into the packer
    train = [ids for key, ids in zip(keys, corpus["ids"], strict=True) if key not in held]
    return train, [ids for key, ids in zip(keys, corpus["ids"], strict=True) if key in held]


def test_streaming_without_max_steps_is_refused(tmp_path, tiny_llama, corpus, capsys):
    argv = ["pretrain", "--config", CONFIG]
    argv += _argv(tiny_llama, corpus, tmp_path / "out", "--dataset_streaming", "true", "--max_steps", "-1")
    refused(argv, tmp_path, capsys, mentions=["max_steps", "dataset_streaming"])


@pytest.mark.parametrize("drop", [False, True])
def test_short_blocks_of_each_packed_batch_become_one(drop):
    """TRL packs 1,000 documents at a time, leaving a short block after each group: the stage packs those
    again (with TRL's pack_dataset) so only the last block is short, and no token is lost or reordered
    within a block."""
    from types import SimpleNamespace

    import datasets

    sizes, counter = [LENGTH, LENGTH, 5, LENGTH, 7, LENGTH, 3], iter(range(10**6))
    ids = [[next(counter) for _ in range(n)] for n in sizes]
    blocks = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    trainer = SimpleNamespace(train_dataset=blocks)
    cfg = SimpleNamespace(
        training=SimpleNamespace(max_length=LENGTH), hftune=SimpleNamespace(drop_partial_blocks=drop)
    )
    info = pretrain._whole_blocks(trainer, cfg)
    out = [len(b) for b in trainer.train_dataset["input_ids"]]
    assert info["corpus_tokens"] == sum(sizes) and info["partial_block_tokens"] == 15
    assert out == [LENGTH] * 4 + ([] if drop else [15])
    kept = sorted(t for b in trainer.train_dataset["input_ids"] for t in b)
    everything = sorted(t for i in ids for t in i)
    assert (
        kept == everything if not drop else len(kept) == len(everything) - 15 and set(kept) < set(everything)
    )
