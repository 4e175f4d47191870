"""`hftune` under a launcher, recording what this process did, for tests/test_distributed.py:

    torchrun --nproc_per_node 2 tests/dist_worker.py RECORD_DIR sft --config ... [+ dpo --config ...]

writes RECORD_DIR/rank<RANK>.json with the rows this process trained on (tokens without padding), the rows
of the training set, how many times it prepared the data, and for each stage the checksum of the trainable
weights this process held when it saved (each rank's own copy; ZeRO-3's shards gathered) and the trained
model's logits on a fixed input. Commands separated by
`+` run one after another in the same processes (one launch, imports paid once). Everything else is the
real `hftune` CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import transformers

from hftune import cli, data, distributed
from hftune.data import mixture
from hftune.stages import common

record_dir = Path(sys.argv[1])
seen: list[list[int]] = []
training_rows: dict[str, list[list[int]]] = {}
prepared = 0

prepare_dataset = data.prepare_dataset


def counting_prepare(*args, **kwargs):
    global prepared
    prepared += 1
    return prepare_dataset(*args, **kwargs)


training_step = transformers.Trainer.training_step


def recording_step(self, model, inputs, *args, **kwargs):
    if not (isinstance(inputs, dict) and "input_ids" in inputs and "attention_mask" in inputs):
        return training_step(self, model, inputs, *args, **kwargs)  # RL batches: prompts, not rows
    for row, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True):
        seen.append([token for token, keep in zip(row, mask, strict=True) if keep])
    if not training_rows:
        for key in ("input_ids", "chosen_ids", "rejected_ids"):
            if key in self.train_dataset.column_names:
                training_rows[key] = list(self.train_dataset[key])
    return training_step(self, model, inputs, *args, **kwargs)


checksums: dict[str, str] = {}
logits: dict[str, list] = {}
save_artifact = common.save_artifact


def checksum_then_save(dirs, cfg, *args, trainer=None, **kwargs):
    """The trainable weights this process holds as it saves (the policy's, for PPO), hashed in name order,
    and the trained model's logits on a fixed input (under ZeRO-3, with its shards gathered)."""
    if trainer is not None:
        import torch

        model = getattr(trainer.model, "policy", trainer.model)
        digest = hashlib.sha256()
        with distributed.full_parameters(model), torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if param.requires_grad:
                    digest.update(name.encode())
                    digest.update(param.detach().float().cpu().numpy().tobytes())
            was_training = model.training
            model.eval()
            logits[Path(dirs.final).name] = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits.tolist()
            model.train(was_training)
        checksums[Path(dirs.final).name] = digest.hexdigest()
    return save_artifact(dirs, cfg, *args, trainer=trainer, **kwargs)


if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
    # DeepSpeed's CPU collectives over gloo, without its shared-memory op: that op is C++ DeepSpeed compiles
    # on first use, and a first run on a machine without its build cache hung (10 minutes) here.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

data.prepare_dataset = mixture.prepare_dataset = counting_prepare  # (stages prepare through mixture)
transformers.Trainer.training_step = recording_step
common.save_artifact = checksum_then_save
code = 0
commands: list[list[str]] = [[]]
for arg in sys.argv[2:]:
    if arg == "+":
        commands.append([])
    else:
        commands[-1].append(arg)
for command in commands:
    code = code or cli.main(command)
record = {"seen": seen, "training_rows": training_rows, "prepared": prepared, "checksums": checksums}
record["logits"] = logits
(record_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))
sys.exit(code)
