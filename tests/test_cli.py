"""The command line: user errors exit 2 with one readable message, `--help` documents every option, and
the sub-commands work from any directory (recipes ship with the installed package)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input import refused, run_cli

from hftune import cli
from hftune.config import ConfigError
from hftune.stages import registry

REPO = Path(__file__).resolve().parent.parent


def hftune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter, away from the checkout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hftune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_bad_config_exits_2_naming_every_fault_without_traceback(tmp_path, capsys):
    # In-process (tests/bad_input.py); test_sft_end_to_end_from_the_command_line runs a fresh interpreter.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n"
        "learnig_rate: 1e-3\nnum_train_epochs: many\nhub_token: abc\n"
    )
    err = refused(["sft", "--config", str(bad)], tmp_path, capsys)
    assert str(bad) in err
    assert "learnig_rate" in err and "learning_rate" in err
    assert "num_train_epochs" in err and "many" in err
    assert "hub_token" in err and "HF_TOKEN" in err

    with pytest.raises(ConfigError):  # --debug lets the exception (and so its traceback) through
        run_cli(["sft", "--config", str(bad), "--debug"], tmp_path, capsys)


def test_sft_end_to_end_from_the_command_line(tmp_path, tiny_llama):
    out = tmp_path / "run"
    proc = hftune(
        "sft",
        "--config",
        str(REPO / "configs/tiny/sft.yaml"),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--max_samples",
        "60",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out loss:" in proc.stdout and f"saved: {out}" in proc.stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "manifest.json").is_file()


@pytest.mark.integration  # launches a process
def test_data_list_works_outside_the_checkout(tmp_path):
    proc = hftune("data", "list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"alpaca", "dolly", "ultrachat", "tiny_alpaca", "tiny_dolly", "tiny_ultrachat"} <= names


@pytest.mark.parametrize("stage", sorted(registry.COMMANDS))
def test_stage_help_documents_every_hftune_option(capsys, stage):
    module = registry.load(stage)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    extras = module.schema().classes["hftune"]
    for field in dataclasses.fields(extras):
        assert f"--{field.name}" in text, f"--{field.name} missing from `hftune {stage} --help`"
    assert (
        ("--resume" in text) == registry.STAGES[stage].trains
        and "--help-all" in text
        and "--overwrite" in text
    )
    for key in module.schema().defaults:
        assert f"  {key}:" in text, f"hftune default for {key} not shown"


def test_help_all_lists_trl_fields(capsys):
    assert cli.main(["sft", "--help-all"]) == 0
    text = capsys.readouterr().out
    for name in ("--learning_rate", "--assistant_only_loss", "--lora_r", "--load_in_4bit", "--data_recipe"):
        assert name in text


def test_user_errors_in_process_exit_2(capsys, tmp_path):
    assert cli.main(["sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hftune: error:") and "missing.yaml" in err
    assert cli.main(["data", "preview", "no_such_recipe", "--model", "tiny:llama"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_data_preview_marks_trained_tokens(capsys, tiny_llama):
    assert (
        cli.main(
            ["data", "preview", "tiny_ultrachat", "--model", "tiny:llama", "--n", "1", "--max_length", "64"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "p95" in out and "max_length" in out


def test_tiny_command_builds_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "tiny-gpt2"
    assert cli.main(["tiny", str(out), "--arch", "gpt2", "--pretrain_steps", "0"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert cli.main(["tiny", str(tmp_path / "x"), "--arch", "bert"]) == 2
    assert "bert" in capsys.readouterr().err


def test_a_renamed_key_points_to_its_new_name(tmp_path, capsys):
    """Spelling alone sent `torch_dtype` to `torch_compile`; the old names transformers and TRL renamed
    point to the new ones."""
    write_config = tmp_path / "old.yaml"
    write_config.write_text(
        "model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n"
        "torch_dtype: float32\nevaluation_strategy: steps\nmax_seq_length: 64\n"
    )
    err = refused(["sft", "--config", str(write_config)], tmp_path, capsys)
    assert "`torch_dtype`: unknown key (renamed: use `dtype`)" in err
    assert "`evaluation_strategy`: unknown key (renamed: use `eval_strategy`)" in err
    assert "`max_seq_length`: unknown key (renamed: use `max_length`)" in err
    assert "torch_compile" not in err


# Run as `python -c BOOT ARGS...`: bitsandbytes is told the CPU has AVX512-BF16 (as many servers' do), so
# importing it takes the path that fetches a CPU kernel through `kernels`, whatever this machine's CPU.
BOOT = """
import importlib.abc, importlib.machinery, sys

class AVX512BF16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AVX512BF16())
from hftune import cli
code = cli.main(sys.argv[1:])
# PEFT up to 0.21 imports bitsandbytes with TRL's configs; 0.22 no longer does. Import it here if the
# command did not, so the notice it brings is always there to be silenced.
import bitsandbytes
print("bitsandbytes imported:", "bitsandbytes.backends.cpu.ops" in sys.modules)
sys.exit(code)
"""


@pytest.mark.integration  # launches a process
def test_a_cheap_command_prints_no_library_noise(tmp_path, tiny_llama):
    """`hftune data preview --config` parses a stage config (TRL's configs import transformers' Trainer,
    PEFT, bitsandbytes) and measures rows longer than the tokenizer's `model_max_length`. Before, every such
    command printed `kernels`' offline notice about bitsandbytes' CPU kernel and transformers' "indexing
    errors" warning."""
    import json
    import shutil

    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(tiny_llama) / name, tokenizer / name)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 16}))
    argv = ["data", "preview", "--config", str(REPO / "configs/tiny/sft.yaml"), "--model", str(tokenizer)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BOOT, *argv, "--n", "1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bitsandbytes imported: True" in proc.stdout  # the import that fetches the kernel did run
    for noise in ("kernels-community", "publisher trust", "Token indices sequence length"):
        assert noise not in proc.stderr, proc.stderr
    assert "[hftune] recipe tiny_alpaca" in proc.stderr  # hftune's own notes still print
