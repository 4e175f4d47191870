"""Bad config inputs: each one refused at parse time with exit 2 and one message naming the key (or the
file), before any weights load and without touching the user's files; and the guards that stop a run whose
numbers turned NaN/inf.

Every config case runs `hftune STAGE --config cfg.yaml` through the shared harness (tests/bad_input.py).
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import pytest

from tests.bad_input import REPO, refused, write

# The command that parses each stage's config, and the shipped config a case alters.
STAGES = {
    "sft": (["sft"], "configs/tiny/sft.yaml"),
    "reward": (["reward"], "configs/tiny/reward.yaml"),
    "pretrain": (["pretrain"], "configs/tiny/pretrain.yaml"),
    "ppo": (["ppo"], "configs/tiny/ppo.yaml"),
    "rloo": (["ppo", "--algorithm", "rloo"], "configs/tiny/ppo.yaml"),
    "grpo": (["ppo", "--algorithm", "grpo"], "configs/tiny/ppo.yaml"),
    "dpo": (["dpo"], "configs/tiny/dpo.yaml"),
    "kto": (["dpo", "--algorithm", "kto"], "configs/tiny/dpo.yaml"),
    "orpo": (["dpo", "--algorithm", "orpo"], "configs/tiny/dpo.yaml"),
    "simpo": (["dpo", "--algorithm", "simpo"], "configs/tiny/dpo.yaml"),
    "eval": (["eval"], "eval/suites/tiny.yaml"),
}


def with_key(text: str, key: str, raw: str) -> str:
    """`text` (a flat YAML config) with `key: raw` replacing the key's line, or added."""
    line = f"{key}: {raw}"
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.M)
    return pattern.sub(line, text) if pattern.search(text) else text.rstrip("\n") + "\n" + line + "\n"


def stage_config(root: Path, stage: str, **keys: str) -> tuple[list[str], Path]:
    """(the argv that parses it, cfg.yaml in root): the stage's shipped config with `keys` changed."""
    command, shipped = STAGES[stage]
    text = (REPO / shipped).read_text()
    for key, raw in keys.items():
        text = with_key(text, key, raw)
    path = write(root / "cfg.yaml", text)
    return [*command[:1], "--config", path.name, *command[1:]], path


# (stage, key, value as written in the YAML file). Each is the right type but impossible: a NaN/inf (which
# trained an adapter of NaN tensors with exit 0), a count of zero or below, a batch nothing can hold, a
# probability outside [0, 1), a seed numpy refuses, ... Each must be refused naming its key.
BAD_VALUES = [
    ("sft", "learning_rate", ".inf"),
    ("sft", "learning_rate", ".nan"),
    ("sft", "learning_rate", "1.0e+999"),  # overflows to inf
    ("sft", "max_steps", "0"),
    ("sft", "max_steps", "-5"),
    ("sft", "gradient_accumulation_steps", "-3"),
    ("sft", "gradient_accumulation_steps", "0"),
    ("sft", "per_device_train_batch_size", "100000000000"),
    ("sft", "per_device_eval_batch_size", "1.0e+11"),
    ("sft", "num_train_epochs", "-1"),
    ("sft", "num_train_epochs", ".inf"),
    ("sft", "warmup_steps", ".inf"),
    ("sft", "weight_decay", "-0.1"),
    ("sft", "save_steps", "0"),
    ("sft", "logging_steps", "-1"),
    ("sft", "eval_steps", "0"),
    ("sft", "max_grad_norm", ".nan"),
    ("sft", "max_grad_norm", "-1.0"),
    ("sft", "seed", "-1"),
    ("sft", "data_seed", "4294967296"),
    ("sft", "adam_beta1", "1.5"),
    ("sft", "adam_beta2", "1.0"),
    ("sft", "adam_epsilon", "0"),
    ("sft", "label_smoothing_factor", "1.0"),
    ("sft", "lora_dropout", "1.5"),
    ("sft", "lora_alpha", "0"),
    ("sft", "neftune_noise_alpha", "-1.0"),
    ("sft", "max_samples", "0"),
    ("sft", "dataloader_num_workers", "-2"),
    ("sft", "pad_to_multiple_of", "0"),
    ("reward", "pad_to_multiple_of", "-8"),
    ("sft", "output_dir", '""'),
    ("sft", "lr_scheduler_kwargs", "{min_lr: .inf}"),
    ("reward", "learning_rate", ".nan"),
    ("reward", "per_device_train_batch_size", "100000000000"),
    ("reward", "max_steps", "-5"),
    ("reward", "gradient_accumulation_steps", "0"),
    ("pretrain", "learning_rate", ".inf"),
    ("pretrain", "num_train_epochs", "0"),
    ("ppo", "kl_coef", ".nan"),
    ("ppo", "gamma", "2.0"),
    ("ppo", "num_ppo_epochs", "0"),
    ("ppo", "num_mini_batches", "0"),
    ("ppo", "local_rollout_forward_batch_size", "0"),
    ("ppo", "response_length", "100000000000"),
    ("ppo", "temperature", "0"),
    ("ppo", "max_steps", "0"),
    ("rloo", "top_p", "1.5"),
    ("rloo", "num_iterations", "0"),
    ("rloo", "learning_rate", ".inf"),
    ("grpo", "num_generations", "100000000000"),
    ("grpo", "top_k", "-1"),
    ("grpo", "min_p", "2.0"),
    ("grpo", "epsilon", "0"),
    ("grpo", "steps_per_generation", "0"),
    ("eval", "temperature", ".inf"),
    ("eval", "seed", "-1"),
    ("eval", "split_seed", "99999999999"),
    ("eval", "max_new_tokens", "100000000000"),
    ("eval", "batch_size", "100000000000"),
    # The preference and RL trainers' own numbers and words (issue 31: each trained and saved, or failed
    # with a traceback once the model had loaded).
    ("sft", "max_steps", "1.0e+29"),
    ("dpo", "max_steps", "1.0e+29"),
    ("dpo", "label_smoothing", "0.9"),
    ("dpo", "label_smoothing", "0.5"),
    ("dpo", "f_divergence_type", "kl"),
    ("dpo", "f_alpha_divergence_coef", "0"),
    ("dpo", "discopop_tau", "0"),
    ("dpo", "ld_alpha", "1.5"),
    ("dpo", "ref_model_mixup_alpha", "2.0"),
    ("dpo", "ref_model_sync_steps", "0"),
    ("dpo", "save_total_limit", "0"),
    ("kto", "desirable_weight", "-1"),
    ("kto", "undesirable_weight", "0"),
    ("simpo", "cpo_alpha", "-1"),
    ("simpo", "simpo_gamma", "-5"),
    ("simpo", "label_smoothing", "0.7"),
    ("orpo", "max_completion_length", "0"),
    ("ppo", "kl_estimator", "k2"),
    ("rloo", "repetition_penalty", "0"),
    ("rloo", "epsilon_high", "-0.2"),
    ("grpo", "delta", "0.5"),
    ("grpo", "scale_rewards", "always"),
    ("grpo", "importance_sampling_level", "word"),
    ("grpo", "top_entropy_quantile", "1.5"),
    ("grpo", "vllm_server_port", "70000"),
]


@pytest.mark.parametrize(("stage", "key", "value"), BAD_VALUES, ids=lambda x: str(x))
def test_impossible_value_refused_naming_the_key(stage, key, value, tmp_path, capsys):
    argv, _ = stage_config(tmp_path, stage, **{key: value})
    refused(argv, tmp_path, capsys, mentions=["cfg.yaml", f"`{key}`: must"])


@pytest.mark.parametrize(
    ("flag", "value"),
    [("learning_rate", "inf"), ("learning_rate", "nan"), ("num_train_epochs", "-inf"), ("seed", "-3")],
)
def test_impossible_flag_refused_naming_it(flag, value, tmp_path, capsys):
    # Strings from the command line are read as numbers for float fields: "inf" and "nan" too.
    argv, _ = stage_config(tmp_path, "sft")
    refused([*argv, f"--{flag}", value], tmp_path, capsys, mentions=[f"`--{flag}` (command line): must be"])


def test_every_impossible_value_listed_in_one_message(tmp_path, capsys):
    argv, _ = stage_config(tmp_path, "sft", learning_rate=".nan", max_steps="0", seed="-1")
    err = refused([*argv, "--gradient_accumulation_steps", "-3"], tmp_path, capsys)
    assert "4 problems" in err
    for key in ("`learning_rate`", "`max_steps`", "`seed`", "`--gradient_accumulation_steps`"):
        assert key in err


def test_values_that_look_odd_but_mean_something_are_kept(tmp_path):
    from hftune.stages import sft

    # -1: train for num_train_epochs (TRL's default); .inf: never clip, still log the gradient norm;
    # a fraction below 1 for an interval: a share of the run.
    _, path = stage_config(tmp_path, "sft", max_steps="-1", max_grad_norm=".inf", save_steps="0.25")
    cfg = sft.parse(str(path))
    assert cfg.training.max_steps == -1
    assert math.isinf(cfg.training.max_grad_norm)
    assert cfg.training.save_steps == 0.25


def test_pad_to_multiple_of_word_refused_naming_the_key(tmp_path, capsys):
    # TRL 1.16 types the key `int | str | None` (for "auto") and its own int() conversion of any other word
    # failed naming no key; older TRL types it `int | None`, which the type check refuses.
    argv, _ = stage_config(tmp_path, "sft", pad_to_multiple_of="eight")
    err = refused(argv, tmp_path, capsys, mentions=["cfg.yaml", "`pad_to_multiple_of`: "])
    assert "'eight'" in err and "invalid literal" not in err


def test_output_dir_list_is_a_type_error(tmp_path, capsys):
    # TRL types `output_dir` as `str | None`: a list is neither.
    argv, _ = stage_config(tmp_path, "sft", output_dir="[runs/a, runs/b]")
    refused(argv, tmp_path, capsys, mentions=["`output_dir`: expected str or null"])


def test_long_value_cut_in_the_message(tmp_path, capsys):
    argv, _ = stage_config(tmp_path, "sft", model_name_or_path=f"[{'x' * 5000}]")
    err = refused(argv, tmp_path, capsys, mentions=["`model_name_or_path`", "..."])
    assert "x" * 100 not in err and len(err) < 600


# --- YAML: duplicate keys, aliases, nesting --------------------------------------------------------------


def test_duplicate_key_names_it_and_both_lines(tmp_path, capsys):
    argv, path = stage_config(tmp_path, "sft")
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("learning_rate:")) + 1
    path.write_text("\n".join(lines) + "\nlearning_rate: 1.0\n")
    refused(
        argv,
        tmp_path,
        capsys,
        mentions=["cfg.yaml", "duplicate key `learning_rate`", f"line {first}", f"line {len(lines) + 1}"],
    )


def test_duplicate_key_in_a_pipeline_config(tmp_path, capsys):
    write(
        tmp_path / "pipe.yaml",
        "output_dir: runs/a\nstages:\n  - {stage: sft, config: x.yaml}\noutput_dir: runs/b\n",
    )
    refused(
        ["pipeline", "--config", "pipe.yaml"],
        tmp_path,
        capsys,
        mentions=["pipe.yaml", "`output_dir`", "line 1", "line 4"],
    )


def test_duplicate_key_in_a_recipe(tmp_path, capsys):
    # Recipes are read by the same loader (hftune.data.recipe.load_recipe -> config.load_yaml); pretraining
    # reads its recipe while parsing.
    write(
        tmp_path / "recipe.yaml",
        "source: {path: corpus.txt}\nformat: language_modeling\nconverter: text\nconverter: sharegpt\n",
    )
    argv, _ = stage_config(tmp_path, "pretrain", data_recipe="./recipe.yaml")
    refused(argv, tmp_path, capsys, mentions=["recipe.yaml", "duplicate key `converter`", "line 3", "line 4"])


def test_merge_keys_may_be_overridden(tmp_path):
    from hftune.config import load_yaml

    assert load_yaml("base: &b {a: 1, c: 3}\nd:\n  <<: *b\n  a: 2\n")["d"] == {"a": 2, "c": 3}


def billion_laughs(key: str) -> str:
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, 9):
        text += f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
    return text + f"{key}: *l8\n"


def test_alias_bomb_refused_quickly(tmp_path, capsys):
    # 10**9 strings once expanded: before, building the type error's message exhausted memory.
    path = write(tmp_path / "bomb.yaml", billion_laughs("lora_target_modules"))
    start = time.monotonic()
    refused(["sft", "--config", path.name], tmp_path, capsys, mentions=["bomb.yaml", "aliases", "expand"])
    assert time.monotonic() - start < 10


def test_self_referencing_alias_refused(tmp_path, capsys):
    argv, _ = stage_config(tmp_path, "sft", lora_target_modules="&loop [q_proj, *loop]")
    refused(argv, tmp_path, capsys, mentions=["cfg.yaml", "alias"])


def test_shared_settings_through_aliases_still_work(tmp_path):
    from hftune.stages import sft

    _, path = stage_config(tmp_path, "sft", lora_target_modules="&mods [q_proj, v_proj]")
    path.write_text(path.read_text() + "lora_modules_to_save: *mods\n")
    assert sft.parse(str(path)).model.lora_modules_to_save == ["q_proj", "v_proj"]


def test_deeply_nested_yaml_refused(tmp_path, capsys):
    argv, _ = stage_config(tmp_path, "sft", lora_target_modules="[" * 5000)
    refused(argv, tmp_path, capsys, mentions=["cfg.yaml", "nested too deeply"])


# --- The config file itself: binary, a folder, unreadable, huge ------------------------------------------


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),  # not UTF-8
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not a YAML text file"),  # UTF-8, but control characters
    ],
    ids=["not-utf8", "control-chars"],
)
@pytest.mark.parametrize("command", ["sft", "pipeline"])
def test_binary_config_file(command, content, says, tmp_path, capsys):
    write(tmp_path / "model.bin", content)
    refused([command, "--config", "model.bin"], tmp_path, capsys, mentions=["model.bin", says])


def test_config_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "configs").mkdir()
    refused(["sft", "--config", "configs"], tmp_path, capsys, mentions=["configs", "is a folder"])


def test_unreadable_config(tmp_path, tmp_path_factory, capsys, monkeypatch):
    # (chmod 000 does not stop root, as in CI containers: the permission error is simulated. The file lies
    # outside the checked folder, which the harness reads.)
    path = write(tmp_path_factory.mktemp("elsewhere") / "locked.yaml", "learning_rate: 1.0\n")
    real = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    refused(["sft", "--config", str(path)], tmp_path, capsys, mentions=["locked.yaml", "permission denied"])


def test_huge_file_is_not_read_as_a_config(tmp_path, tmp_path_factory, capsys):
    big = tmp_path_factory.mktemp("weights") / "model.safetensors"
    with big.open("wb") as f:
        f.truncate(64 * 2**20)  # sparse: no disk used
    refused(["sft", "--config", str(big)], tmp_path, capsys, mentions=["model.safetensors", "not a config"])


# --- trust_remote_code -------------------------------------------------------------------------------------


@pytest.fixture
def random_tiny_model(tmp_path):
    """A randomly initialised 1-layer Llama (milliseconds to build; no training, no tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_trust_remote_code_warns_once_naming_the_model(random_tiny_model, tmp_path, caplog):
    from trl import ModelConfig

    from hftune.models import loading

    folder = tmp_path / "remote-model"
    random_tiny_model.save_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="hftune.models.loading"):
        for _ in range(2):
            loading.load_model(
                str(folder), ModelConfig(dtype="float32"), trust_remote_code=True, for_training=False
            )
        loading.load_model(str(folder), ModelConfig(dtype="float32"), for_training=False)
    warned = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warned) == 1 and str(folder) in warned[0], warned


# --- Non-finite training -----------------------------------------------------------------------------------


def test_diverging_run_stops_with_a_user_error(random_tiny_model, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hftune.errors import UserError
    from hftune.stages.finite import StopOnNonFinite, check_finite_weights

    ids = [[1, 2, 3, 4, 5, 6, 7, 8]] * 8
    args = TrainingArguments(
        output_dir=str(tmp_path / "work"),
        learning_rate=1e30,  # finite, but the first update leaves no weight a number
        max_steps=20,
        logging_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=random_tiny_model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        callbacks=[StopOnNonFinite()],
    )
    with pytest.raises(UserError, match=r"training diverged at step \d+: grad_norm is nan.*learning_rate"):
        trainer.train()
    assert trainer.state.global_step < 20  # stopped at once, not at the end
    with pytest.raises(UserError, match=r"refusing to save .*`model\..*` holds (nan|inf)"):
        check_finite_weights(random_tiny_model)


def test_callback_watches_loss_and_grad_norm_only():
    from types import SimpleNamespace

    from hftune.errors import UserError
    from hftune.stages.finite import StopOnNonFinite

    callback = StopOnNonFinite()
    args, state = (
        SimpleNamespace(fp16=False, learning_rate=1e-3, max_grad_norm=1.0),
        SimpleNamespace(global_step=7),
    )
    callback.on_log(args, state, None, logs={"loss": 1.0, "grad_norm": 2.0, "eval_loss": math.nan})
    for logs in ({"loss": math.inf}, {"grad_norm": math.nan}, {"loss/policy_avg": math.nan}):
        with pytest.raises(UserError, match="diverged at step 7"):
            callback.on_log(args, state, None, logs=logs)


def test_callback_lets_fp16_skip_a_few_overflowing_steps():
    from types import SimpleNamespace

    from hftune.errors import UserError
    from hftune.stages.finite import FP16_PATIENCE, StopOnNonFinite

    callback = StopOnNonFinite()
    args, state = (
        SimpleNamespace(fp16=True, learning_rate=1e-3, max_grad_norm=1.0),
        SimpleNamespace(global_step=3),
    )
    for _ in range(FP16_PATIENCE - 1):
        callback.on_log(args, state, None, logs={"grad_norm": math.inf})  # the scaler skipped the step
    callback.on_log(args, state, None, logs={"grad_norm": 1.0})  # recovered: the count starts again
    for _ in range(FP16_PATIENCE - 1):
        callback.on_log(args, state, None, logs={"grad_norm": math.inf})
    with pytest.raises(UserError):
        callback.on_log(args, state, None, logs={"grad_norm": math.inf})


def test_weight_check_names_the_first_broken_trainable_parameter(random_tiny_model):
    import torch

    from hftune.errors import UserError
    from hftune.stages.finite import check_finite_weights

    check_finite_weights(random_tiny_model)  # a healthy model passes
    layers = random_tiny_model.model.layers[0]
    with torch.no_grad():
        layers.mlp.up_proj.weight[0, 0] = math.nan
    layers.mlp.up_proj.weight.requires_grad_(False)
    check_finite_weights(random_tiny_model)  # frozen weights are not what training changed
    with torch.no_grad():
        layers.self_attn.o_proj.weight[1, 1] = -math.inf
    with pytest.raises(UserError, match=r"`model\.layers\.0\.self_attn\.o_proj\.weight` holds inf"):
        check_finite_weights(random_tiny_model)


# --- Preference and RL trainers: each number has a range, each word a vocabulary (issue 31) ----------------

# Numbers of the trainers' configs that need no range, and why. Every other number must have a
# config.RANGE_RULES entry: a field a TRL release adds fails the test below until given one or a reason.
NEEDS_NO_RANGE = {
    # Set by the launcher (torchrun / accelerate), not by a config: -1 means one process.
    "local_rank",
    # CPO's AlphaPO shape: any finite real (0: plain log-probability rewards; both signs are in AlphaPO).
    "alpha",
    # Bounded with the other vLLM options in stages/rl/config.py (checked only with `use_vllm: true`;
    # tests/test_ppo.py pins that message).
    "vllm_gpu_memory_utilization",
}


def _numeric_fields(cls) -> list[str]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and any(t in (int, float) for t in (typing.get_args(hints[f.name]) or (hints[f.name],)))
    ]


def test_every_trainer_number_has_a_range():
    from trl import DPOConfig, GRPOConfig, KTOConfig, RLOOConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    from hftune.config import INFINITY_ALLOWED, RANGE_RULES
    from hftune.stages.rl.ppo_config import PPOConfig

    missing = {
        f"{cls.__name__}.{name}"
        for cls in (DPOConfig, KTOConfig, ORPOConfig, CPOConfig, RLOOConfig, GRPOConfig, PPOConfig)
        for name in _numeric_fields(cls)
        if name not in RANGE_RULES and name not in NEEDS_NO_RANGE and name not in INFINITY_ALLOWED
    }
    assert not missing, (
        f"numbers with no RANGE_RULES entry (or a reason in NEEDS_NO_RANGE): {sorted(missing)}"
    )


@pytest.mark.parametrize(
    ("stage", "keys", "mentions"),
    [
        # A DPO loss TRL does not have: before, a traceback in the first training step.
        ("dpo", {"loss_type": "sigmoidd"}, ["`loss_type`", "'sigmoidd'", "did you mean", "sigmoid"]),
        ("dpo", {"loss_type": "[sigmoid, bogus]"}, ["`loss_type`", "'bogus'"]),
        ("kto", {"loss_type": "sigmoid"}, ["`loss_type`", "kto, apo_zero_unpaired"]),
        ("simpo", {"loss_type": "kto"}, ["`loss_type`", "simpo"]),
        ("grpo", {"loss_type": "grpoo"}, ["`loss_type`", "'grpoo'", "dr_grpo"]),
        # With LoRA the reference is the adapter switched off: no separate model to sync (a traceback after
        # the model loaded).
        ("dpo", {"sync_ref_model": "true"}, ["`sync_ref_model`", "use_peft: false"]),
        ("kto", {"sync_ref_model": "true"}, ["`sync_ref_model`", "use_peft: false"]),
        ("grpo", {"sync_ref_model": "true"}, ["`sync_ref_model`", "use_peft: false"]),
        (
            "rloo",
            {"sync_ref_model": "true", "use_peft": "false", "kl_coef": "0"},
            ["`sync_ref_model`", "kl_coef"],
        ),
        (
            "dpo",
            {"sync_ref_model": "true", "use_peft": "false", "precompute_ref_log_probs": "true"},
            ["`sync_ref_model`", "precompute_ref_log_probs"],
        ),
        # TRL raised these once the trainer was built, after the model loaded.
        ("dpo", {"loss_type": "exo_pair"}, ["`label_smoothing`", "exo_pair"]),
        ("dpo", {"loss_type": "aot", "f_divergence_type": "js_divergence"}, ["`f_divergence_type`", "aot"]),
        # SFT's option asked of preference data: the hint says why not and what to do.
        ("reward", {"too_long": "truncate"}, ["`too_long`", "never truncated", "max_length"]),
        ("dpo", {"too_long": "truncate"}, ["`too_long`", "never cut", "max_length"]),
    ],
    ids=lambda x: str(x),
)
def test_trainer_settings_refused_before_the_model_loads(stage, keys, mentions, tmp_path, capsys):
    argv, _ = stage_config(tmp_path, stage, **keys)
    refused(argv, tmp_path, capsys, mentions=["cfg.yaml", *mentions])


def test_sync_ref_model_with_a_full_copy_is_kept(tmp_path):
    # Full fine-tuning keeps a reference copy, which TRL updates: the one case sync_ref_model works.
    from hftune.stages import dpo

    _, path = stage_config(tmp_path, "dpo", sync_ref_model="true", use_peft="false")
    assert dpo.parse(str(path)).training.sync_ref_model is True


@pytest.mark.parametrize(
    ("stage", "said"), [("dpo", "simpo"), ("kto", "dpo"), ("grpo", "rloo"), ("dpo", "ipo")]
)
def test_pipeline_stage_whose_config_names_another_algorithm(stage, said, tmp_path, capsys):
    # The stage's name was the algorithm that trained: `stage: dpo` with a config saying simpo trained DPO.
    _, shipped = STAGES[stage]
    write(tmp_path / "stage.yaml", with_key((REPO / shipped).read_text(), "algorithm", said))
    write(
        tmp_path / "pipe.yaml", f"output_dir: runs/p\nstages:\n  - {{stage: {stage}, config: stage.yaml}}\n"
    )
    better = f"use `stage: {said}`" if said != "ipo" else "remove `algorithm`"
    refused(
        ["pipeline", "--config", "pipe.yaml"],
        tmp_path,
        capsys,
        mentions=["pipe.yaml", f"stage {stage}'s config says `algorithm: {said}", better],
    )
