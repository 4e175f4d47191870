"""Bad inputs to where hftune writes, and to the command line: each is refused with exit 2 and one message
that names what is wrong, and no file that existed before is changed (harness: tests/bad_input.py).

More cases live beside this file: test_bad_inputs_config.py (config values and YAML), test_bad_inputs_data.py
(data files and recipes), test_bad_inputs_publish.py (card, push, merge).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from bad_input import REPO, refused, run_cli, snapshot, write

from hftune import artifacts

SFT = str(REPO / "configs/tiny/sft.yaml")
SFT_FULL = str(REPO / "configs/tiny/sft_full.yaml")
REWARD = str(REPO / "configs/tiny/reward.yaml")
PPO = str(REPO / "configs/tiny/ppo.yaml")
PRETRAIN = str(REPO / "configs/tiny/pretrain.yaml")
EVAL = str(REPO / "eval/suites/tiny.yaml")


def checkout(root: Path, name: str = "checkout") -> Path:
    """A folder of the user's that hftune did not write: a git checkout with sources and notes."""
    folder = root / name
    write(folder / ".git/HEAD", "ref: refs/heads/main\n")
    write(folder / "src/train.py", "print('my code')\n")
    write(folder / "notes.txt", "three weeks of notes\n")
    return folder


def fake_artifact(folder: Path, stage: str = "sft") -> Path:
    """A folder with hftune's manifest (what a finished stage leaves)."""
    manifest = {"stage": stage, "created": "2026-01-01T00:00:00Z", "config_sha256": "0", "libraries": {}}
    write(folder / "manifest.json", json.dumps(manifest))
    return folder


# Every command that writes a folder, pointed at one it must not replace.
WRITERS = {
    "sft": ["sft", "--config", SFT, "--output_dir"],
    "sft_full": ["sft", "--config", SFT_FULL, "--output_dir"],
    "pretrain": ["pretrain", "--config", PRETRAIN, "--output_dir"],
    "reward": ["reward", "--config", REWARD, "--model_name_or_path", "tiny:llama", "--output_dir"],
    "ppo": ["ppo", "--config", PPO, "--output_dir"],
    "rloo": ["ppo", "--config", PPO, "--algorithm", "rloo", "--output_dir"],
    "grpo": ["ppo", "--config", PPO, "--algorithm", "grpo", "--output_dir"],
    "tiny": ["tiny", "--pretrain_steps", "0"],  # OUTPUT_DIR is positional: appended below
}


@pytest.mark.parametrize("command", WRITERS)
def test_a_command_never_replaces_a_users_folder(command, tmp_path, capsys):
    folder = checkout(tmp_path)
    argv = [*WRITERS[command], "checkout"]
    if command == "tiny":
        argv = ["tiny", "checkout", "--pretrain_steps", "0"]
    refused(argv, tmp_path, capsys, mentions=["checkout", "hftune did not write it", "--overwrite", ".git"])
    assert (folder / ".git/HEAD").read_text() == "ref: refs/heads/main\n"


def test_eval_never_replaces_a_users_folder(tmp_path, capsys, tiny_llama):
    checkout(tmp_path)
    argv = [
        "eval",
        "--config",
        EVAL,
        "--output_dir",
        "checkout",
        "--variants",
        "[sft]",
        "--sft_model",
        tiny_llama,
    ]
    refused(argv, tmp_path, capsys, mentions=["checkout", "hftune did not write it"])


def test_merge_and_push_never_replace_a_users_folder(tmp_path, capsys, lora_sft):
    checkout(tmp_path)
    refused(["merge", lora_sft, "checkout"], tmp_path, capsys, mentions=["OUT checkout", "--overwrite"])
    push = ["push", lora_sft, "--repo-id", "me/model", "--dry-run", "checkout"]
    refused(push, tmp_path, capsys, mentions=["checkout", "hftune did not write it"])


def test_a_pipeline_never_writes_into_a_users_folder(tmp_path, capsys):
    checkout(tmp_path)
    config = write(tmp_path / "p.yaml", f"output_dir: checkout\nstages:\n  - {{stage: sft, config: {SFT}}}\n")
    refused(["pipeline", "--config", config.name], tmp_path, capsys, mentions=["checkout", "pipeline.json"])
    # --output_dir on the command line is held to the same rule
    refused(
        ["pipeline", "--config", config.name, "--output_dir", "checkout", "--dry-run"],
        tmp_path,
        capsys,
        mentions=["checkout"],
    )


def test_a_pipeline_refuses_before_any_stage_runs_when_a_later_stage_folder_is_the_users(tmp_path, capsys):
    root = fake_artifact(tmp_path / "run")
    (root / "manifest.json").unlink()
    write(root / "pipeline.json", "{}")  # an earlier pipeline run's folder ...
    checkout(root, "reward")  # ... where the user put a folder of their own at a stage's path
    stages = f"  - {{stage: sft, config: {SFT}}}\n  - {{stage: reward, config: {REWARD}}}\n"
    config = write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n{stages}")
    refused(["pipeline", "--config", config.name], tmp_path, capsys, mentions=["stage reward", "run/reward"])


def test_card_output_never_overwrites_a_users_file(tmp_path, capsys, lora_sft):
    write(tmp_path / "README.md", "# my project\n")
    refused(["card", lora_sft, "--output", "README.md"], tmp_path, capsys, mentions=["README.md"])


# Output paths that are wrong whatever the folder holds.
@pytest.mark.parametrize(
    "output_dir, mention",
    [
        (".", "current folder"),
        ("..", "current folder"),
        ("notes.txt", "is a file"),
        ("link", "symbolic link"),
        ("mine.jsonl.d", "an input of this run"),
    ],
)
def test_impossible_output_dirs_are_refused_up_front(output_dir, mention, tmp_path, capsys):
    cwd = tmp_path / "project"
    write(cwd / "notes.txt", "keep me\n")
    (cwd / "target").mkdir()
    (cwd / "link").symlink_to(cwd / "target")
    data = write(cwd / "mine.jsonl.d/data.jsonl", '{"instruction": "hi", "output": "hello"}\n')
    argv = ["sft", "--config", SFT, "--output_dir", output_dir, "--data_files", str(data)]
    refused(argv, cwd, capsys, mentions=[output_dir, mention])


def test_output_dir_may_not_be_the_model_it_trains_from(tmp_path, capsys):
    model = fake_artifact(tmp_path / "sft")
    write(model / "config.json", "{}")
    argv = ["sft", "--config", SFT, "--model_name_or_path", "sft", "--output_dir", "sft"]
    refused(argv, tmp_path, capsys, mentions=["an input of this run"])


def test_a_users_folder_at_the_work_path_is_not_taken_over(tmp_path, capsys):
    checkout(tmp_path, "out.work")
    argv = ["sft", "--config", SFT, "--output_dir", "out"]
    refused(argv, tmp_path, capsys, mentions=["out.work", "hftune did not write it"])


def test_overwrite_replaces_a_users_folder_only_when_asked(tmp_path, capsys):
    folder = checkout(tmp_path)
    code, _, err = run_cli(["tiny", "checkout", "--pretrain_steps", "0", "--overwrite"], tmp_path, capsys)
    assert code == 0, err
    assert not (folder / ".git").exists() and (folder / "config.json").is_file()
    # The tiny model is now hftune's: rebuilding it needs no --overwrite, and an empty folder is fine too.
    code, _, err = run_cli(["tiny", "checkout", "--pretrain_steps", "0"], tmp_path, capsys)
    assert code == 0, err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["tiny", "empty", "--pretrain_steps", "0"], tmp_path, capsys)
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".lock" in p.name]


def test_a_manifest_that_is_not_hftunes_does_not_make_a_folder_hftunes(tmp_path):
    write(tmp_path / "webapp/manifest.json", '{"name": "My PWA", "start_url": "/"}')
    assert not artifacts.is_hftune_folder(tmp_path / "webapp")
    assert artifacts.is_hftune_folder(fake_artifact(tmp_path / "run"))


def test_a_killed_saves_temporary_folder_is_cleaned_on_the_next_run(tmp_path, capsys):
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = tmp_path / f".model.tmp-{dead}"
    write(stale / "model.safetensors", "half")
    code, _, err = run_cli(["tiny", "model", "--pretrain_steps", "0"], tmp_path, capsys)
    assert code == 0, err
    assert not stale.exists() and (tmp_path / "model/config.json").is_file()


def test_a_second_run_on_the_same_output_stops_naming_the_first(tmp_path, capsys):
    held, release = threading.Event(), threading.Event()

    def first_run():
        with artifacts.output_lock(tmp_path / "out"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert held.wait(30)
        lock = tmp_path / ".out.lock"
        allow = (".out.lock",)  # the first run's lock, there before and after
        refused(
            ["sft", "--config", SFT, "--output_dir", "out"],
            tmp_path,
            capsys,
            mentions=["another hftune run", f"process {os.getpid()}"],
            allow_new=allow,
        )
        assert lock.read_text() == str(os.getpid())
    finally:
        release.set()
        thread.join()
    assert not (tmp_path / ".out.lock").exists()


def test_two_pipelines_on_one_folder_do_not_both_run(tmp_path, capsys):
    config = write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n  - {{stage: sft, config: {SFT}}}\n")
    with artifacts.output_lock(tmp_path / "run"):
        refused(
            ["pipeline", "--config", "p.yaml"],
            tmp_path,
            capsys,
            mentions=["another hftune run"],
            allow_new=(".run.lock",),
        )
    assert config.is_file()


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------

CLI_CASES = {
    "eval has no --resume": (["eval", "--config", EVAL, "--resume"], ["resume"]),
    "unknown stage flag": (
        ["sft", "--config", SFT, "--learnin_rate", "1e-4"],
        ["learnin_rate", "learning_rate"],
    ),
    "stray positional": (["sft", "--config", SFT, "oops"], ["oops"]),
    "missing config file": (["sft", "--config", "nope.yaml"], ["nope.yaml"]),
    "config is a folder": (["sft", "--config", "."], ["."]),
    "pipeline stray flag": (["pipeline", "--config", "p.yaml", "--learning_rate", "1"], ["learning_rate"]),
    "pipeline unknown --force": (
        ["pipeline", "--config", "p.yaml", "--force", "ppo", "--dry-run"],
        ["--force ppo"],
    ),
    "rloo one generation": (
        ["ppo", "--config", PPO, "--algorithm", "rloo", "--num_generations", "1"],
        ["at least 2"],
    ),
    "grpo one generation": (
        ["ppo", "--config", PPO, "--algorithm", "grpo", "--num_generations", "1"],
        ["at least 2"],
    ),
    "tiny unknown arch": (["tiny", "out", "--arch", "gpt5"], ["gpt5"]),
    "tiny zero vocab": (["tiny", "out", "--vocab_size", "0"], ["--vocab_size"]),
    "tiny no layers": (["tiny", "out", "--num_layers", "0"], ["--num_layers"]),
    "tiny odd hidden": (["tiny", "out", "--hidden_size", "30"], ["--hidden_size", "multiple of 4"]),
    "tiny negative steps": (["tiny", "out", "--pretrain_steps", "-1"], ["--pretrain_steps"]),
    "tiny stray flag": (["tiny", "out", "--layers", "3"], ["--layers"]),
    "data preview missing recipe": (["data", "preview", "nope.yaml", "--model", "tiny:llama"], ["nope"]),
    "merge missing folder": (["merge", "nope", "out"], ["nope"]),
    "push missing folder": (["push", "nope", "--repo-id", "me/x", "--dry-run", "out"], ["nope"]),
    "card missing folder": (["card", "nope"], ["nope"]),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_mistakes(case, tmp_path, capsys):
    argv, mentions = CLI_CASES[case]
    write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n  - {{stage: sft, config: {SFT}}}\n")
    refused(argv, tmp_path, capsys, mentions=mentions)


def test_a_pipeline_reports_every_stages_problems_at_once(tmp_path, capsys):
    stages = (
        f"  - {{stage: sft, config: {SFT}, learning_rat: 1}}\n"
        f"  - {{stage: reward, config: {REWARD}, lora_rr: 2}}\n"
    )
    write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n{stages}")
    refused(
        ["pipeline", "--config", "p.yaml", "--dry-run"],
        tmp_path,
        capsys,
        mentions=["learning_rat", "lora_rr"],
    )


@pytest.mark.parametrize("value", ["[a, b]", "{a: 1}", "3", "true"])
def test_a_pipeline_output_dir_must_be_a_path(value, tmp_path, capsys):
    write(tmp_path / "p.yaml", f"output_dir: {value}\nstages:\n  - {{stage: sft, config: {SFT}}}\n")
    refused(["pipeline", "--config", "p.yaml", "--dry-run"], tmp_path, capsys, mentions=["`output_dir`"])


def test_an_eval_only_pipeline_plans(tmp_path, capsys, tiny_llama):
    stage = f"{{stage: eval, config: {EVAL}, sft_model: {tiny_llama}, variants: [sft]}}"
    write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n  - {stage}\n")
    code, out, err = run_cli(["pipeline", "--config", "p.yaml", "--dry-run"], tmp_path, capsys)
    assert code == 0, err
    assert "eval" in out and "run" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_pipeline_output_dir_flag_overrides_the_config(tmp_path, capsys):
    write(tmp_path / "p.yaml", f"output_dir: run\nstages:\n  - {{stage: sft, config: {SFT}}}\n")
    code, out, err = run_cli(
        ["pipeline", "--config", "p.yaml", "--output_dir", "elsewhere", "--dry-run"], tmp_path, capsys
    )
    assert code == 0, err
    assert "elsewhere/sft" in out and "run/sft" not in out


def test_top_level_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match=r"nope\.yaml"):
        run_cli(["--debug", "sft", "--config", "nope.yaml"], tmp_path, capsys)
    with pytest.raises(Exception, match=r"nope\.yaml"):
        run_cli(["sft", "--debug", "--config", "nope.yaml"], tmp_path, capsys)


def test_help_texts_describe_what_each_command_does(capsys):
    from hftune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "--resume" not in sub["eval"].format_help()
    assert "--resume" in sub["sft"].format_help()
    assert "ChatML" in sub["tiny"].format_help() and "OUTPUT_DIR" in sub["tiny"].format_help()
    assert "--output_dir" in sub["pipeline"].format_help()
    for name in ("sft", "eval", "pipeline", "tiny", "merge", "push", "card"):
        assert "--overwrite" in sub[name].format_help(), name


def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    def no_space(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "model.safetensors"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_space)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["tiny", "model", "--pretrain_steps", "0"], tmp_path, capsys)
    assert code == 1
    assert "no space left on device" in err and "while writing" in err and "model.safetensors" in err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # no temporary folder, no lock file


# ---------------------------------------------------------------------------------------------------------
# --resume
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_sft(tmp_path_factory, tiny_llama):
    """An SFT run killed after its last checkpoint (step 4 of 4) and before its artifact was saved."""
    from hftune.stages import common, sft

    root = tmp_path_factory.mktemp("interrupted")
    argv = ["--output_dir", str(root / "out"), "--max_steps", "4", "--save_steps", "2", "--max_samples", "32"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    original = common.save_artifact
    common.save_artifact = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            sft.run(sft.parse(SFT, argv))
    finally:
        common.save_artifact = original
    assert (root / "out.work/checkpoint-4/trainer_state.json").is_file()
    return root, argv


def test_a_rerun_without_resume_does_not_throw_checkpoints_away(interrupted_sft, capsys):
    root, argv = interrupted_sft
    refused(
        ["sft", "--config", SFT, *argv], root, capsys, mentions=["checkpoint-4", "--resume", "--overwrite"]
    )


@pytest.mark.parametrize(
    "change, named",
    [
        (["--learning_rate", "5e-4"], "learning_rate"),
        (["--data_recipe", "tiny_dolly"], "data_recipe"),
        (["--max_samples", "24"], "max_samples"),
    ],
)
def test_resume_refuses_checkpoints_made_with_another_config(interrupted_sft, change, named, capsys):
    root, argv = interrupted_sft
    refused(["sft", "--config", SFT, *argv, *change, "--resume"], root, capsys, mentions=["--resume", named])


def test_resuming_from_the_final_checkpoint_trains_no_extra_step(interrupted_sft, capsys):
    root, argv = interrupted_sft
    code, _, err = run_cli(["sft", "--config", SFT, *argv, "--resume"], root, capsys)
    assert code == 0, err
    metrics = json.loads((root / "out/metrics.json").read_text())
    assert metrics["global_step"] == 4
    steps = [row.get("step") for row in json.loads((root / "out/log_history.json").read_text())]
    assert max(steps) == 4
    assert not (root / "out.work").exists()


# ---------------------------------------------------------------------------------------------------------
# The eval's verifier is the user's code
# ---------------------------------------------------------------------------------------------------------

EVAL_ARGS = ["--variants", "[sft]", "--reward_model", "null", "--metrics", "[verifier]", "--baseline", "null"]


@pytest.mark.parametrize(
    "body, mention",
    [
        ("def verify(p, r, ref):\n    raise ValueError('cannot parse')\n", "cannot parse"),
        ("def verify(p, r, ref):\n    return 'yes'\n", "could not convert"),
        ("def verify(p, r, ref):\n    return float('nan')\n", "returned nan"),
        ("verify = 3\n", "not a function"),
        ("raise RuntimeError('broken module')\n", "broken module"),
    ],
)
def test_a_broken_verifier_fails_before_anything_is_generated(
    body, mention, tmp_path, capsys, monkeypatch, tiny_llama
):
    module = f"verify_{tmp_path.name.replace('-', '_').replace('[', '_').replace(']', '_')}"  # one per case
    module = "".join(c if c.isalnum() or c == "_" else "_" for c in module)
    write(tmp_path / f"{module}.py", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["eval", "--config", EVAL, "--output_dir", "out", "--sft_model", tiny_llama, *EVAL_ARGS]
    refused(
        [*argv, "--verifier", f"{module}:verify"],
        tmp_path,
        capsys,
        mentions=[f"{module}:verify", mention],
        allow_new=("__pycache__",),
    )


def test_a_verifier_failing_on_some_replies_costs_only_those(
    tmp_path, capsys, monkeypatch, tiny_llama, caplog
):
    # Accepts its reference answers (so it passes the check before generating) and fails on anything else.
    write(
        tmp_path / "picky.py",
        "def verify(p, r, ref):\n    assert r == ref, 'not the reference'\n    return 1.0\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["eval", "--config", EVAL, "--output_dir", "out", "--sft_model", tiny_llama, *EVAL_ARGS]
    argv += ["--verifier", "picky:verify", "--max_prompts", "4", "--num_samples", "1", "--cache_dir", "cache"]
    code, _, err = run_cli(argv, tmp_path, capsys)
    assert code == 0, err
    assert "failed on 4 of 4 replies" in caplog.text and "not the reference" in caplog.text
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert "sft" in results["variants"]


# ---------------------------------------------------------------------------------------------------------
# Models that are not what they claim, and runs that diverge
# ---------------------------------------------------------------------------------------------------------


def test_a_pickle_model_holding_code_is_refused_by_name(tmp_path, capsys, tiny_llama):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(tiny_llama, model)
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    weights["payload"] = os.system  # unpickling would hand back a callable: not plain weights
    torch.save(weights, model / "pytorch_model.bin")
    argv = [
        "sft",
        "--config",
        SFT,
        "--model_name_or_path",
        "pickled",
        "--output_dir",
        "out",
        "--max_steps",
        "1",
    ]
    refused(argv, tmp_path, capsys, mentions=["pytorch_model.bin", "pickle", "safetensors"])


@pytest.mark.parametrize("guard", ["callback", "weights"])
def test_a_diverging_run_stops_and_leaves_no_artifact(guard, tmp_path, capsys, monkeypatch, tiny_llama):
    """The optimizer turns the weights into NaN after step 2: the logged loss shows it and the run stops; with
    that guard off, the check before saving still refuses to write an artifact of NaN tensors."""
    import torch

    from hftune.stages import finite

    real_step = torch.optim.AdamW.step
    steps = {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] >= 2:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    if guard == "weights":
        monkeypatch.setattr(finite.StopOnNonFinite, "on_log", lambda self, *a, **k: None)
    argv = ["sft", "--config", SFT, "--output_dir", "out", "--max_steps", "4", "--logging_steps", "1"]
    argv += ["--save_strategy", "no", "--max_samples", "32"]
    code, _, err = run_cli(argv, tmp_path, capsys)
    assert code == 2, err
    assert ("diverged at step" if guard == "callback" else "Training diverged (NaN/inf weights)") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "file, content, mention",
    [
        ("adapter_config.json", "{not json", "adapter_config.json"),
        ("adapter_config.json", "[1, 2]", "a JSON list, expected an object"),
        ("adapter_config.json", b"\xff\xfe\x00", "adapter_config.json"),
        ("config.hftune.yaml", "a: [unclosed", "config.hftune.yaml"),
    ],
)
def test_merge_names_a_broken_file_in_the_adapter(file, content, mention, tmp_path, capsys, lora_sft):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_sft, adapter)
    write(adapter / file, content)
    refused(["merge", "adapter", "merged"], tmp_path, capsys, mentions=[mention])
