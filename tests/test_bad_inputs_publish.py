"""Bad inputs to `hftune card`, `hftune push` and `hftune merge`: each is refused with exit 2 and one message
that names what is wrong, and nothing under the folder it ran in changes (harness: tests/bad_input.py). Then
what publishing must never do with a user's files: upload a hard link to a file outside the artifact,
overwrite a file it did not write, leave a temporary file behind on a full disk, or let a name from the
artifact or the eval inject HTML into the card."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_input import refused, run_cli, snapshot, write

from hftune.errors import UserError
from hftune.publish import card

OUTSIDE = "outside-secret.txt"


@pytest.fixture
def root(tmp_path, lora_sft) -> Path:
    """The folder each case runs in: a copy of a finished LoRA SFT artifact at `sft`, and a file elsewhere
    on the machine (beside `root`, not in it) that must never be uploaded."""
    folder = tmp_path / "root"
    shutil.copytree(lora_sft, folder / "sft")
    write(tmp_path / OUTSIDE, "root:x:0:0:the machine's own file\n")
    return folder


def edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))


def eval_folder(root: Path, results: object, name: str = "ev") -> Path:
    folder = root / name
    manifest = {"stage": "eval", "parents": [], "libraries": {"hftune": "0"}, "metrics": {}}
    write(folder / "manifest.json", json.dumps(manifest))
    write(folder / "results.json", results if isinstance(results, str) else json.dumps(results))
    return folder


def pickled_model(root: Path) -> Path:
    """A full model saved only as a pickle (pytorch_model.bin), with an hftune manifest."""
    folder = root / "pickled"
    write(folder / "manifest.json", json.dumps({"stage": "sft", "parents": [], "libraries": {"hftune": "0"}}))
    write(folder / "config.json", json.dumps({"architectures": ["LlamaForCausalLM"]}))
    write(folder / "pytorch_model.bin", b"\x80\x04pickle")
    return folder


def user_file(root: Path) -> None:
    write(root / "README.md", "# My project\n\nNotes nobody else has.\n")


def edited_card(root: Path) -> None:
    card.write(root / "sft", root / "CARD.md")
    with (root / "CARD.md").open("a") as f:
        f.write("\nMy own notes on this model.\n")


def qlora(root: Path) -> None:
    config = yaml.safe_load((root / "sft" / "config.hftune.yaml").read_text())
    (root / "sft" / "config.hftune.yaml").write_text(yaml.safe_dump({**config, "load_in_4bit": True}))


def hard_link(root: Path) -> None:
    os.link(root.parent / OUTSIDE, root / "sft" / "vocab.txt")


def unfinished(root: Path) -> None:
    shutil.copytree(root / "sft", root / "half")
    (root / "half" / "manifest.json").unlink()


DRY = ["--repo-id", "me/model", "--dry-run", "staged"]
# name: (set the bad input up under root, argv run in root, strings the message must name)
CASES = {
    "card of a missing folder": (None, ["card", "nope"], ["nope", "no such folder"]),
    "card of a file": (
        lambda r: write(r / "notes.txt", "hi"),
        ["card", "notes.txt"],
        ["notes.txt", "a file"],
    ),
    "card of a folder without manifest": (unfinished, ["card", "half"], ["half", "no manifest.json"]),
    "manifest not JSON": (
        lambda r: write(r / "sft/manifest.json", "{'stage': sft"),
        ["card", "sft"],
        ["sft/manifest.json", "JSON"],
    ),
    "manifest a JSON list": (
        lambda r: write(r / "sft/manifest.json", "[1, 2]"),
        ["push", "sft", *DRY],
        ["sft/manifest.json", "not an object"],
    ),
    "manifest without stage": (
        lambda r: edit_manifest(r / "sft", stage=None),
        ["card", "sft"],
        ["sft/manifest.json", "`stage`"],
    ),
    "manifest parents not a list": (
        lambda r: edit_manifest(r / "sft", parents="tiny:llama"),
        ["card", "sft"],
        ["sft/manifest.json", "`parents`"],
    ),
    "manifest parent without a name": (
        lambda r: edit_manifest(r / "sft", parents=[{"role": "base_model"}]),
        ["push", "sft", *DRY],
        ["sft/manifest.json", "name_or_path"],
    ),
    "manifest metrics not a mapping": (
        lambda r: edit_manifest(r / "sft", metrics=[0.5]),
        ["card", "sft"],
        ["sft/manifest.json", "`metrics`"],
    ),
    "a parent's manifest corrupt": (
        lambda r: (
            write(r / "base/manifest.json", "\x00\x01"),
            edit_manifest(r / "sft", parents=[{"role": "base_model", "name_or_path": str(r / "base")}]),
        ),
        ["card", "sft"],
        ["base/manifest.json"],
    ),
    "adapter_config.json not JSON": (
        lambda r: write(r / "sft/adapter_config.json", "{"),
        ["card", "sft"],
        ["sft/adapter_config.json"],
    ),
    "adapter_config.json a list": (
        lambda r: write(r / "sft/adapter_config.json", "[]"),
        ["push", "sft", *DRY, "--base-model-id", "me/base"],
        ["sft/adapter_config.json", "expected an object"],
    ),
    "config.hftune.yaml not YAML": (
        lambda r: write(r / "sft/config.hftune.yaml", "learning_rate: [1e-4\n"),
        ["card", "sft"],
        ["sft/config.hftune.yaml", "YAML"],
    ),
    "--eval a stage folder": (None, ["card", "sft", "--eval", "sft"], ["--eval sft", "results.json"]),
    "--eval results.json not JSON": (
        lambda r: eval_folder(r, "{nan"),
        ["card", "sft", "--eval", "ev"],
        ["ev/results.json", "not valid JSON"],
    ),
    "--eval results.json without variants": (
        lambda r: eval_folder(r, {"suite": {"name": "tiny"}}),
        ["push", "sft", *DRY, "--eval", "ev"],
        ["ev/results.json", "variants"],
    ),
    "--eval results.json cells not statistics": (
        lambda r: eval_folder(r, {"baseline": "a", "variants": {"a": {"metrics": {"reward": "high"}}}}),
        ["card", "sft", "--eval", "ev"],
        ["ev/results.json", "hftune eval"],
    ),
    "card of an eval folder": (lambda r: eval_folder(r, {"variants": {}}), ["card", "ev"], ["ev", "--eval"]),
    "push of an eval folder": (
        lambda r: eval_folder(r, {"variants": {}}),
        ["push", "ev", *DRY],
        ["ev", "--eval"],
    ),
    "card --output a file of the user's": (
        user_file,
        ["card", "sft", "--output", "README.md"],
        ["README.md", "not a card hftune wrote", "--overwrite"],
    ),
    "card --output a card edited since": (
        edited_card,
        ["card", "sft", "--output", "CARD.md"],
        ["CARD.md", "edited since"],
    ),
    "card --output a folder": (
        lambda r: (r / "docs").mkdir(),
        ["card", "sft", "--output", "docs"],
        ["docs", "is a folder"],
    ),
    "card --repo-id not ORG/NAME": (
        None,
        ["card", "sft", "--repo-id", "<b>x</b>"],
        ["--repo-id", "ORG/NAME"],
    ),
    "card --base-model-id a local name": (
        None,
        ["card", "sft", "--base-model-id", "tiny:llama"],
        ["--base-model-id", "tiny:llama"],
    ),
    "push --base-model-id a path": (None, ["push", "sft", *DRY, "--base-model-id", "./base"], ["./base"]),
    "push of a work folder": (
        lambda r: shutil.copytree(r / "sft", r / "sft.work"),
        ["push", "sft.work", *DRY],
        ["sft.work", "work folder"],
    ),
    "push of a pickle-only model": (
        pickled_model,
        ["push", "pickled", *DRY],
        ["pickled", "pytorch_model.bin", "safetensors"],
    ),
    "push of an adapter saved as a pickle": (
        lambda r: (r / "sft/adapter_model.safetensors").rename(r / "sft/adapter_model.bin"),
        ["push", "sft", *DRY],
        ["adapter_model.safetensors", "adapter_model.bin"],
    ),
    "push of truncated safetensors": (
        lambda r: write(r / "sft/adapter_model.safetensors", b"\x10\x00\x00"),
        ["push", "sft", *DRY],
        ["sft/adapter_model.safetensors", "not a valid safetensors"],
    ),
    "push of a hard link to a file outside": (
        hard_link,
        ["push", "sft", *DRY],
        ["sft/vocab.txt", "hard link"],
    ),
    "push --dry-run a file": (
        lambda r: write(r / "notes.txt", "mine"),
        ["push", "sft", "--repo-id", "me/model", "--dry-run", "notes.txt"],
        ["notes.txt", "not a folder"],
    ),
    "push --dry-run another artifact": (
        lambda r: shutil.copytree(r / "sft", r / "other"),
        ["push", "sft", "--repo-id", "me/model", "--dry-run", "other"],
        ["--dry-run other", "hftune did not write it"],
    ),
    "push --dry-run inside the artifact": (
        None,
        ["push", "sft", "--repo-id", "me/model", "--dry-run", "sft/staged"],
        ["sft/staged", "outside"],
    ),
    "merge of a missing folder": (None, ["merge", "nope", "out"], ["nope", "no such folder"]),
    "merge of a folder without manifest": (
        unfinished,
        ["merge", "half", "out"],
        ["half", "no manifest.json"],
    ),
    "merge of a full (pickle) model": (pickled_model, ["merge", "pickled", "out"], ["pickled", "not a LoRA"]),
    "merge of an eval folder": (
        lambda r: eval_folder(r, {"variants": {}}),
        ["merge", "ev", "out"],
        ["ev", "not a LoRA"],
    ),
    "merge of a QLoRA adapter": (qlora, ["merge", "sft", "out"], ["4-bit", "--from-full-precision"]),
}


@pytest.mark.parametrize("case", CASES)
def test_publishing_refuses_a_bad_input(case, root, capsys):
    setup, argv, mentions = CASES[case]
    if setup is not None:
        setup(root)
    refused(argv, root, capsys, mentions=mentions)


@pytest.mark.parametrize("repo_id", ["model", "me/team/model", "-me/model", "me/model.", "me /model", "me/"])
def test_push_refuses_a_repo_id_that_is_not_org_slash_name(repo_id, root, capsys):
    argv = ["push", "sft", f"--repo-id={repo_id}", "--dry-run", "staged"]
    refused(argv, root, capsys, mentions=[repr(repo_id), "ORG/NAME"])


# ----------------------------------------------------------------------------------- what push uploads


def test_push_never_stages_a_hard_link_to_a_file_outside_the_artifact(root, capsys):
    """The refusal names the file, and what leaves the machine never holds the other file's bytes; the
    same artifact with a plain copy in its place pushes."""
    hard_link(root)
    err = refused(["push", "sft", *DRY], root, capsys, mentions=["vocab.txt"])
    assert "cp " in err  # how to make it a plain copy
    (root / "sft" / "vocab.txt").unlink()
    shutil.copyfile(root.parent / OUTSIDE, root / "sft" / "vocab.txt")
    code, _, err = run_cli(["push", "sft", *DRY], root, capsys)
    assert code == 0, err
    assert (root / "staged" / "vocab.txt").stat().st_nlink == 1


def test_push_dry_run_replaces_only_its_own_earlier_folder(root, capsys):
    assert run_cli(["push", "sft", *DRY], root, capsys)[0] == 0
    assert card.marker(root / "staged" / "README.md") == ("push", True)
    # A failed dry run leaves the earlier one as it was ...
    refused(["push", "sft", *DRY, "--eval", "sft"], root, capsys, mentions=["results.json"])
    # ... and a second one replaces it (it is hftune's), with the --eval table this time.
    eval_folder(root, {"variants": {"sft": {"metrics": {"reward": {"mean": 0.5, "n": 3}}}}})
    assert run_cli(["push", "sft", *DRY, "--eval", "ev"], root, capsys)[0] == 0
    assert "| reward |" in (root / "staged" / "README.md").read_text()
    # A file of the user's put in it makes it the user's folder.
    write(root / "staged" / "notes.txt", "mine")
    refused(["push", "sft", *DRY], root, capsys, mentions=["staged", "notes.txt"])


# ------------------------------------------------------------------------------------ card --output


def test_card_output_replaces_only_a_card_hftune_wrote_unchanged(root, capsys):
    assert run_cli(["card", "sft", "--output", "CARD.md"], root, capsys)[0] == 0
    first = (root / "CARD.md").read_text()
    assert card.marker(root / "CARD.md") == ("card", True)
    assert run_cli(["card", "sft", "--output", "CARD.md", "--repo-id", "me/model"], root, capsys)[0] == 0
    assert (root / "CARD.md").read_text() != first  # an unedited hftune card is simply rewritten

    user_file(root)
    before = snapshot(root)
    with pytest.raises(UserError, match="not a card hftune wrote"):
        card.write(root / "sft", root / "README.md")
    assert snapshot(root) == before
    card.write(root / "sft", root / "README.md", overwrite=True)  # what `--overwrite` asks for
    assert card.marker(root / "README.md") == ("card", True)


# ------------------------------------------------------------------------------------------ full disk


def _half_then_full(self: Path, data: str, *args, **kwargs) -> None:
    """Path.write_text on a full disk: half the text reaches the file, then ENOSPC."""
    with open(self, "w", encoding="utf-8") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(self))


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(Path, "write_text", _half_then_full)


@pytest.mark.parametrize(
    "argv",
    [
        ["card", "sft", "--output", "new/docs/README.md"],
        ["push", "sft", "--repo-id", "me/m", "--dry-run", "a/b"],
    ],
    ids=["card --output", "push --dry-run"],
)
def test_a_full_disk_leaves_nothing_behind(argv, root, capsys, full_disk):
    """Exit 1 (the disk, not the user) with the CLI's message; no temporary file, no half-written card,
    not even the folders made for it."""
    refused(argv, root, capsys, code=1, mentions=["no space left on device"])


def test_a_full_disk_keeps_the_earlier_card(root, capsys, monkeypatch):
    assert run_cli(["card", "sft", "--output", "CARD.md"], root, capsys)[0] == 0
    monkeypatch.setattr(Path, "write_text", _half_then_full)
    refused(["card", "sft", "--output", "CARD.md", "--repo-id", "me/x"], root, capsys, code=1)


# ------------------------------------------------------------------------------- names that are HTML


EVIL = "<img src=x onerror=alert(1)>"


def test_no_name_from_the_artifact_or_the_eval_reaches_the_card_as_html(tmp_path, lora_sft):
    """A variant, a baseline, an eval folder, the artifact's own folder, a parent's path and a config value
    may hold any text; rendered the way the Hub renders a README (raw HTML allowed), none becomes a tag."""
    markdown_it = pytest.importorskip("markdown_it")

    def stat(mean):
        return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 8}

    folder = tmp_path / f"sft {EVIL}"
    shutil.copytree(lora_sft, folder)
    base = f"/models/`{EVIL}`"  # a backtick ends a naive code span
    edit_manifest(folder, parents=[{"role": "base_model", "name_or_path": base}])
    config = yaml.safe_load((folder / "config.hftune.yaml").read_text())
    config["chat_template"] = f"x\n  ```\n{EVIL}\n"  # a fence inside the YAML would end a naive code block
    (folder / "config.hftune.yaml").write_text(yaml.safe_dump(config))
    results = {
        "baseline": EVIL,
        "metric_info": {"reward": {"higher_is_better": True, "description": EVIL}},
        "variants": {name: {"metrics": {"reward": stat(0.5), EVIL: stat(1.0)}} for name in ("sft", EVIL)},
        "win_rates": {"sft": {EVIL: stat(0.4)}, EVIL: {"sft": stat(0.6)}},
    }
    eval_dir = eval_folder(tmp_path, results, name=f"eval {EVIL}")

    text = card.render(folder, eval_dir=eval_dir)
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    page = md.render(text)
    assert "<img" not in page, [line for line in page.splitlines() if "<img" in line]
    assert "onerror=alert(1)" in page  # still there, as text
    assert "<table>" in page and page.count("<tr>") > 3  # the tables are still tables


# ---------------------------------------------------------------------------------------- manifests


def test_a_from_scratch_parent_is_not_a_missing_name(root):
    """The pretrain stage records its start as {"role": "init", "from_scratch": ARCH}; a card of anything
    descended from it says so, and names no base model in the Hub metadata."""
    from huggingface_hub import ModelCard

    folder = root / "sft"
    edit_manifest(folder, stage="pretrain", parents=[{"role": "init", "from_scratch": "llama"}])
    text = card.render(folder)
    assert "trained from scratch" in text and "llama weights initialised at random" in text
    assert ModelCard(text).data.base_model is None
    lineage = text[text.index("## Lineage") : text.index("## Evaluation")]
    assert "| 0 | from scratch |" in lineage and "| 1 | pretraining |" in lineage


# ------------------------------------------------------------------ symlinks, weights, the token's name


def full_model(root: Path, name: str = "full") -> Path:
    """A finished full-model artifact (config.json and a model.safetensors) beside the LoRA one."""
    from safetensors.numpy import save_file

    folder = root / name
    shutil.copytree(root / "sft", folder)
    for adapter_file in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / adapter_file).unlink()
    write(folder / "config.json", json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    save_file({"lm_head.weight": np.zeros((2, 2), dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def linked_elsewhere(path: Path) -> Path:
    """`path` moved beside the root (another disk, say) and a symlink to it left in its place."""
    target = path.parent.parent.parent / f"elsewhere-{path.name}"
    shutil.move(path, target)
    path.symlink_to(target)
    return target


def weight_linked_to_nothing(root: Path) -> None:
    folder = full_model(root)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(root / "gone.safetensors")


def weight_that_is_a_folder(root: Path) -> None:
    folder = full_model(root)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


SYMLINK_CASES = {
    "push of a symlinked tokenizer.json": (
        lambda r: linked_elsewhere(r / "sft/tokenizer.json"),
        ["sft/tokenizer.json", "symbolic link", "cp "],
    ),
    "push of a symlinked vocab.txt to the machine's file": (
        lambda r: (r / "sft/vocab.txt").symlink_to(r.parent / OUTSIDE),
        ["sft/vocab.txt", "symbolic link", OUTSIDE],
    ),
    "push of a symlinked config.hftune.yaml": (
        lambda r: linked_elsewhere(r / "sft/config.hftune.yaml"),
        ["sft/config.hftune.yaml", "symbolic link"],
    ),
    "push of a weight linked to nothing": (
        weight_linked_to_nothing,
        ["full/model.safetensors", "not a file"],
    ),
    "push of a full model whose weight is a folder": (weight_that_is_a_folder, ["full", "no weights"]),
}


@pytest.mark.parametrize("case", SYMLINK_CASES)
def test_push_refuses_a_symlink_it_does_not_follow_and_a_folder_without_weights(case, root, capsys):
    """Before: a symlink was skipped without a word, so a push could exit 0 with no weights or no tokenizer
    staged."""
    setup, mentions = SYMLINK_CASES[case]
    setup(root)
    folder = "full" if (root / "full").exists() else "sft"
    refused(["push", folder, *DRY], root, capsys, mentions=mentions)


@pytest.mark.parametrize("weights", ["adapter_model.safetensors", "model.safetensors"])
def test_push_stages_a_symlinked_weight_file_as_the_file_it_points_to(weights, root, capsys):
    """Weights kept on another disk behind a symlink are uploaded, as a plain file with the target's bytes;
    before, the push exited 0 with no weights staged."""
    folder = root / "sft" if weights.startswith("adapter") else full_model(root)
    target = linked_elsewhere(folder / weights)
    code, _, err = run_cli(["push", folder.name, *DRY], root, capsys)
    assert code == 0, err
    staged = root / "staged" / weights
    assert not staged.is_symlink() and staged.read_bytes() == target.read_bytes()


def test_push_refuses_a_file_named_after_the_token_without_printing_it(root, capsys, monkeypatch):
    """A shard named after the Hub token would put the token in the repo's file list (only contents were
    checked): refused, exit 2, the file named with the token redacted, in no output."""
    token = "hf_" + "Q" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    folder = full_model(root)
    shutil.copyfile(folder / "model.safetensors", folder / f"{token}.safetensors")
    err = refused(["push", "full", *DRY], root, capsys, mentions=["full/<redacted>.safetensors", "Hub token"])
    assert token not in err
