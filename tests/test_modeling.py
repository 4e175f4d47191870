"""Model and tokenizer loading through the same path as Hub ids, on tiny local models."""

from __future__ import annotations

import json

import pytest
import torch

from hftune.errors import UserError
from hftune.models import loading
from hftune.models.templates import CHATML
from hftune.models.tokenizer import load_tokenizer, set_pad_token


def model_args(**kw):
    from trl import ModelConfig

    kw.setdefault("dtype", "auto")
    return ModelConfig(**kw)


def test_tiny_models_of_each_architecture_load_and_take_all_linear_lora(tiny_models):
    from peft import get_peft_model

    for arch, path in tiny_models.items():
        tok = load_tokenizer(path)
        assert tok.chat_template == CHATML
        assert tok.pad_token != tok.eos_token
        model = loading.load_model(path, model_args())
        assert model.dtype == torch.float32  # CPU: fp32 by default
        peft_model = get_peft_model(
            model, loading.lora_config(model_args(use_peft=True, lora_target_modules=["all-linear"]))
        )
        n_lora = sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A"))
        assert n_lora >= 4, f"{arch}: all-linear found only {n_lora} layers"
        # lm_head is never a LoRA target: it would break tied embeddings and the score head later.
        assert not any("lm_head.lora_A" in name for name, _ in peft_model.named_modules()), arch


def test_adapter_folder_loads_its_base_and_adapter(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = loading.load_model(tiny_llama, model_args())
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    src = loading.resolve_source(str(tmp_path / "adapter"))
    assert src.base == tiny_llama and src.adapter == str(tmp_path / "adapter")

    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        reloaded = loading.load_model(str(tmp_path / "adapter"), model_args(), for_training=False)
        got = reloaded(input_ids=ids).logits
        plain = loading.load_model(tiny_llama, model_args())(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(plain, got, atol=1e-3)  # the adapter really changes the model


def test_4bit_loading_on_cpu(tiny_llama):
    model = loading.load_model(tiny_llama, model_args(load_in_4bit=True, use_peft=True))
    assert getattr(model, "is_loaded_in_4bit", False)
    linear4 = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(out).all()


def test_chat_template_from_config(tiny_llama, tmp_path):
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    tok = load_tokenizer(tiny_llama, chat_template=str(jinja))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi\n"
    tok = load_tokenizer(tiny_llama, chat_template="chatml")
    assert tok.eos_token == "<|im_end|>"
    with pytest.raises(UserError, match="chat_template"):
        load_tokenizer(tiny_llama, chat_template="no-such-template")


def test_pad_token_falls_back_distinct_from_eos(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    set_pad_token(tok)
    assert tok.pad_token == "<|pad|>"


def test_bad_model_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        loading.resolve_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"config\.json"):
        loading.resolve_source(str(tmp_path / "empty"))
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(UserError, match="base_model_name_or_path"):
        loading.resolve_source(str(tmp_path / "ad"))


def test_trust_remote_code_is_off_by_default():
    from trl import SFTConfig

    from hftune.stages import sft

    assert SFTConfig.__dataclass_fields__["trust_remote_code"].default is False
    assert "trust_remote_code" not in sft.schema().defaults


def test_tiny_corpus_shipped_with_the_package_is_the_generated_one():
    import synthetic

    from hftune.models.tiny import default_corpus

    # `tiny:ARCH` models learn from package data, so the runtime needs no fixture generator; the file must
    # stay what the generator makes (regenerate: see tests/synthetic.py).
    assert default_corpus() == synthetic.corpus_lines(2000, seed=0)


def test_tokenizer_parity_names_what_differs(tiny_llama, tmp_path):
    from hftune.models.tokenizer import check_same_tokenizer, differences

    a = load_tokenizer(tiny_llama)
    b = load_tokenizer(tiny_llama)
    assert differences(a, b) == []
    b.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    b.pad_token = b.eos_token
    assert differences(a, b) == ["chat template", "pad_token"]
    assert differences(a, b, rendering=False) == []  # a base model: only its vocabulary must match
    with pytest.raises(UserError, match=r"the SFT model and the policy .* their chat template and pad_token"):
        check_same_tokenizer(a, b, "the SFT model", "the policy", fix="retrain")
