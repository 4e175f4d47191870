"""The accelerate launch configs in configs/accelerate/ parse with accelerate's own code and say what
their names promise.

Everything here runs on CPU without DeepSpeed: `load_config_from_file` only reads YAML into a
`ClusterConfig` (it rejects unknown top-level keys but does not look inside `deepspeed_config` /
`fsdp_config`), so the nested keys are checked against `accelerate launch`'s own argument parser, and
`_validate_launch_command` plus the environment builders (`prepare_multi_gpu_env`,
`prepare_deepspeed_cmd_env`) turn each file into the launcher's arguments and worker environment
exactly as `accelerate launch --config_file FILE` would, stopping before any process starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

ACCEL_DIR = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
CONFIGS = sorted(ACCEL_DIR.glob("*.yaml"))
EXPECTED = {
    "single_gpu.yaml",
    "multi_gpu.yaml",
    "fsdp.yaml",
    "deepspeed_zero2.yaml",
    "deepspeed_zero3.yaml",
    "deepspeed_zero3_offload.yaml",
    "multi_node.yaml",
}


def _expected_type(name: str) -> DistributedType:
    if name.startswith("deepspeed_"):
        return DistributedType.DEEPSPEED
    if name.startswith("fsdp"):
        return DistributedType.FSDP
    if name.startswith("single_gpu"):
        return DistributedType.NO
    if name.startswith(("multi_gpu", "multi_node")):
        return DistributedType.MULTI_GPU
    raise AssertionError(f"no expectation for {name}: add one to _expected_type")


def _launch_args(path: Path):
    """What `accelerate launch --config_file PATH -m hftune sft ...` resolves, without launching."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "hftune", "sft", "--config", "x.yaml"]
    )
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def _launch_option_names() -> set[str]:
    return {a.dest for a in launch_command_parser()._actions}


def test_all_configs_present():
    assert {p.name for p in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_comment_names_the_command(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name} must open with a comment block"
    text = "\n".join(header)
    assert f"accelerate launch --config_file configs/accelerate/{path.name}" in text
    assert "-m hftune" in text
    assert "Hardware:" in text


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_parses_with_accelerate_loader(path):
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == _expected_type(path.name)
    assert cfg.mixed_precision == "bf16"
    assert cfg.num_processes >= 1
    if cfg.distributed_type != DistributedType.NO:
        assert cfg.num_processes > 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nested_keys_are_launch_options(path):
    """The loader accepts any key inside deepspeed_config / fsdp_config; the launcher maps them onto its
    own options (fsdp_config keys get an fsdp_ prefix), so a misspelt one would be silently ignored."""
    cfg = load_config_from_file(str(path))
    options = _launch_option_names()
    for key in cfg.deepspeed_config:
        assert key in options, f"{path.name}: unknown deepspeed_config key {key}"
    for key in cfg.fsdp_config:
        name = key if key.startswith("fsdp") else f"fsdp_{key}"
        assert name in options, f"{path.name}: unknown fsdp_config key {key}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_launcher_resolves_config(path):
    args, _ = _launch_args(path)
    kind = _expected_type(path.name)
    assert args.mixed_precision == "bf16"
    assert bool(args.use_deepspeed) == (kind == DistributedType.DEEPSPEED)
    assert bool(args.use_fsdp) == (kind == DistributedType.FSDP)
    assert bool(args.multi_gpu) == (kind == DistributedType.MULTI_GPU)


def test_single_gpu():
    cfg = load_config_from_file(str(ACCEL_DIR / "single_gpu.yaml"))
    assert cfg.num_processes == 1
    assert cfg.num_machines == 1


def test_multi_gpu_ddp():
    cfg = load_config_from_file(str(ACCEL_DIR / "multi_gpu.yaml"))
    assert cfg.num_processes == 8
    assert cfg.num_machines == 1
    assert not cfg.deepspeed_config and not cfg.fsdp_config
    env = prepare_multi_gpu_env(_launch_args(ACCEL_DIR / "multi_gpu.yaml")[0])
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_full_shard_transformer_wrap():
    path = ACCEL_DIR / "fsdp.yaml"
    fsdp = load_config_from_file(str(path)).fsdp_config
    assert fsdp["fsdp_version"] == 1
    assert fsdp["fsdp_reshard_after_forward"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"].endswith(("DecoderLayer", "Block"))
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True  # cpu_ram_efficient_loading needs it under FSDP1
    assert fsdp["fsdp_use_orig_params"] is True  # LoRA: only some parameters train

    env = prepare_multi_gpu_env(_launch_args(path)[0])
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "1"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == fsdp["fsdp_transformer_layer_cls_to_wrap"]
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize(
    ("name", "stage", "offload"),
    [
        ("deepspeed_zero2.yaml", 2, "none"),
        ("deepspeed_zero3.yaml", 3, "none"),
        ("deepspeed_zero3_offload.yaml", 3, "cpu"),
    ],
)
def test_deepspeed_stage_and_offload(name, stage, offload):
    path = ACCEL_DIR / name
    ds = load_config_from_file(str(path)).deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == offload
    assert ds["offload_param_device"] == offload
    assert ds["zero3_init_flag"] is (stage == 3)
    if stage == 3:
        assert ds["zero3_save_16bit_model"] is True
    # Left out so DeepSpeed sees "auto" and the Trainer fills them from the stage config: a number would
    # override the stage config, and the string "auto" breaks Accelerator() (int() of the env variable).
    assert "gradient_accumulation_steps" not in ds
    assert "gradient_clipping" not in ds
    assert "deepspeed_config_file" not in ds

    args, defaults = _launch_args(path)
    # accelerate's launch_command sets this between validation and the launcher; mirror it here.
    args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == offload
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == offload
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env


def test_multi_node_template():
    path = ACCEL_DIR / "multi_node.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == DistributedType.MULTI_GPU
    assert cfg.num_machines == 2
    assert cfg.machine_rank == 0
    assert cfg.num_processes % cfg.num_machines == 0 and cfg.num_processes > cfg.num_machines
    assert cfg.main_process_ip and isinstance(cfg.main_process_port, int)
    text = path.read_text(encoding="utf-8")
    for placeholder in ("main_process_ip", "main_process_port", "machine_rank"):
        assert f"#   {placeholder}" in text, f"the header should explain {placeholder}"

    args = _launch_args(path)[0]
    prepare_multi_gpu_env(args)
    assert args.nnodes == "2"
    assert args.nproc_per_node == str(cfg.num_processes // 2)
    assert args.rdzv_endpoint == f"{cfg.main_process_ip}:{cfg.main_process_port}"


def test_sbatch_script_starts_one_launch_a_node_with_its_rank(tmp_path):
    """configs/accelerate/multi_node.sbatch under stand-ins for SLURM's `scontrol` and `srun` (which runs
    the node command once a node, with its SLURM_NODEID): each node's `accelerate launch` resolves, with
    accelerate's own launcher, to its node rank, the first node as rendezvous and every GPU counted."""
    import os
    import shlex
    import subprocess

    script = ACCEL_DIR / "multi_node.sbatch"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hosts = '[ "$1 $2" = "show hostnames" ] && printf "gpu-a\\ngpu-b\\n"'
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\n{hosts}\n")
    srun = '#!/bin/bash\nfor node in 0 1; do SLURM_NODEID=$node "${@: -3}"; done\n'  # bash -c COMMAND
    (bin_dir / "srun").write_text(srun)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2"}
    env.update(SLURM_JOB_NODELIST="gpu-[a-b]", DRY_RUN="1", STAGE="dpo", CONFIG="configs/tiny/dpo.yaml")
    checkout = ACCEL_DIR.parents[1]
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=checkout)
    assert run.returncode == 0, run.stderr
    commands = [shlex.split(line) for line in run.stdout.splitlines()]
    assert len(commands) == 2
    for rank, command in enumerate(commands):
        assert command[:2] == ["accelerate", "launch"] and command[-5:] == [
            "-m", "hftune", "dpo", "--config", "configs/tiny/dpo.yaml",
        ]  # fmt: skip
        args = launch_command_parser().parse_args(command[2:])
        args, _, _ = _validate_launch_command(args)
        prepare_multi_gpu_env(args)
        assert args.node_rank == rank and args.nnodes == "2" and args.nproc_per_node == "8"
        assert args.rdzv_endpoint == "gpu-a:29500"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
