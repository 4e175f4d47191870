"""Loading models and tokenizers: Hub ids, local folders, LoRA adapter folders, tiny models.

One path for all of them, so tests on tiny local models exercise the code users run on Hub models.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hftune.errors import UserError
from hftune.templates import BUILTIN_TEMPLATES, resolve_chat_template
from hftune.tiny import TINY_PREFIX, resolve_tiny

logger = logging.getLogger(__name__)

# Pad tokens that many tokenizers ship but do not declare as pad.
_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<|fim_pad|>")


@dataclass
class ModelSource:
    """What a `model_name_or_path` points at: a base model, plus an adapter folder if it is one."""

    base: str
    adapter: str | None = None

    @property
    def tokenizer_path(self) -> str:
        # An adapter folder written by hftune carries the tokenizer and chat template it was trained with.
        if self.adapter and (Path(self.adapter) / "tokenizer_config.json").is_file():
            return self.adapter
        return self.base


def resolve_source(name_or_path: str) -> ModelSource:
    if name_or_path.startswith(TINY_PREFIX):
        return ModelSource(resolve_tiny(name_or_path))
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise UserError(f"model_name_or_path: {path} is a file; expected a model folder or a Hub id")
    if path.is_dir():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.is_file():
            base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise UserError(f"{adapter_cfg}: adapter names no `base_model_name_or_path`")
            return ModelSource(resolve_source(base).base, str(path))
        if not (path / "config.json").is_file():
            raise UserError(f"model_name_or_path: {path} has neither config.json nor adapter_config.json")
        return ModelSource(str(path))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"model_name_or_path: folder not found: {name_or_path}")
    return ModelSource(name_or_path)


def auto_dtype(requested: str | None) -> torch.dtype | str:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU training in bf16 is slow and lossy)."""
    if requested not in (None, "auto"):
        return getattr(torch, requested) if isinstance(requested, str) else requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_tokenizer(
    name_or_path: str,
    *,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    revision: str = "main",
):
    """Load a tokenizer, set its chat template (config wins) and a pad token distinct from eos."""
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(
            source.tokenizer_path, trust_remote_code=trust_remote_code, revision=revision
        )
    except OSError as err:
        raise UserError(f"could not load a tokenizer from {source.tokenizer_path!r}: {err}") from None

    if chat_template:
        template, end_of_turn = resolve_chat_template(chat_template)
        tok.chat_template = template
        if end_of_turn:
            if end_of_turn not in tok.get_vocab():
                raise UserError(
                    f"chat_template {chat_template!r} needs the token {end_of_turn!r}, which the tokenizer "
                    f"of {name_or_path} does not have; pick a template that uses its own special tokens "
                    "(a Jinja string or .jinja file) or a model that has them"
                )
            # The token that ends an assistant turn is where generation must stop.
            tok.eos_token = end_of_turn
    set_pad_token(tok)
    return tok


def set_pad_token(tok) -> None:
    """pad != eos where possible: a pad that equals eos gets masked out of the labels, so the model
    never learns to stop."""
    if tok.pad_token is not None and tok.pad_token != tok.eos_token:
        return
    vocab = tok.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab and candidate != tok.eos_token:
            tok.pad_token = candidate
            return
    if tok.unk_token is not None and tok.unk_token != tok.eos_token:
        tok.pad_token = tok.unk_token
        return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    logger.warning(
        "tokenizer has no pad token distinct from eos (%r); padding with eos. Labels still keep each eos "
        "that ends a turn, but check generations stop.",
        tok.eos_token,
    )


def chat_template_name(template: str | None) -> str | None:
    for name, (source, _) in BUILTIN_TEMPLATES.items():
        if template == source:
            return name
    return None


def load_model(
    name_or_path: str,
    model_args,
    *,
    trust_remote_code: bool = False,
    for_training: bool = True,
    gradient_checkpointing: bool = False,
):
    """Load a causal LM (optionally 4/8-bit through bitsandbytes); an adapter folder loads its base and
    attaches the adapter, merged when more LoRA will be trained on top."""
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    source = resolve_source(name_or_path)
    dtype = auto_dtype(model_args.dtype)
    model_args.dtype = dtype  # TRL reads it for the 4-bit compute dtype
    quant = get_quantization_config(model_args)
    kwargs = dict(
        dtype=dtype,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = kbit_device_map()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.base, **kwargs)
    except OSError as err:
        raise UserError(f"could not load model {source.base!r}: {err}") from None

    if quant is not None:
        _disable_bnb_cpu_inference_packing(model)
    if source.adapter:
        model = PeftModel.from_pretrained(model, source.adapter, is_trainable=False)
        _keep_saved_adapter_dtype(model, Path(source.adapter))
        if for_training:
            if quant is not None:
                raise UserError(
                    f"{source.adapter} is a LoRA adapter; merge it first (`hftune merge`) before training "
                    "a quantized model on top of it"
                )
            model = model.merge_and_unload()
    if quant is not None and for_training:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def _disable_bnb_cpu_inference_packing(model) -> None:
    """bitsandbytes (0.50) repacks 4-bit weights into a bf16 CPU inference layout the first time a layer
    runs in eval mode without grad (e.g. the pre-training evaluation), and later training steps then run
    through a kernel with no autograd support. Keeping the plain layout makes train, eval and a reload
    compute the same thing."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _keep_saved_adapter_dtype(model, folder: Path) -> None:
    """Run the adapter in the dtype it was trained and saved in.

    TRL trains QLoRA adapters in bf16, while PEFT upcasts adapters to fp32 when it loads them; the
    reloaded model would then compute something slightly different from the trained one."""
    from safetensors import safe_open

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), framework="pt") as f:
        saved = {f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if len(saved) != 1 or next(iter(saved)) not in _SAFETENSORS_DTYPES:
        return
    dtype = _SAFETENSORS_DTYPES[saved.pop()]
    marker = f".{model.active_adapter}."
    for name, param in model.named_parameters():
        if marker in name and param.is_floating_point():
            param.data = param.data.to(dtype)


def kbit_device_map() -> dict[str, int | str]:
    """Quantized weights must be placed at load time: each process on its own GPU, else the CPU."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def lora_config(model_args):
    """TRL's own LoRA config from ModelConfig fields (`lora_r`, `lora_target_modules`, ...)."""
    from trl import get_peft_config

    return get_peft_config(model_args)
