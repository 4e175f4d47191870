"""Strict stage configs in TRL's own vocabulary.

A stage config is one flat YAML mapping whose keys are the field names of the stage's TRL config
(`SFTConfig`, ...), of TRL's `ModelConfig`, and of a small hftune dataclass for what TRL lacks. Flags on
the command line (`--learning_rate 1e-4`) override the file. Every problem — unknown key, wrong type,
secret, impossible combination — is collected and reported at once, each with its source and key.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from hftune.errors import UserError, did_you_mean
from hftune.yaml_loading import cut, load_yaml, load_yaml_mapping, yaml_problem  # noqa: F401 (re-exported)

# Key names that carry credentials. The Hub token is read from HF_TOKEN or the login cache only, so a
# config that names one is refused rather than silently ignored or, worse, saved next to the weights.
_SECRET_KEY = re.compile(
    r"(^|_)(token|hub_token|hf_token|api_key|apikey|access_token|auth_token|password|passwd|secret|credentials?)$"
)
# Fields that end in "token" but hold a vocabulary entry, not a credential.
_NOT_SECRET = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Something that looks like a Hub token in a value (e.g. pasted into a URL or a run name).
_TOKEN_VALUE = re.compile(r"hf_[A-Za-z0-9]{30,}")

# Fields TRL/transformers expose that hftune does not let a config set: hftune owns them.
_OWNED_BY_HFTUNE = {"hub_token", "push_to_hub_token"}


def is_secret_key(key: str) -> bool:
    return key not in _NOT_SECRET and bool(_SECRET_KEY.search(key.lower()))


class ConfigError(UserError):
    """All problems found in one config, reported together."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{n} problem{'s' if n > 1 else ''} in {source}:\n{lines}")


# ---------------------------------------------------------------------------------------------------
# Type checking and coercion against dataclass annotations
# ---------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return origin.__name__
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


_SHOWN = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60
_SHOWN.maxtuple = _SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = 4


def show(value: Any) -> str:
    """`repr(value)` for an error message, cut to about 80 characters. Bounded however big the value is:
    a long string or a deeply nested (aliased) structure never floods the terminal or takes long to print."""
    return cut(_SHOWN.repr(value))


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to annotation `tp`, or raise _Mismatch.

    Lenient only where YAML is surprising: PyYAML reads `1e-4` as a string, so numeric strings are
    accepted for numeric fields; a single string is accepted where a list of strings is expected.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # Try exact-type matches first so `str | int` keeps a string a string.
        for strict_pass in (True, False):
            for arg in args:
                if arg is type(None):
                    continue
                if strict_pass and not _is_exact(value, arg):
                    continue
                try:
                    return coerce(value, arg)
                except _Mismatch:
                    continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str) and item_tp is str:
            return [value]
        if not isinstance(value, list):
            raise _Mismatch
        return [coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value
        except ValueError:
            raise _Mismatch from None
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    # Complex objects (ParallelismConfig, DebugOption lists, ...) are passed through to TRL unchecked.
    return value


def _is_exact(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type) and not issubclass(tp, enum.Enum):
        return isinstance(value, tp)
    return True


# ---------------------------------------------------------------------------------------------------
# Stage schemas
# ---------------------------------------------------------------------------------------------------


@dataclass
class StageSchema:
    """The dataclasses a stage's flat config is split into, and hftune's own defaults."""

    name: str
    classes: dict[str, type]  # section name -> dataclass, e.g. {"training": SFTConfig, ...}
    defaults: dict[str, Any]  # hftune's defaults where they differ from TRL's (documented in --help)
    check: typing.Callable[[dict[str, Any]], list[str]] | None = None  # cross-field rules
    # TRL fields the `hftune` section declares itself, so that one key means the same thing whichever
    # trainer runs (e.g. `kl_coef` for PPO's `kl_coef` and GRPO's `beta`); the stage sets TRL's field.
    owned: frozenset[str] = frozenset()
    # Why a key this stage does not have is not there (e.g. vLLM options under PPO), for its error.
    unknown_key_hint: typing.Callable[[str], str | None] | None = None

    def __post_init__(self):
        # A stage on TRL's configs also takes TRL's ScriptArguments (`dataset_name`, `dataset_streaming`,
        # ...), as `trl sft --config` does, so a config written for TRL's CLI runs unchanged.
        on_trl = any(cls.__module__.startswith("trl.") for cls in self.classes.values())
        if on_trl and "script" not in self.classes:
            from trl import ScriptArguments

            self.classes = {**self.classes, "script": ScriptArguments}

    def skips(self, section: str, name: str) -> bool:
        return name in _OWNED_BY_HFTUNE or (section != "hftune" and name in self.owned)

    def fields(self) -> dict[str, tuple[str, dataclasses.Field, Any]]:
        """key -> (section, field, resolved annotation)."""
        out: dict[str, tuple[str, dataclasses.Field, Any]] = {}
        for section, cls in self.classes.items():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.init and not self.skips(section, f.name):
                    out.setdefault(f.name, (section, f, hints[f.name]))
        return out


@dataclass
class StageConfig:
    """A parsed, validated stage config: one object per section."""

    stage: str
    source: str
    # Never changed once parsed: a stage gives its trainer copies (`stages.common.trainer_args`), so what
    # is saved beside the artifact (`resolved()`) is what was parsed, and parses back to the same config.
    sections: dict[str, Any]
    # `--overwrite`: the run may replace an output folder hftune did not write (a run option, not a setting:
    # it is not saved and does not change what is trained).
    overwrite: bool = False
    # The config file's `env:` block (TRL's CLI convention), already set in os.environ when the config was
    # read. Saved with the config, but not part of what a run computes (see config_hash).
    env: dict[str, str] = field(default_factory=dict)
    # TRL fields that are not config keys (StageSchema.skips: hftune sets them, e.g. GRPO's `beta` from
    # `kl_coef`), left out of `resolved()`: their parsed values are not what trains.
    skipped: frozenset[tuple[str, str]] = frozenset()
    # The keys the parse set (hftune's defaults and the config's values); every other field is TRL's default
    # or derived by TRL from the others while its config was built (see `saved`).
    given: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    @property
    def output_dir(self) -> str:
        """The folder the stage writes (TRL's `output_dir`, or an hftune-only config's: an eval suite's)."""
        return next(
            s.output_dir for s in self.sections.values() if isinstance(getattr(s, "output_dir", None), str)
        )

    def resolved(self) -> dict[str, Any]:
        """Every setting made explicit, secrets removed: what is saved next to the artifact."""
        flat: dict[str, Any] = {"stage": self.stage}
        # hftune's section first: where it owns a TRL field (StageSchema.owned), its value is the real one.
        for section, obj in sorted(self.sections.items(), key=lambda item: item[0] != "hftune"):
            for key, value in _field_values(obj).items():
                if (section, key) not in self.skipped:
                    flat.setdefault(key, value)
        if self.env:
            flat["env"] = dict(self.env)
        return strip_secrets(_jsonable(flat))

    def saved(self) -> dict[str, Any]:
        """What config.hftune.yaml holds, and parses back to this very config: `resolved()` less the values
        TRL derived from others while building its config (`logging_dir` from `output_dir`, GRPO's
        `generation_batch_size` from `steps_per_generation`): parsing recomputes them, and TRL refuses some
        of them set beside what they derive from."""
        derived = {
            f.name
            for obj in self.sections.values()
            for f in dataclasses.fields(obj)
            if f.init and f.name not in self.given and getattr(obj, f.name) != _default(f)
        }
        return {k: v for k, v in self.resolved().items() if k not in derived}

    def config_hash(self, ignore: tuple[str, ...] = ("output_dir", "logging_dir", "run_name", "env")) -> str:
        """Hash of the resolved config; the paths a run writes to, and the speed switches that compute the
        same (SAME_RESULT_SWITCHES), do not change what it computes."""
        ignore = (*ignore, *SAME_RESULT_SWITCHES)
        data = {k: v for k, v in self.resolved().items() if k not in ignore}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _field_values(obj: Any) -> dict[str, Any]:
    """A section's settings as set. Not transformers' `to_dict`, which writes every `*_token` field as a
    placeholder (`pad_token: <PAD_TOKEN>`), a value the config never had; secrets go in `strip_secrets`."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # accelerate's AcceleratorConfig
            value = dataclasses.asdict(value)
        elif hasattr(value, "to_json"):  # transformers' ParallelismConfig
            value = value.to_json()
        out[f.name] = value
    return out


# Settings that make a run faster without changing what it computes (measured: `data_cache` reads back the
# same rows, `freeze_gc` trains to identical metrics, `tokenize_once` gives TRL identical labels), left out
# of the config hash so that switching one neither re-runs a pipeline stage nor refuses a resume.
SAME_RESULT_SWITCHES = ("data_cache", "freeze_gc", "tokenize_once")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def strip_secrets(data: Any) -> Any:
    """Drop secret-named keys and redact anything that looks like (or is) the live Hub token."""
    live = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if isinstance(data, dict):
        return {k: strip_secrets(v) for k, v in data.items() if not is_secret_key(str(k))}
    if isinstance(data, list):
        return [strip_secrets(v) for v in data]
    if isinstance(data, str):
        if live and live in data:
            data = data.replace(live, "<redacted>")
        return _TOKEN_VALUE.sub("<redacted>", data)
    return data


# ---------------------------------------------------------------------------------------------------
# Value rules: settings that are the right type but impossible, refused before anything loads
# ---------------------------------------------------------------------------------------------------

# Fields where `.inf` means something: `max_grad_norm: .inf` is "never clip" (torch's `clip_grad_norm_`
# spelling, which transformers itself uses to measure the norm when clipping is off, as `0` asks). NaN is
# refused everywhere.
INFINITY_ALLOWED = frozenset({"max_grad_norm"})

# A per-device batch (or a count multiplying one) beyond this never fits in memory: a typo (`1e11`),
# refused now rather than after minutes of loading.
MAX_COUNT = 2**20
# numpy (which transformers seeds with the Trainer's `seed`) takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """What a good value of one key is: `ok(value)` for a number (or, with `kind=str`, a string)."""

    ok: typing.Callable[[Any], bool]
    expect: str  # completes "`key`: must be ...", e.g. "positive"
    kind: type = float  # which values the rule looks at (None and other types are the type check's)

    def applies(self, value: Any) -> bool:
        if self.kind is str:
            return isinstance(value, str)
        if self.kind is object:  # a key typed number-or-string: the rule looks at both
            return isinstance(value, str | int | float) and not isinstance(value, bool)
        return isinstance(value, int | float) and not isinstance(value, bool)


def _count(what: str) -> Rule:
    return Rule(lambda v: 1 <= v <= MAX_COUNT, f"{what} from 1 to {MAX_COUNT:,}")


_POSITIVE = Rule(lambda v: v > 0, "positive")
_NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
_PROBABILITY = Rule(lambda v: 0 <= v < 1, "in [0, 1)")
_UNIT = Rule(lambda v: 0 <= v <= 1, "in [0, 1]")
_SEED = Rule(lambda v: 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED} (2**32 - 1)")
# `save_steps: 0.1` is a fraction of the run (TRL's convention), `save_steps: 100` a step count.
_INTERVAL = Rule(lambda v: v > 0, "positive (a number of steps, or a fraction of the run below 1)")

# A run's optimizer steps beyond this are a typo (`max_steps: 1e29`): a billion steps at 100 a second is four
# months of training, and the LR scheduler and the progress bar are sized by the number, so it is refused
# now rather than after the model loads (or as a step count past int64 in torch).
MAX_STEPS = 10**9


def _one_of(*choices: str) -> Rule:
    """A key whose value is one word of a fixed vocabulary (the trainer's own; TRL reads any other word as a
    mistake only once the model is loaded, or not at all)."""
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices), kind=str)


_PORT = Rule(lambda v: 0 <= v <= 65535, "in 0..65535")

# Key -> its rule, applied to whichever keys a stage's schema has: the one home of every bound on a single
# key's value (a stage's own checks hold only rules across keys, e.g. a loss that depends on `algorithm`).
# Every number of the preference and RL trainers' configs has one, or is on the commented list of numbers
# that need none (tests/test_bad_inputs_config.py::test_every_trainer_number_has_a_range).
RANGE_RULES: dict[str, Rule] = {
    # Optimisation: a bad value trains garbage (NaN weights, no update at all) or crashes in torch late.
    "learning_rate": _POSITIVE,
    "beta": _POSITIVE,  # DPO / KTO / ORPO / SimPO's (GRPO's is set from `kl_coef`)
    "kl_coef": _NON_NEGATIVE,
    "max_kl": _POSITIVE,
    "max_drift": _POSITIVE,
    "reward_model_weight": _NON_NEGATIVE,
    "verifier_weight": _NON_NEGATIVE,
    "max_steps": Rule(
        lambda v: v == -1 or 1 <= v <= MAX_STEPS,
        f"a number of steps from 1 to {MAX_STEPS:,}, or -1 (train for `num_train_epochs`)",
    ),
    "num_train_epochs": _POSITIVE,
    "warmup_steps": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "max_grad_norm": Rule(lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    "adam_beta1": _PROBABILITY,
    "adam_beta2": _PROBABILITY,
    "adam_epsilon": _POSITIVE,
    "label_smoothing_factor": _PROBABILITY,
    "neftune_noise_alpha": _NON_NEGATIVE,
    "lora_r": _count("a rank"),
    "lora_alpha": _POSITIVE,
    "lora_dropout": _PROBABILITY,
    # Batches and counts that multiply them.
    "per_device_train_batch_size": _count("a batch size"),
    "per_device_eval_batch_size": _count("a batch size"),
    "gradient_accumulation_steps": _count("a number of steps"),
    "eval_accumulation_steps": _count("a number of steps"),
    "generation_batch_size": _count("a batch size"),
    "local_rollout_forward_batch_size": _count("a batch size"),
    "batch_size": _count("a batch size"),  # the eval suite's
    "steps_per_generation": _count("a number of steps"),
    "num_generations": _count("a number of completions"),
    "num_generations_eval": _count("a number of completions"),
    "num_mini_batches": _count("a number of mini-batches"),
    "num_ppo_epochs": _count("a number of epochs"),
    "num_iterations": _count("a number of iterations"),
    "total_episodes": Rule(lambda v: v >= 1, ">= 1"),
    "response_length": _count("a number of tokens"),
    "max_new_tokens": _count("a number of tokens"),
    "max_length": _count("a number of tokens"),
    "init_vocab_size": _count("a vocabulary size"),
    "init_hidden_size": _count("a size"),
    "init_num_layers": _count("a number of layers"),
    "init_num_heads": _count("a number of heads"),
    "best_of_n": _count("a number of samples"),
    "bootstrap_samples": _count("a number of resamples"),
    "report_bootstrap": Rule(lambda v: v >= 0, ">= 0 (0 turns the report's bootstrap off)"),
    "num_samples": _NON_NEGATIVE,
    "max_prompts": _count("a number of prompts"),
    "heldout_prompts": _count("a number of prompts"),
    # Schedules: a step interval of 0 or below divides by zero or never fires.
    "save_steps": _INTERVAL,
    "logging_steps": _INTERVAL,
    "eval_steps": _INTERVAL,
    "heldout_every": Rule(lambda v: v >= 0, ">= 0 (0 turns the held-out check off)"),
    "heldout_tolerance": _NON_NEGATIVE,
    # Sampling (the RL stages generate with these).
    "temperature": Rule(lambda v: v > 0, "positive (the logits are divided by it)"),
    "top_p": Rule(lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": _NON_NEGATIVE,
    "min_p": _UNIT,
    "gamma": _UNIT,
    "lam": _UNIT,
    "vf_coef": _NON_NEGATIVE,
    "cliprange": _POSITIVE,
    "cliprange_value": _POSITIVE,
    "epsilon": _POSITIVE,
    # Data and reproducibility.
    "seed": _SEED,
    "data_seed": _SEED,
    "split_seed": _SEED,
    "max_samples": Rule(lambda v: v >= 1, ">= 1 (or null for every row)"),
    "eval_fraction": _PROBABILITY,
    "confidence": Rule(lambda v: 0 < v < 1, "in (0, 1)"),
    "port": _PORT,
    "dataloader_num_workers": _NON_NEGATIVE,
    # TRL 1.16 types it `int | str | None` for one string, "auto" (TRL's default: pad to 128 on Neuron only);
    # any other string reached TRL's own `int(value)` and failed with a message naming no key.
    "pad_to_multiple_of": Rule(
        lambda v: (v == "auto" or (v.isdecimal() and int(v) >= 1)) if isinstance(v, str) else v >= 1,
        "a positive number of tokens, `auto` (TRL's default: pad only on AWS Neuron) or null",
        kind=object,
    ),
    # `output_dir: ""` would be the current folder.
    "output_dir": Rule(lambda v: v.strip() != "", "a folder name, not empty", kind=str),
    # TrainingArguments' schedules and limits (every trainer's).
    "eval_delay": _NON_NEGATIVE,
    "save_total_limit": _count("a number of checkpoints"),  # 0 would delete every checkpoint: no resume
    "torch_empty_cache_steps": _count("a number of steps"),
    "dataloader_prefetch_factor": _count("a number of batches"),
    "ddp_bucket_cap_mb": _POSITIVE,
    "ddp_timeout": _POSITIVE,
    "dataset_num_proc": _count("a number of processes"),
    "router_aux_loss_coef": _NON_NEGATIVE,  # MoE load balancing's weight (0: off)
    # Preference optimisation: DPO (TRL's DPOConfig).
    # Robust DPO / cDPO read it as the chance a preference label is flipped: at 0.5 the pair says nothing,
    # above it the loss trains the opposite preference (TRL only warns). CPO's sigmoid loss reads it alike.
    "label_smoothing": Rule(lambda v: 0 <= v < 0.5, "in [0, 0.5) (the chance a preference label is flipped)"),
    "f_divergence_type": _one_of("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"),
    "f_alpha_divergence_coef": Rule(lambda v: 0 < v < 1, "in (0, 1) (the f-DPO paper's alpha-divergence)"),
    "ld_alpha": _UNIT,  # LD-DPO: 1 weighs the verbose tokens fully, 0 masks them
    "discopop_tau": _POSITIVE,  # a temperature: the log-ratio is divided by it
    "precompute_ref_batch_size": _count("a batch size"),
    "ref_model_mixup_alpha": _UNIT,  # TR-DPO: the share of the policy mixed into the reference
    "ref_model_sync_steps": _count("a number of steps"),
    # KTO: weights of the desirable / undesirable losses (a negative one trains the opposite way).
    "desirable_weight": _POSITIVE,
    "undesirable_weight": _POSITIVE,
    # ORPO / CPO / SimPO.
    "max_completion_length": _count("a number of tokens"),
    "padding_value": _NON_NEGATIVE,  # a token id
    "cpo_alpha": _NON_NEGATIVE,  # weight of CPO's SFT term (0: SimPO's reference-free loss alone)
    "simpo_gamma": _NON_NEGATIVE,  # SimPO's target reward margin (a negative margin rewards the rejected)
    # RLOO / GRPO (TRL's), PPO (hftune's).
    "repetition_penalty": _POSITIVE,  # divides the logits of repeated tokens
    "epsilon_high": _POSITIVE,
    "delta": Rule(lambda v: v > 1, "above 1 (two-sided GRPO's upper clip of the policy ratio)"),
    "num_completions_to_print": _count("a number of completions"),
    "max_tool_calling_iterations": _count("a number of turns"),
    "top_entropy_quantile": _UNIT,
    "entropy_coef": _NON_NEGATIVE,
    "entropy_coef_min": _NON_NEGATIVE,
    "entropy_coef_max": _NON_NEGATIVE,
    "entropy_coef_delta": _POSITIVE,
    "entropy_target": _NON_NEGATIVE,  # nats
    "sapo_temperature_pos": _POSITIVE,
    "sapo_temperature_neg": _POSITIVE,
    "vespo_k_pos": _NON_NEGATIVE,
    "vespo_k_neg": _NON_NEGATIVE,
    "vespo_lambda_pos": _NON_NEGATIVE,
    "vespo_lambda_neg": _NON_NEGATIVE,
    "off_policy_mask_threshold": _POSITIVE,
    "scale_rewards": _one_of("group", "batch", "none"),
    "multi_objective_aggregation": _one_of("sum_then_normalize", "normalize_then_sum"),
    "importance_sampling_level": _one_of("token", "sequence"),
    "kl_estimator": _one_of("k1", "k3"),  # hftune's PPO
    # vLLM generation (RLOO / GRPO).
    "vllm_server_port": _PORT,
    "vllm_group_port": _PORT,
    "vllm_server_timeout": _POSITIVE,
    "vllm_max_model_length": _count("a number of tokens"),
    "vllm_tensor_parallel_size": _count("a number of GPUs"),
    "vllm_model_impl": _one_of("vllm", "transformers"),
    "vllm_importance_sampling_mode": _one_of(
        "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"
    ),
    "vllm_importance_sampling_clip_min": _NON_NEGATIVE,
    "vllm_importance_sampling_clip_max": _POSITIVE,
    "vllm_importance_sampling_cap": _POSITIVE,
}


def _non_finite(value: Any) -> bool:
    """Whether a float anywhere in `value` (a number, or inside a list or mapping) is inf or NaN."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, list | tuple | dict) and id(item) not in seen:
            seen.add(id(item))  # aliased YAML shares objects: each is looked at once
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


def value_problem(key: str, value: Any) -> str | None:
    """Why `value` (already of the right type) is impossible for `key`, or None."""
    if _non_finite(value) and not (key in INFINITY_ALLOWED and value == math.inf):
        what = "hold finite numbers only" if isinstance(value, list | tuple | dict) else "be a finite number"
        return f"must {what}, got {show(value)}"
    rule = RANGE_RULES.get(key)
    if rule is not None and rule.applies(value) and not rule.ok(value):
        return f"must be {rule.expect}, got {show(value)}"
    return None


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


def parse_overrides(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--key value`, `--key=value` and bare `--flag` (true) into a dict; values are read as YAML scalars."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            problems.append(f"command line: unexpected argument `{tok}` (flags look like `--key value`)")
            i += 1
            continue
        key, eq, raw = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw = argv[i + 1]
                i += 1
            else:
                raw = "true"
        try:
            values[key] = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            values[key] = raw
        i += 1
    return values, problems


def parse_stage_config(
    schema: StageSchema,
    config_path: str | None,
    argv: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
    source: str | None = None,
) -> StageConfig:
    """Read a stage config file plus flag overrides, validate everything, and build the sections.

    `values` are the file's values already read (the pipeline's merged stage entry): no file is read, and
    `source` names where they came from in every message."""
    if values is not None:
        file_values = dict(values)
    else:
        file_values = load_yaml_mapping(config_path) if config_path else {}
    flag_values, problems = parse_overrides(argv or [])
    source = source or (str(config_path) if config_path else "command line")
    env = _env_block(file_values.pop("env", None), problems) if "env" in file_values else {}
    # A saved config (config.hftune.yaml) names the stage it was made for; it parses back as that stage.
    saved_by = file_values.pop("stage", schema.name)
    if saved_by != schema.name:
        problems.append(f"`stage`: a config saved by the {show(saved_by)} stage, not {schema.name}")
    known = schema.fields()
    coerced: dict[str, Any] = {}

    for origin, values in ((source, file_values), ("command line", flag_values)):
        for key, value in values.items():
            where = f"`{key}`" if origin == source else f"`--{key}` (command line)"
            if not isinstance(key, str):
                problems.append(f"key {show(key)}: keys must be strings")
                continue
            if is_secret_key(key):
                problems.append(
                    f"{where}: secrets do not belong in a config file (it is saved next to the model). "
                    "Set the HF_TOKEN environment variable or run `hf auth login` instead."
                )
                continue
            if isinstance(value, str) and _TOKEN_VALUE.search(value):
                problems.append(f"{where}: the value looks like a Hub token; use HF_TOKEN instead")
                continue
            if key not in known:
                hint = schema.unknown_key_hint(key) if schema.unknown_key_hint else None
                problems.append(
                    f"{where}: unknown key" + (f" ({hint})" if hint else did_you_mean(key, known))
                )
                continue
            _, f, tp = known[key]
            try:
                value = coerce(value, tp)
            except _Mismatch:
                problems.append(f"{where}: expected {_type_name(tp)}, got {show(value)}")
                continue
            choices = f.metadata.get("choices") if f.metadata else None
            if choices and value is not None and value not in choices:
                problems.append(f"{where}: must be one of {', '.join(map(str, choices))}; got {show(value)}")
                continue
            # Right type, impossible value (`learning_rate: .inf`, `max_steps: 0`): refused like a wrong type,
            # so the cross-field checks below see the default instead.
            if (problem := value_problem(key, value)) is not None:
                problems.append(f"{where}: {problem}")
                continue
            coerced[key] = value

    # A copy: TRL and PEFT extend some settings in place (PEFT appends to `lora_modules_to_save`), which must
    # not leak into the next config parsed in this process (a pipeline parses every stage, then runs them).
    merged = {**copy.deepcopy(schema.defaults), **coerced}
    if schema.check:
        # Cross-field rules see the valid values (bad ones fall back to defaults), so one run of the
        # checker reports combination problems alongside unknown keys and wrong types.
        problems.extend(schema.check(merged))
    if problems:
        raise ConfigError(source, problems)
    # Set as soon as the config is read, as TRL's CLI does, so variables that steer loading (HF_HOME,
    # HF_HUB_OFFLINE, CUDA_VISIBLE_DEVICES, ...) apply to everything the run does.
    os.environ.update(env)

    sections: dict[str, Any] = {}
    for section, cls in schema.classes.items():
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {k: v for k, v in merged.items() if k in names and not schema.skips(section, k)}
        try:
            sections[section] = cls(**kwargs)
        except (ValueError, TypeError) as err:
            # TRL/transformers validate combinations in __post_init__; surface them as config errors.
            raise ConfigError(source, [str(err).strip()]) from None
    skipped = frozenset(
        (section, f.name)
        for section, obj in sections.items()
        for f in dataclasses.fields(obj)
        if schema.skips(section, f.name)
    )
    return StageConfig(
        stage=schema.name, source=source, sections=sections, env=env, skipped=skipped, given=frozenset(merged)
    )


def algorithm_given(
    config_path: str | None,
    argv: list[str] | None,
    values: dict[str, Any] | None,
    algorithms: tuple[str, ...],
) -> str:
    """The `algorithm` a config (a file, or `values` already read, then flags) asks for, read before it is
    parsed: the stage's TRL config class depends on it. The first of `algorithms` when unset or unknown (the
    parse then reports a bad value with the others)."""
    given = dict(values) if values is not None else load_yaml_mapping(config_path) if config_path else {}
    given.update(parse_overrides(list(argv or []))[0])
    algorithm = given.get("algorithm", algorithms[0])
    return algorithm if algorithm in algorithms else algorithms[0]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What an `env:` block may set: the variables that steer the Hugging Face stack, the hardware and the run's
# logging, which is what TRL's CLI has the block for. Nothing else: a config is shared and saved with the
# model, and a variable such as LD_PRELOAD, PYTHONPATH or PATH would choose the code that hftune and its own
# launches (torchrun, accelerate) run, with nothing among the config's keys to show it.
_ENV_FAMILIES = (
    *("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TRL_", "ACCELERATE_", "HFTUNE_"),
    *("TORCH_", "NCCL_", "WANDB_"),
)
_ENV_NAMES = frozenset(
    {
        *("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"),
        *("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG"),
        *("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
        *("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ENABLE_MPS_FALLBACK"),
    }
)
# The few in those families that load code, or send a credential or a model somewhere else.
_ENV_NOT_IN_A_CONFIG = {
    "HF_MODULES_CACHE": "transformers imports a model's Python code from it",
    "TORCH_EXTENSIONS_DIR": "torch loads compiled extensions from it",
    "HF_ENDPOINT": "it sends the Hub token and the uploads to another server",
    "HF_TOKEN_PATH": "it chooses which Hub token hftune uses",
    "WANDB_BASE_URL": "it sends the W&B key and the run's logs to another server",
}
# Variables that choose which programs or libraries run: named as such in the refusal. NCCL_*_PLUGIN are
# shared libraries NCCL loads.
_ENV_LOADS_CODE = re.compile(
    r"LD_|DYLD_|PYTHON|PERL|RUBY|NODE_|JAVA_|.*PLUGIN|.*PATH$|(BASH_ENV|ENV|SHELL|IFS|PS4|PROMPT_COMMAND)$"
)
_ENV_ALLOWED = (
    f"a config's `env:` sets only {', '.join(p + '*' for p in _ENV_FAMILIES)} and hardware variables such as "
    "CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS (docs/configuration.md); export anything else in your shell"
)


def _env_refusal(key: str) -> str | None:
    """Why an `env:` block may not set `key` (None: it may)."""
    upper = key.upper()  # names are case-blind on Windows; a lower-case LD_PRELOAD is named for what it is
    if upper in _ENV_NOT_IN_A_CONFIG:
        return _ENV_NOT_IN_A_CONFIG[upper] + ", so a config may not set it"
    if _ENV_LOADS_CODE.match(upper):
        return "it changes which programs or libraries load and run, so a config may not set it"
    if key in _ENV_NAMES or key.startswith(_ENV_FAMILIES):
        return None
    return "not a variable a config may set"


def _env_block(raw: Any, problems: list[str]) -> dict[str, str]:
    """The `env:` mapping of a config file as environment variables (values as text, as TRL's CLI sets
    them); secrets are refused like secret config keys, since the block is saved with the model, and so is
    any variable not on the allowlist above (`_env_refusal`)."""
    if not isinstance(raw, dict):
        problems.append(f"`env`: must be a mapping of environment variable -> value, got {show(raw)}")
        return {}
    env: dict[str, str] = {}
    for key, value in raw.items():
        where = f"`env.{key}`"
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            problems.append(f"`env`: {show(key)} is not an environment variable name")
        elif is_secret_key(key) or (isinstance(value, str) and _TOKEN_VALUE.search(value)):
            problems.append(
                f"{where}: secrets do not belong in a config file (it is saved next to the model); "
                "export it in your shell, or run `hf auth login` for the Hub token"
            )
        elif not isinstance(value, str | int | float):  # bool is an int
            problems.append(f"{where}: must be a text or a number, got {show(value)}")
        elif refusal := _env_refusal(key):
            problems.append(f"{where}: {refusal}; {_ENV_ALLOWED}")
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    return env


def field_defaults(cls: type) -> dict[str, Any]:
    """A dataclass's defaults by field: what the cross-field checks of an hftune-only config (eval suites,
    `hftune label`) fill unset keys with, so they check every value, set or not."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # lists and dicts (hftune_field makes factories)
            out[f.name] = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, help) for a dataclass, for `--help` output."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # lists and dicts (hftune_field makes factories)
            default = f.default_factory()
        help_text = (f.metadata or {}).get("help", "")
        out.append((f.name, f"{_type_name(hints[f.name])}, default {default!r}", help_text))
    return out


def hftune_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help string, as TRL's configs declare theirs."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def named_function(key: str, spec: str):
    """The function a config key names as `module:function` (a verifier, a task tagger, a hint), imported;
    a one-line error naming the key when it cannot be."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"`{key}`: cannot import {spec}: {err}") from None
    except Exception as err:  # the user's module failed while importing
        raise UserError(f"`{key}`: importing {spec} failed: {type(err).__name__}: {err}") from None
    if not callable(function):
        raise UserError(f"`{key}`: {spec} is a {type(function).__name__}, not a function")
    return function
