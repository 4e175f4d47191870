"""The RL stage on the tiny chain (full-FT SFT -> LoRA reward model -> PPO/RLOO): what it writes and
prints, that rewards go through the shared scoring path with the missing-EOS penalty, padding sides,
alarms, and refusing a reward model that reads text differently."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hftune.errors import UserError
from hftune.models import loading, scoring
from hftune.models.tokenizer import load_tokenizer
from hftune.stages import common
from hftune.stages import ppo as rl
from hftune.stages.rl import config as rl_keys
from hftune.stages.rl.ppo_trainer import VALUE_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/tiny/ppo.yaml")


def chain_args(chain, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        chain["sft"],
        "--reward_model_path",
        chain["rm"],
        "--output_dir",
        str(out),
    ]


def rl_config(chain, out: Path, *extra: str):
    """A short run (4 steps, held-out check every 2) on the tiny chain."""
    return rl.parse(CONFIG, [*chain_args(chain, out), "--max_steps", "4", "--heldout_every", "2", *extra])


def step_lines(printed: str, algorithm: str) -> list[str]:
    """The progress lines of a run's output (the progress bar redraws itself after a carriage return)."""
    return [line for line in re.split(r"[\r\n]", printed) if line.startswith(f"[{algorithm}] step ")]


def test_ppo_writes_policy_adapter_metrics_samples_and_manifest(ppo_run, chain):
    out = ppo_run.output_dir
    assert ppo_run.alarm is None
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "config.hftune.yaml",
        "metrics.json",
        "metrics.jsonl",
        "samples.jsonl",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "objective/scores",
        "objective/kl",
        "policy/entropy_avg",
        "response/mean_length",
        "policy/clipfrac_avg",
        "loss/value_avg",
    ):
        assert all(key in r for r in rows), key
    assert sum("heldout/reward" in r for r in rows) == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "response", "reward"} <= set(samples[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["role"] for p in manifest["parents"]] == ["sft_model", "reward_model"]
    assert manifest["parents"][1]["stage"] == "reward" and manifest["metrics"]["algorithm"] == "ppo"
    # The saved policy reloads (SFT weights + the PPO adapter) to the trained policy's logits.
    policy = rl.trained_policy(ppo_run.trainer).eval()
    tok = load_tokenizer(str(out))
    ids = torch.tensor(
        [
            tok.apply_chat_template(
                [{"role": "user", "content": "What is 2 + 3?"}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        ]
    )
    from trl import ModelConfig

    reloaded = loading.load_model(str(out), ModelConfig(dtype="auto"), for_training=False).eval()
    with torch.no_grad():
        assert (policy(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max() < 1e-4


def test_reward_is_the_shared_scoring_path_with_eos_penalty(ppo_run):
    """A rollout's reply is cut at its stop token, decoded and scored as the reward stage scores it; a reply
    that never ends loses `missing_eos_penalty`."""
    from hftune.stages.rl import ppo_objective

    trainer = ppo_run.trainer
    tok = trainer.processing_class
    reply = tok("The answer is 5.", add_special_tokens=False)["input_ids"]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    junk = tok("ignored", add_special_tokens=False)["input_ids"]
    ended = [*reply, eos, *junk]  # what was sampled after the stop token is not part of the reply
    unended = reply + [pad] * (len(junk) + 1)
    responses = torch.tensor([ended, unended])
    mask = ppo_objective.response_mask(responses, eos)
    mask[1, len(reply) :] = 0  # the unended reply's padding
    scores = trainer.score([0, 0], responses, mask)
    scorer = ppo_run.scorer
    expected = scorer.normalise(scorer.score([trainer.prompts[0]], ["The answer is 5."]))[0]
    penalty = ppo_run.trainer.reward_fn.penalty
    assert torch.allclose(scores[0], expected, atol=1e-5)
    assert torch.allclose(scores[1], expected - penalty, atol=1e-5)


def test_ppo_prints_one_short_line_a_step_instead_of_the_raw_metrics(ppo_run_printed):
    _, printed = ppo_run_printed
    lines = step_lines(printed, "ppo")
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"], printed[-2000:]
    number = r"-?\d+\.\d+"
    pattern = rf"\[ppo\] step \d/4  reward {number}  kl {number}  length {number}  eos {number}"
    assert all(re.fullmatch(rf"{pattern}(  heldout {number})?", line) for line in lines), lines
    assert sum("heldout" in line for line in lines) == 2  # the held-out check ran at steps 2 and 4
    # TRL's raw metrics dict (18 keys a step) is not printed; metrics.jsonl keeps every number.
    assert "'objective/entropy'" not in printed and "{'eps'" not in printed


def test_generation_pads_left_and_scoring_pads_right(ppo_run, monkeypatch):
    trainer = ppo_run.trainer
    queries = [{"input_ids": [5, 6, 7]}, {"input_ids": [8]}]
    batch = trainer.data_collator(queries)["input_ids"]
    pad = trainer.processing_class.pad_token_id
    assert batch[1].tolist() == [pad, pad, 8], "queries must be left padded for generation"

    seen = []
    model = ppo_run.scorer.model
    original = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    scoring.score_ids(model, [[5, 6, 7], [8]], pad, batch_size=2)
    assert seen[0][0].tolist() == [8, pad, pad], "scored sequences must be right padded"


def test_alarm_stops_and_keeps_the_last_good_policy(chain, tmp_path):
    result = rl.run(rl_config(chain, tmp_path / "ppo", "--min_mean_length", "1000", "--heldout_every", "0"))
    assert result.alarm and "min_mean_length" in result.alarm and "step 1" in result.alarm
    assert "alarm" in result.metrics
    # The first step's rollouts came from the initial policy, which is all that was ever good: a fresh
    # LoRA adapter (B = 0), so the saved policy is exactly the SFT model.
    from safetensors.torch import load_file

    saved = load_file(str(result.output_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all((v == 0).all() for v in lora_b)


def test_mismatched_reward_tokenizer_fails_before_training(chain, tmp_path, monkeypatch):
    other = tmp_path / "rm-other-template"
    shutil.copytree(chain["rm"], other)
    (other / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    loaded = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(UserError, match="chat template differs"):
        rl.prepare(
            rl.parse(
                CONFIG,
                [
                    "--model_name_or_path",
                    chain["sft"],
                    "--reward_model_path",
                    str(other),
                    "--output_dir",
                    str(tmp_path / "out"),
                ],
            )
        )
    assert not loaded, "no model may load before the tokenizers are checked"


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_group_algorithms_run_on_the_same_reward_and_keys(chain, tmp_path, algorithm, capfd):
    result = rl.run(
        rl_config(
            chain,
            tmp_path / algorithm,
            "--algorithm",
            algorithm,
            "--num_generations",
            "4",
            "--heldout_every",
            "0",
        )
    )
    assert result.manifest["metrics"]["algorithm"] == algorithm
    assert result.trainer.args.num_generations == 4
    assert result.trainer.args.beta == pytest.approx(0.05)  # kl_coef reaches RLOO as `beta`
    assert result.trainer.args.max_completion_length == 16  # response_length as max_completion_length
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("reward" in r and "response/mean_length" in r for r in rows)
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    # One short line a logged step on the console, not TRL's raw metrics dict.
    printed = "".join(capfd.readouterr())
    lines = step_lines(printed, algorithm)
    assert len(lines) == len(rows) and lines[-1].startswith(f"[{algorithm}] step 4/4  reward "), lines
    assert all(" kl " in line and " length " in line and " eos " in line for line in lines)
    assert "'completions/mean_length'" not in printed and "'reward_std'" not in printed


def test_rl_config_keys_and_help():
    with pytest.raises(UserError) as err:
        rl.parse(CONFIG, ["--algorithm", "dpo", "--beta", "0.1"])
    text = str(err.value)
    assert "algorithm" in text and "beta" in text  # `beta` is spelt `kl_coef` for every algorithm


def test_vllm_options_are_checked_before_any_weights_load(monkeypatch):
    # PPO has no vLLM: its error says where vLLM generation is.
    with pytest.raises(UserError, match="vLLM generation is for `algorithm: rloo` or `grpo`"):
        rl.parse(CONFIG, ["--use_vllm", "true"])
    rloo = ["--algorithm", "rloo", "--use_vllm", "true"]
    # Options that would do nothing, and bad values, are named.
    with pytest.raises(UserError, match="`vllm_mode`: a vLLM option, but `use_vllm` is false"):
        rl.parse(CONFIG, ["--algorithm", "rloo", "--vllm_mode", "server"])
    with pytest.raises(UserError) as err:
        rl.parse(CONFIG, [*rloo, "--vllm_mode", "colocat", "--vllm_gpu_memory_utilization", "1.5"])
    assert "did you mean `colocate`" in str(err.value) and "`vllm_gpu_memory_utilization`" in str(err.value)
    # No vLLM installed (as here), or no GPU for it: said at parse time, not when the trainer starts.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else object())
    with pytest.raises(UserError, match="vLLM is not installed"):
        rl.parse(CONFIG, rloo)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(rl_keys, "cuda_for_vllm", lambda: False)
    with pytest.raises(UserError, match="none is visible"):
        rl.parse(CONFIG, rloo)
    # On a GPU machine with vLLM, TRL's own options reach TRL's config: colocated or on a server.
    monkeypatch.setattr(rl_keys, "cuda_for_vllm", lambda: True)
    cfg = rl.parse(CONFIG, [*rloo, "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3"])
    assert (cfg.training.use_vllm, cfg.training.vllm_mode, cfg.training.vllm_gpu_memory_utilization) == (
        True, "colocate", 0.3,
    )  # fmt: skip
    cfg = rl.parse(
        CONFIG,
        ["--algorithm", "grpo", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_port", "8001"],
    )
    assert (cfg.training.vllm_mode, cfg.training.vllm_server_port) == ("server", 8001)


def test_interrupted_ppo_resumes_from_its_checkpoint(chain, tmp_path, monkeypatch, ppo_run):
    """Killed after step 3, resumed from the checkpoint of step 2: it ends with the very weights of the
    uninterrupted run (`ppo_run`: the same config; its held-out checks draw nothing the training uses)."""
    from hftune.stages.rl.guardrails import Guardrails

    out = tmp_path / "ppo"
    argv = ["--max_steps", "4", "--save_steps", "2", "--heldout_every", "0"]
    real_on_log = Guardrails.on_log

    def crash_after_step_3(self, args, state, control, logs=None, **kwargs):
        real_on_log(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(Guardrails, "on_log", crash_after_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rl.run(rl_config(chain, out, *argv))
    checkpoint = tmp_path / "ppo.work" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / VALUE_WEIGHTS).is_file()
    assert not out.exists()
    from safetensors.torch import load_file

    trained = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert any((v != 0).any() for k, v in trained.items() if "lora_B" in k), (
        "the checkpoint holds trained LoRA"
    )

    monkeypatch.setattr(Guardrails, "on_log", real_on_log)
    result = rl.run(rl_config(chain, out, *argv), resume=True)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    # Steps 1-2 come from before the crash (step 3 was lost with it); the resumed run did steps 3 and 4.
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert result.metrics["steps"] == len(rows)
    resumed = load_file(str(result.output_dir / "adapter_model.safetensors"))
    uninterrupted = load_file(str(ppo_run.output_dir / "adapter_model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_kl_to_the_reference_is_zero_at_the_first_step(ppo_run):
    """The policy starts as the reference (a fresh adapter adds exactly 0), so the first rollout's KL penalty
    is 0, not merely small; later steps move away."""
    rows = [json.loads(line) for line in (ppo_run.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["objective/kl"] == 0.0 and rows[0]["objective/non_score_reward"] == 0.0
    assert any(r["objective/kl"] != 0.0 for r in rows[1:])


def test_the_adapter_off_reference_gives_the_sft_models_logits_exactly(ppo_run, chain):
    from trl import ModelConfig

    from hftune.stages.rl.ppo_trainer import position_ids

    trainer = ppo_run.trainer
    ids, mask = trainer.collate([{"input_ids": q} for q in trainer.queries[:3]]).values()
    sft = loading.load_model(chain["sft"], ModelConfig(dtype="auto"), for_training=False).eval()
    with torch.no_grad():
        reference = trainer._reference_logits(ids, mask)
        expected = sft(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        trained = rl.trained_policy(trainer)(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)
        )
    assert torch.equal(reference, expected)
    assert not torch.equal(trained.logits, expected), "the trained adapter changes the policy"


@pytest.mark.slow(45)
def test_ppo_raises_a_toy_reward_while_kl_stays_under_max_kl(chain, tmp_path):
    """A verifier as the only reward (`reward_model_weight: 0`): 1 when the reply contains a 5. PPO must raise
    its rate well above the SFT model's (about 1 in 5) without the KL alarm firing."""
    cfg = rl.parse(
        CONFIG,
        [
            *chain_args(chain, tmp_path / "toy"),
            "--reward_model_weight", "0",
            "--verifier", "toy_rewards:contains_five",
            "--missing_eos_penalty", "0",
            "--heldout_every", "0",
            # 50 steps at lr 1e-3, kl_coef 0.07: on the chain's SFT model (full logits since this release)
            # the tiny config's lr 2e-3 and kl_coef 0.05 raised the rate with a KL past max_kl by step 15,
            # and kl_coef 0.1-0.2 or 25-40 steps left the rate within +0.3 (measured: 0.22 -> 0.58 here,
            # KL at most 4.3).
            "--max_steps", "50",
            "--learning_rate", "1e-3",
            "--kl_coef", "0.07",
        ],
    )  # fmt: skip
    result = rl.run(cfg)
    assert result.alarm is None and result.scorer is None
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = (np.mean([r["objective/scores"] for r in part]) for part in (rows[:5], rows[-5:]))
    assert last > first + 0.3, f"toy reward rate {first:.2f} -> {last:.2f}"
    assert max(r["objective/kl"] for r in rows) < cfg.hftune.max_kl
    assert [p["role"] for p in result.manifest["parents"]] == ["sft_model"]  # no reward model was used


def test_a_verifier_that_fails_on_a_rollout_names_itself(chain, tmp_path):
    argv = [*chain_args(chain, tmp_path / "bad"), "--verifier", "toy_rewards:broken", "--max_steps", "1"]
    with pytest.raises(UserError, match=r"toy_rewards:broken failed on a rollout .*ZeroDivisionError"):
        rl.run(rl.parse(CONFIG, argv))
    with pytest.raises(UserError, match="cannot import"):
        rl.run(rl.parse(CONFIG, [*chain_args(chain, tmp_path / "bad2"), "--verifier", "toy_rewards:nothing"]))


def test_a_rollout_larger_than_the_data_is_refused_before_any_weights_load(chain, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loaded.append(a))
    cfg = rl.parse(CONFIG, [*chain_args(chain, tmp_path / "big"), "--per_device_train_batch_size", "100000"])
    with pytest.raises(UserError, match=r"a PPO rollout takes 100000 prompts \(per_device_train_batch_size"):
        rl.prepare(cfg)
    assert not loaded


def test_full_fine_tuning_ppo_trains_every_weight_against_a_frozen_reference(chain, tmp_path):
    """`use_peft: false`: the policy trains in full beside a frozen copy of the SFT model as reference (KL 0
    at the first step), and the artifact is a whole model that loads without the SFT folder."""
    from trl import ModelConfig

    result = rl.run(rl_config(chain, tmp_path / "full", "--use_peft", "false", "--max_steps", "2"))
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["objective/kl"] == 0.0 and rows[1]["objective/kl"] != 0.0
    trainer = result.trainer
    assert all(p.requires_grad for p in rl.trained_policy(trainer).parameters())
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    assert (result.output_dir / "model.safetensors").is_file()
    assert not (result.output_dir / "adapter_config.json").exists()
    sft = loading.load_model(chain["sft"], ModelConfig(dtype="auto"), for_training=False)
    trained = loading.load_model(str(result.output_dir), ModelConfig(dtype="auto"), for_training=False)
    before, after = dict(sft.named_parameters()), dict(trained.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO changed no weight"


def test_resumed_group_runs_keep_their_logs_up_to_the_checkpoint(tmp_path):
    """RLOO / GRPO resume with the Trainer's own step count: the RL logs keep the rows up to the checkpoint's
    step and drop the ones written after it (they will be written again)."""
    from hftune.stages import common
    from hftune.stages.rl.guardrails import Bounds, Guardrails

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert common.checkpoint_step(str(checkpoint)) == 3 and common.checkpoint_step(None) == 0
    work = tmp_path / "work"
    work.mkdir()
    (work / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    Guardrails(work, Bounds(), policy_fn=lambda: None, resumed_at=common.checkpoint_step(str(checkpoint)))
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_step_line_shows_the_numbers_worth_watching_in_a_fixed_order():
    from hftune.stages.rl.progress import step_line

    row = {"step": 1, "objective/kl": -1e-7, "objective/scores": 0.5, "objective/entropy": 11.9}
    assert step_line("ppo", row, 60) == "[ppo] step 1/60  reward 0.500  kl 0.000"  # never "-0.000"
    row = {"step": 7, "reward": 0.774, "kl": 0.021, "completions/mean_length": 10.5, "heldout/reward": 0.4}
    expected = "[rloo] step 7/?  reward 0.774  kl 0.021  length 10.5  heldout 0.400"
    assert step_line("rloo", row, None) == expected


def test_ppo_resumed_from_its_final_checkpoint_saves_without_training(chain, tmp_path, monkeypatch):
    """Killed while saving, after the checkpoint of its last update: --resume saves that policy, and trains
    no update more."""
    out = tmp_path / "ppo"
    argv = ["--max_steps", "2", "--save_steps", "2", "--heldout_every", "0"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "save_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        rl.run(rl_config(chain, out, *argv))
    final = tmp_path / "ppo.work" / "checkpoint-2"
    assert final.is_dir() and not out.exists()
    monkeypatch.undo()

    from safetensors.torch import load_file

    checkpointed = load_file(str(final / "adapter_model.safetensors"))
    result = rl.run(rl_config(chain, out, *argv), resume=True)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.equal(saved[k], checkpointed[k]) for k in checkpointed)


def test_training_scans_only_new_objects_while_the_gc_is_frozen():
    import gc

    from hftune.stages.ppo import frozen_gc

    with frozen_gc(True):
        assert gc.get_freeze_count() > 0  # everything alive before training is out of the collector's scans
    assert gc.get_freeze_count() == 0  # and handed back afterwards
    with frozen_gc(False):
        assert gc.get_freeze_count() == 0
    cfg = rl.parse(str(REPO / "configs/tiny/ppo.yaml"), ["--freeze_gc", "false"])
    assert cfg.hftune.freeze_gc is False and rl.parse(str(REPO / "configs/tiny/ppo.yaml")).hftune.freeze_gc
