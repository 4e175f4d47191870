"""Bad inputs that would let a shared config run code or send credentials elsewhere: a config's `env:` block
sets only the variables that steer the Hugging Face stack, the hardware and logging (docs/configuration.md).
Anything that changes which programs or libraries load (LD_PRELOAD, PYTHONPATH, PATH, ...), a variable in
those families that loads code or redirects the token (HF_MODULES_CACHE, HF_ENDPOINT, ...), or a variable
not on the list is refused with exit 2, one line naming the key and what is allowed, and the process's
environment untouched (harness: tests/bad_input.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bad_input import refused, write

from hftune.stages import sft

BASE = "model_name_or_path: tiny:llama\ndata_recipe: tiny_alpaca\n"
ALLOWED = "HF_*"  # the start of the allowlist every refusal names

# name: (variable, value, what the message says about it)
CASES = {
    "LD_PRELOAD": ("LD_PRELOAD", "/tmp/evil.so", "libraries load and run"),
    "LD_LIBRARY_PATH": ("LD_LIBRARY_PATH", "/tmp/evil", "libraries load and run"),
    "lower-case ld_preload": ("ld_preload", "/tmp/evil.so", "libraries load and run"),
    "DYLD_INSERT_LIBRARIES": ("DYLD_INSERT_LIBRARIES", "/tmp/evil.dylib", "libraries load and run"),
    "PYTHONPATH": ("PYTHONPATH", "/tmp/evil", "libraries load and run"),
    "PYTHONSTARTUP": ("PYTHONSTARTUP", "/tmp/evil.py", "libraries load and run"),
    "PATH": ("PATH", "/tmp/evil:/usr/bin", "libraries load and run"),
    "BASH_ENV": ("BASH_ENV", "/tmp/evil.sh", "libraries load and run"),
    "ENV": ("ENV", "/tmp/evil.sh", "libraries load and run"),
    "PERL5LIB": ("PERL5LIB", "/tmp/evil", "libraries load and run"),
    "NODE_OPTIONS": ("NODE_OPTIONS", "--require /tmp/evil.js", "libraries load and run"),
    "NCCL_NET_PLUGIN": ("NCCL_NET_PLUGIN", "/tmp/evil.so", "libraries load and run"),
    "HF_MODULES_CACHE": ("HF_MODULES_CACHE", "/tmp/evil", "Python code"),
    "TORCH_EXTENSIONS_DIR": ("TORCH_EXTENSIONS_DIR", "/tmp/evil", "compiled extensions"),
    "HF_ENDPOINT": ("HF_ENDPOINT", "https://evil.example", "another server"),
    "HF_TOKEN_PATH": ("HF_TOKEN_PATH", "/tmp/their-token", "which Hub token"),
    "WANDB_BASE_URL": ("WANDB_BASE_URL", "https://evil.example", "another server"),
    "a variable not on the list": ("MY_SETTING", "1", "not a variable a config may set"),
    "CUDA_HOME (a toolchain path)": ("CUDA_HOME", "/tmp/evil", "not a variable a config may set"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_env_block_may_not_set_a_variable_off_the_allowlist(case, tmp_path, capsys):
    name, value, reason = CASES[case]
    before = os.environ.get(name)
    write(tmp_path / "c.yaml", f"{BASE}env:\n  {name}: {value!r}\n")
    mentions = [f"`env.{name}`", reason, ALLOWED]
    err = refused(["sft", "--config", "c.yaml"], tmp_path, capsys, mentions=mentions)
    assert len([line for line in err.splitlines() if f"env.{name}" in line]) == 1
    assert os.environ.get(name) == before  # refused before anything was set


def test_a_refused_variable_sets_none_of_the_block(tmp_path, capsys, monkeypatch):
    """The block is all or nothing: an allowed variable beside a refused one is not set either."""
    monkeypatch.delenv("HFTUNE_SECURITY_PROBE", raising=False)
    write(tmp_path / "c.yaml", f"{BASE}env:\n  HFTUNE_SECURITY_PROBE: x\n  LD_PRELOAD: /tmp/evil.so\n")
    refused(["sft", "--config", "c.yaml"], tmp_path, capsys, mentions=["`env.LD_PRELOAD`"])
    assert "HFTUNE_SECURITY_PROBE" not in os.environ


def test_an_env_block_sets_what_steers_the_hf_stack_and_the_hardware(tmp_path: Path, monkeypatch):
    """The allowlist's purpose (TRL's CLI convention) still works: cache folders, offline switches, GPUs,
    threads, allocator and W&B settings are set when the config is read."""
    wanted = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "NCCL_DEBUG": "WARN",
        "WANDB_PROJECT": "tiny",
        "TORCH_LOGS": "recompiles",
    }
    for name in wanted:
        monkeypatch.setenv(name, "before")  # monkeypatch restores each after the test
    block = "".join(f"  {k}: {v!r}\n" for k, v in wanted.items())
    cfg = sft.parse(str(write(tmp_path / "c.yaml", f"{BASE}env:\n{block}")))
    assert cfg.env == wanted
    assert {k: os.environ[k] for k in wanted} == wanted
