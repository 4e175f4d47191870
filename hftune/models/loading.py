"""Loading models: Hub ids, local folders, LoRA adapter folders, tiny models.

One path for all of them, so tests on tiny local models exercise the code users run on Hub models.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from hftune.artifacts import manifest_sha256, read_json_object
from hftune.errors import UserError
from hftune.models import cache
from hftune.models.tiny import TINY_PREFIX, resolve_tiny

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """What a `model_name_or_path` points at: a base model plus the chain of adapter folders on top of it
    (innermost first), e.g. base -> SFT adapter -> reward-model adapter."""

    base: str
    adapters: tuple[str, ...] = ()

    @property
    def adapter(self) -> str | None:
        return self.adapters[-1] if self.adapters else None

    @property
    def tokenizer_path(self) -> str:
        # An adapter folder written by hftune carries the tokenizer and chat template it was trained with.
        for folder in reversed(self.adapters):
            if (Path(folder) / "tokenizer_config.json").is_file():
                return folder
        return self.base

    @property
    def is_reward_model(self) -> bool:
        """A sequence-classification model (a reward model), as an adapter or a full model."""
        if self.adapters:
            return _adapter_config(Path(self.adapters[-1])).get("task_type") == "SEQ_CLS"
        config = Path(self.base) / "config.json"
        if config.is_file():
            architectures = read_json_object(config).get("architectures") or []
            return any(a.endswith("ForSequenceClassification") for a in architectures)
        return False


_MAX_ADAPTER_CHAIN = 8


def _adapter_config(folder: Path) -> dict:
    return read_json_object(folder / "adapter_config.json")


def _check_base_unchanged(adapter: Path, base: Path) -> None:
    """An adapter trained on top of another hftune artifact (a reward adapter on its SFT folder) only
    reproduces what it learnt on that exact artifact: refuse a base that was re-trained since."""
    own, theirs = adapter / "manifest.json", base / "manifest.json"
    if not (own.is_file() and theirs.is_file()):
        return
    base_manifest = read_json_object(theirs)
    digest = manifest_sha256(base)
    parents = read_json_object(own).get("parents")
    for parent in parents if isinstance(parents, list) else []:
        if (
            isinstance(parent, dict)
            and parent.get("stage") == base_manifest.get("stage")
            and parent.get("manifest_sha256")
            not in (
                None,
                digest,
            )
        ):
            raise UserError(
                f"{adapter} was trained on top of {base}, which has changed since (its manifest differs): "
                f"retrain {adapter} on the new {base_manifest.get('stage')} output, or restore the old one"
            )


def resolve_source(name_or_path: str, _depth: int = 0) -> ModelSource:
    if name_or_path.startswith(TINY_PREFIX):
        return ModelSource(resolve_tiny(name_or_path))
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise UserError(f"model_name_or_path: {path} is a file; expected a model folder or a Hub id")
    if path.is_dir():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.is_file():
            base = _adapter_config(path).get("base_model_name_or_path")
            if not base:
                raise UserError(f"{adapter_cfg}: adapter names no `base_model_name_or_path`")
            if _depth >= _MAX_ADAPTER_CHAIN:
                raise UserError(
                    f"{adapter_cfg}: adapters name each other as base more than "
                    f"{_MAX_ADAPTER_CHAIN} deep (a cycle?)"
                )
            inner = resolve_source(base, _depth + 1)
            _check_base_unchanged(path, Path(base))
            return ModelSource(inner.base, (*inner.adapters, str(path)))
        if not (path / "config.json").is_file():
            raise UserError(f"model_name_or_path: {path} has neither config.json nor adapter_config.json")
        return ModelSource(str(path))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"model_name_or_path: folder not found: {name_or_path}")
    return ModelSource(name_or_path)


_WARNED_REMOTE_CODE: set[str] = set()


def warn_remote_code(name_or_path: str) -> None:
    """With `trust_remote_code: true`, transformers imports and runs Python files shipped with the model:
    say so once per model, naming it, where hftune loads one (model or tokenizer)."""
    if name_or_path in _WARNED_REMOTE_CODE:
        return
    _WARNED_REMOTE_CODE.add(name_or_path)
    logger.warning(
        "trust_remote_code is on: loading %s runs the Python code that comes with it, with your permissions "
        "and access to this machine. Keep it on only for a model whose code you trust (pin "
        "`model_revision` to a commit you have read)",
        name_or_path,
    )


def auto_dtype(requested: str | None) -> torch.dtype | str:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU training in bf16 is slow and lossy)."""
    if requested not in (None, "auto"):
        return getattr(torch, requested) if isinstance(requested, str) else requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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
    from transformers import AutoModelForCausalLM

    source = resolve_source(name_or_path)
    if source.is_reward_model:
        raise UserError(
            f"{name_or_path} is a reward model (sequence classification), not a language model; "
            "use it as `reward_model_path`, or point `model_name_or_path` at the SFT output"
        )
    return _load(
        AutoModelForCausalLM,
        source,
        model_args,
        trust_remote_code=trust_remote_code,
        for_training=for_training,
        gradient_checkpointing=gradient_checkpointing,
    )


def load_reward_model(
    name_or_path: str,
    model_args,
    *,
    trust_remote_code: bool = False,
    for_training: bool = False,
    gradient_checkpointing: bool = False,
):
    """A reward model: a sequence classifier with one output. From a saved reward model (full, or a
    LoRA adapter with its score head) it reproduces the saved scores; from a language model (base, SFT
    adapter folder, merged SFT model) the SFT weights are merged in and a fresh score head is added."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_source(name_or_path)
    model = _load(
        AutoModelForSequenceClassification,
        source,
        model_args,
        trust_remote_code=trust_remote_code,
        for_training=for_training,
        gradient_checkpointing=gradient_checkpointing,
        num_labels=1,
    )
    if model.config.num_labels != 1:
        raise UserError(f"{name_or_path} has {model.config.num_labels} outputs; a reward model has one")
    return model


def quantized_training(folder: Path) -> str | None:
    """'4-bit' / '8-bit' when the adapter was trained on a quantized base, from its resolved config (or, for
    adapters written elsewhere, a quantization flag in adapter_config.json)."""
    for name in ("config.hftune.yaml", "adapter_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".yaml"):
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, yaml.YAMLError) as err:
                raise UserError(f"{path}: not a readable YAML file ({err})") from None
        else:
            config = read_json_object(path)
        config = config if isinstance(config, dict) else {}
        if config.get("load_in_4bit"):
            return "4-bit"
        if config.get("load_in_8bit"):
            return "8-bit"
    return None


def _load(
    auto_cls,
    source: ModelSource,
    model_args,
    *,
    trust_remote_code: bool,
    for_training: bool,
    gradient_checkpointing: bool,
    merge_all: bool = False,
    **extra,
):
    from peft import PeftModel
    from trl import get_quantization_config

    dtype = auto_dtype(model_args.dtype)
    model_args.dtype = dtype  # TRL reads it for the 4-bit compute dtype
    quant = get_quantization_config(model_args)
    kwargs = dict(
        dtype=dtype,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        **extra,
    )
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = kbit_device_map()
    if trust_remote_code:
        warn_remote_code(source.base)
    try:
        with _quiet_new_score_head():
            model = auto_cls.from_pretrained(source.base, **kwargs)
    except OSError as err:
        raise UserError(f"could not load model {source.base!r}: {err}") from None
    except pickle.UnpicklingError:
        # torch refuses (weights_only) a pickle that holds more than tensors: it could run code when loaded.
        found = sorted(p.name for p in Path(source.base).glob("*.bin")) if Path(source.base).is_dir() else []
        raise UserError(
            f"could not load model {source.base!r}: {', '.join(found) or 'its weights file'} is a pickle "
            "that holds Python objects besides weights, and unpickling those can run code, so it was not "
            "loaded. Convert the model to safetensors where you trust the file (`save_pretrained` writes "
            "safetensors)."
        ) from None

    if quant is not None:
        _disable_bnb_cpu_inference_packing(model)
    for i, folder in enumerate(source.adapters):
        last = i == len(source.adapters) - 1 and not merge_all
        if quant is not None and (for_training or not last):
            raise UserError(
                f"{folder} is a LoRA adapter; merge it into its base first before loading that base "
                "quantized (merging into 4/8-bit weights loses precision)"
            )
        model = PeftModel.from_pretrained(
            model, folder, is_trainable=False, config=_adapter_for(model, folder)
        )
        _keep_saved_adapter_dtype(model, Path(folder))
        if quant is None and (for_training or not last) and (bits := quantized_training(Path(folder))):
            logger.warning(
                "%s was trained on a %s base (QLoRA); merging it into the full-precision base for this "
                "stage, an approximation of the trained model (as `hftune merge --from-full-precision`)",
                folder, bits,
            )  # fmt: skip
        if for_training or not last:
            # Inner adapters (an SFT adapter under a reward adapter) and adapters that more LoRA will be
            # trained on become part of the weights.
            model = model.merge_and_unload()
    if quant is None and for_training and source.adapters:
        # PeftModel.from_pretrained froze every weight, and merging keeps them frozen: unfrozen, they are
        # what this stage trains (in full; a new LoRA adapter freezes them again). Left frozen, full
        # fine-tuning on top of an adapter trained nothing and saved the merged weights unchanged.
        model.requires_grad_(True)
    if quant is not None and for_training:
        # Imported here, in the quantised branch only, like everything of bitsandbytes' (test_imports.py).
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def load_adapter_group(
    source: ModelSource, adapters: dict[str, str], model_args, *, trust_remote_code: bool = False
):
    """One causal LM for several variants: `source` (its own adapter chain merged in) with each folder of
    `adapters` attached under its name, for inference. `model.set_adapter(name)` picks a variant and
    `model.disable_adapter()` gives `source` itself, so variants that share weights are held once."""
    from transformers import AutoModelForCausalLM

    model = _load(
        AutoModelForCausalLM,
        source,
        model_args,
        trust_remote_code=trust_remote_code,
        for_training=False,
        gradient_checkpointing=False,
        merge_all=True,
    )
    if not adapters:
        return model.eval()
    from peft import PeftModel

    for i, (name, folder) in enumerate(adapters.items()):
        if i == 0:
            model = PeftModel.from_pretrained(model, folder, adapter_name=name, is_trainable=False)
        else:
            model.load_adapter(folder, adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        _keep_saved_adapter_dtype(model, Path(folder))
    return model.eval()


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


def source_fingerprint(source: ModelSource) -> str:
    return cache.key([cache.fingerprint(source.base), *(cache.fingerprint(a) for a in source.adapters)])


def load_variants(
    paths: dict[str, str], model_args, *, trust_remote_code: bool = False
) -> dict[str, ModelVariant]:
    """Load `name -> model path` for inference, so that variants sharing weights share memory: variants
    whose models differ only by their last LoRA adapter are one model, the shared weights (with any inner
    adapters merged) plus each variant's adapter under its own name. A variant is picked with
    `set_adapter`, and the variant that *is* the shared weights (the SFT model under a PPO adapter, the base
    under an SFT adapter) runs with `disable_adapter()`, never by loading a second copy."""
    groups: dict[ModelSource, dict[str, str | None]] = {}
    sources = {name: resolve_source(path) for name, path in paths.items()}
    for name, source in sources.items():
        # The shared part is everything but the last adapter; a variant without adapters is the shared
        # part itself (adapters off).
        shared = ModelSource(source.base, source.adapters[:-1])
        groups.setdefault(shared, {})[name] = source.adapter
    variants: dict[str, ModelVariant] = {}
    for shared, members in groups.items():
        adapters = {name: folder for name, folder in members.items() if folder is not None}
        model = load_adapter_group(shared, adapters, model_args, trust_remote_code=trust_remote_code)
        if len(members) > 1:
            logger.info("variants %s share one model in memory (adapters switched)", ", ".join(members))
        for name, folder in members.items():
            variants[name] = ModelVariant(
                name, model, name if folder else None, source_fingerprint(sources[name])
            )
    return variants


def _adapter_for(model, folder: str):
    """The adapter's PEFT config, fitted to the model it goes on. An SFT (causal LM) adapter put under a
    reward model's score head is plain LoRA on the shared backbone: PEFT's causal-LM wrapper would expect
    generation methods a sequence classifier does not have."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(folder)
    is_classifier = type(model).__name__.endswith("ForSequenceClassification")
    if is_classifier and config.task_type == "CAUSAL_LM":
        if config.modules_to_save:
            raise UserError(
                f"{folder} also trains {config.modules_to_save} in full, which a reward model does not have; "
                "merge that adapter into its base first and start the reward model from the merged model"
            )
        config.task_type = None
    return config


@contextlib.contextmanager
def _quiet_new_score_head():
    """A reward model built from a language model gets a new score head; transformers warns about it at
    length, though it is exactly what is meant (TRL's RewardTrainer silences it the same way)."""
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # TRL moved it: the warning is noise, not a failure
        suppress_seqcls_warning = contextlib.nullcontext
    with suppress_seqcls_warning():
        yield


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
