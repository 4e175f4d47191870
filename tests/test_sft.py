"""The SFT stage end to end on a tiny local model: loss falls, the saved adapter reproduces the model,
labels cover exactly the assistant turns, bad rows are dropped and counted, and nothing secret leaks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hftune.errors import UserError
from hftune.models import loading
from hftune.models.tokenizer import load_tokenizer
from hftune.stages import causal_lm, common, sft

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "T3stT0ken" * 4  # looks like a real token, so both redaction paths are exercised


def probe_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "12 + 30 = 42."}],
        tokenize=False,
    )
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def assert_reload_matches(result, model_args) -> None:
    out = result.output_dir
    trained = result.trainer.model.eval()
    ids = probe_ids(result.trainer.processing_class)
    with torch.no_grad():
        expected = trained(input_ids=ids.to(trained.device)).logits.float().cpu()
        reloaded = loading.load_model(str(out), model_args, for_training=False).eval()
        got = reloaded(input_ids=ids.to(reloaded.device)).logits.float().cpu()
    diff = (expected - got).abs().max().item()
    assert diff < 1e-4, f"reloaded adapter logits differ by {diff}"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("sft") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", TOKEN)
    try:
        cfg = sft.parse(str(REPO / "configs/tiny/sft.yaml"), ["--output_dir", str(out)])
        result = sft.run(cfg)
    finally:
        mp.undo()
    return result


def test_lora_loss_falls(lora_run):
    m = lora_run.metrics
    assert m["eval_loss"] < 0.7 * m["eval_loss_before"], m
    assert m["global_step"] == 30
    # The "before" loss is the step-0 evaluation of the training loop (the model as loaded).
    first = next(e for e in lora_run.trainer.state.log_history if "eval_loss" in e)
    assert first["step"] == 0 and first["eval_loss"] == m["eval_loss_before"]
    # How it ran, read from accelerate's state: the manifest says so.
    run = lora_run.manifest["run"]
    assert run == {"processes": 1, "engine": "one process", "mixed_precision": "no", "device": "cpu"}


def test_lora_reload_reproduces_logits(lora_run):
    from trl import ModelConfig

    assert_reload_matches(lora_run, ModelConfig(dtype="auto"))


def test_lora_trains_the_adapter_and_leaves_base_weights_alone(lora_run, tiny_llama):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    trained = lora_run.trainer.model
    changed_lora = 0
    for name, param in trained.named_parameters():
        if "lora_" in name:
            changed_lora += int(param.abs().sum() > 0 and "lora_B" in name)
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach().cpu(), base[key]), f"base weight {key} changed"
    assert changed_lora > 0, "LoRA B matrices start at zero and must have been trained"


def test_output_folder_is_complete_and_safe(lora_run):
    out = lora_run.output_dir
    names = {p.name for p in out.iterdir()}
    for required in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.hftune.yaml",
        "metrics.json",
        "manifest.json",
    ):
        assert required in names, f"{required} missing from {sorted(names)}"
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names), names
    assert "README.md" not in names, "no placeholder model card"
    assert not (out.parent / "out.work").exists(), "work dir must be removed after success"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["data"]["fingerprint"]
    assert manifest["parents"][0]["role"] == "base_model"
    # The chat template travels with the adapter, so later stages render prompts the same way.
    tok = load_tokenizer(str(out))
    assert tok.chat_template == lora_run.trainer.processing_class.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token != tok.eos_token


def test_no_secret_in_any_output_file(lora_run):
    for path in lora_run.output_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"token found in {path}"


def multi_turn_config(tmp_path, rows: list[dict]) -> sft.StageConfig:
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sft.parse(
        str(REPO / "configs/tiny/sft.yaml"),
        [
            "--data_recipe",
            "tiny_ultrachat",
            "--data_files",
            str(data),
            "--eval_fraction",
            "0",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_samples",
            "100",
        ],
    )


CHAT = {
    "prompt": "What is 2 + 2?",
    "prompt_id": "x",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "3 + 3 = 6."},
    ],
}


def test_one_seed_gives_byte_identical_lora_adapters_whatever_ran_before(tmp_path, tiny_llama):
    """The LoRA adapter is initialised from the run's seed, not from the random state earlier work left."""
    adapters = []
    for earlier in (1, 2):
        torch.manual_seed(earlier)  # as if other work had drawn random numbers before this run
        out = tmp_path / f"run{earlier}"
        argv = ["--output_dir", str(out), "--max_steps", "2", "--max_samples", "32", "--eval_fraction", "0"]
        sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
        adapters.append((out / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]


def test_labels_cover_exactly_assistant_turns_and_their_eos(tmp_path, tiny_llama):
    short = {**CHAT, "messages": CHAT["messages"][1:3]}
    prepared = sft.prepare(multi_turn_config(tmp_path, [CHAT, short]))
    tok = prepared.tokenizer
    eos = tok.eos_token_id
    row = prepared.trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    # Trained spans, decoded, are exactly each assistant reply followed by the end-of-turn token.
    spans, current = [], []
    for token_id, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token_id
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tok.decode(s) for s in spans] == ["2 + 2 = 4.<|im_end|>", "3 + 3 = 6.<|im_end|>"]
    assert all(s[-1] == eos for s in spans)
    # System and user text never appears among the trained tokens.
    trained_text = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert "terse" not in trained_text and "And 3" not in trained_text

    # Padding in a batch is masked too, and pads with the pad token (not eos).
    batch = prepared.trainer.data_collator([prepared.trainer.train_dataset[i] for i in range(2)])
    lengths = [len(prepared.trainer.train_dataset[i]["input_ids"]) for i in range(2)]
    short_i = lengths.index(min(lengths))
    pad_region = slice(min(lengths), max(lengths))
    assert (batch["labels"][short_i, pad_region] == -100).all()
    assert (batch["input_ids"][short_i, pad_region] == tok.pad_token_id).all()
    assert tok.pad_token_id != eos


def test_bad_rows_are_dropped_counted_and_recorded(tmp_path, tiny_llama):
    from hftune.data import load_recipe, prepare_dataset

    bad = REPO / "data_recipes/fixtures/bad_rows.jsonl"
    cfg = sft.parse(
        str(REPO / "configs/tiny/sft.yaml"),
        [
            "--data_files",
            str(bad),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--eval_fraction",
            "0",
            "--max_samples",
            "null",
        ],
    )
    result = sft.run(cfg)
    data = result.manifest["data"]
    expected = prepare_dataset(
        load_recipe("tiny_alpaca"),
        tokenizer=result.trainer.processing_class,
        max_length=cfg.training.max_length,
        data_files=str(bad),
    )
    assert data["dropped"] == expected.dropped and sum(data["dropped"].values()) >= 3
    assert len(data["dropped"]) >= 3, "bad_rows.jsonl exercises several drop reasons"
    assert data["n_train"] == data["n_source_rows"] - sum(data["dropped"].values())


def test_packing_is_accepted_where_packed_rows_stay_apart(tmp_path, tiny_llama):
    # sdpa without the KV cache (how training runs) honours the position-id resets of TRL's BFD packing.
    cfg = sft.parse(
        str(REPO / "configs/tiny/sft.yaml"),
        [
            "--packing",
            "true",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "4",
            "--max_samples",
            "64",
        ],
    )
    prepared = sft.prepare(cfg)
    train = prepared.trainer.train_dataset
    assert "seq_lengths" in train.column_names or "position_ids" in train.column_names, train.column_names
    assert len(train) < len(prepared.data.train)  # rows were packed together
    metrics = causal_lm.train(prepared.trainer, prepared.checkpoint)
    assert metrics["train_loss"] > 0 and metrics["global_step"] == 4


def test_packing_refused_when_attention_would_cross_examples(chat_tokenizer):
    import torch

    from hftune.stages.causal_lm import check_packing_isolation

    class Leaky(torch.nn.Module):
        """Each position sees every earlier token, whatever the position ids say (a kernel that ignores
        packing boundaries)."""

        device = torch.device("cpu")
        config = SimpleNamespace(_attn_implementation="leaky")

        def forward(self, input_ids, position_ids=None, use_cache=None):
            logits = torch.cumsum(torch.nn.functional.one_hot(input_ids, 1024).float(), dim=1)
            return SimpleNamespace(logits=logits)

    with pytest.raises(UserError, match="attend to each other"):
        check_packing_isolation(Leaky(), chat_tokenizer)


def test_padding_free_batches_are_probed_like_packing(tmp_path, tiny_llama, monkeypatch):
    # Padding-free rows lie end to end like packed ones: a kernel that lets them see each other is refused.
    seen = []

    def leaky(model, tokenizer, what="packing"):
        seen.append(what)
        raise UserError(f"{what}: packed examples attend to each other")

    monkeypatch.setattr(causal_lm, "check_packing_isolation", leaky)
    argv = ["--padding_free", "true", "--output_dir", str(tmp_path / "out"), "--max_samples", "16"]
    with pytest.raises(UserError, match="padding_free"):
        sft.prepare(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    assert seen == ["padding_free"]


def test_interrupted_run_leaves_no_artifact_and_resumes(tmp_path, tiny_llama, monkeypatch):
    from transformers import Trainer

    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--max_steps", "6", "--save_steps", "3", "--eval_fraction", "0"]
    real_step = Trainer.training_step
    calls = {"n": 0}

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv))
    assert not out.exists(), "a crashed stage must not leave a folder that looks complete"
    assert (tmp_path / "out.work" / "checkpoint-3").is_dir()

    calls["n"] = 0
    result = sft.run(sft.parse(str(REPO / "configs/tiny/sft.yaml"), argv), resume=True)
    assert calls["n"] == 3, "resume continues from step 3 rather than starting again"
    assert result.metrics["global_step"] == 6
    assert (out / "manifest.json").is_file()


@pytest.mark.slow
def test_qlora_4bit_on_cpu(tmp_path, tiny_llama):
    from trl import ModelConfig

    cfg = sft.parse(str(REPO / "configs/tiny/sft_qlora.yaml"), ["--output_dir", str(tmp_path / "out")])
    result = sft.run(cfg)
    model = result.trainer.model
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    m = result.metrics
    assert m["eval_loss"] < 0.7 * m["eval_loss_before"], m
    assert_reload_matches(result, ModelConfig(dtype="auto", load_in_4bit=True, use_peft=True))


def test_rows_trl_drops_after_truncation_are_counted():

    data = SimpleNamespace(train=list(range(10)), dropped={"too_long": 2})
    trainer = SimpleNamespace(train_dataset=list(range(7)))
    common.count_rows_trl_dropped(trainer, data, SimpleNamespace(packing=False))
    assert data.dropped == {"too_long": 2, "no_trained_tokens_after_truncation": 3}
    with pytest.raises(UserError, match="no training rows left"):
        common.count_rows_trl_dropped(SimpleNamespace(train_dataset=[]), data, SimpleNamespace(packing=False))


def test_preference_data_is_refused_for_sft(tmp_path, tiny_llama):
    cfg = sft.parse(
        str(REPO / "configs/tiny/sft.yaml"),
        ["--data_recipe", "tiny_preferences", "--output_dir", str(tmp_path / "out")],
    )
    with pytest.raises(UserError, match="not SFT data"):
        sft.prepare(cfg)
