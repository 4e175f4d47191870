"""Publishing a finished artifact to the Hugging Face Hub: exactly the files a user needs, in one commit.

    hftune push runs/tiny/sft --repo-id ORG/NAME [--private] [--eval runs/tiny/eval] [--revision main]
    hftune push runs/tiny/sft --repo-id ORG/NAME --dry-run staged/     # write the folder, upload nothing
    hftune push runs/tiny/ppo --repo-id ORG/NAME --base-model-id ORG/SFT  # adapter on a base pushed before

The upload is assembled in a staging folder from an allowlist: the weights (a LoRA adapter, or a full
model's safetensors and config), the tokenizer with its chat template, a model card rendered from the
manifests (`hftune.publish.card`), and the manifest, resolved config and metrics. Nothing else ever leaves
the machine: no pickles (*.bin, *.pt), no checkpoints, no `.work` folders, no logs, no hard links and no
symlinks (either may be a file from elsewhere on the machine) but a symlinked weight file, whose target is
uploaded (weights kept on another disk; a safetensors file holds tensors, not any file of the machine). A
folder with no weights to upload is refused rather than pushed without them. `--dry-run OUTDIR` replaces
only a new, empty or earlier dry-run folder (unless `--overwrite`), and leaves nothing behind if it fails.
The token comes only from `HF_TOKEN` or the Hub login cache (`hf auth login`), is handed to `HfApi` and
nowhere else, and every staged file, its name included, is checked not to contain it before anything is
sent."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hftune import artifacts, lineage
from hftune.config import strip_secrets
from hftune.errors import UserError
from hftune.publish import card

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# A full model: its config, generation defaults (eos = the end-of-turn token) and the shard index; the
# *.safetensors shards themselves are matched by suffix.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
# Only formats that cannot run code when loaded (tokenizer.model is a sentencepiece protobuf).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
RECORD_FILES = ("manifest.json", "config.hftune.yaml", "metrics.json", "reward_report.json")
LOGIN_HINT = "set the HF_TOKEN environment variable or run `hf auth login` (a token with write access)"


@dataclass
class PushResult:
    repo_id: str
    files: list[str]
    staged: Path | None  # the --dry-run folder
    commit_url: str | None  # None for a dry run


def check_artifact(folder: str | os.PathLike) -> Path:
    """A finished stage folder, or a UserError that says what it is instead."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a stage folder (a folder with manifest.json)")
    if folder.name.endswith(".work"):
        raise UserError(f"{folder} is a stage's work folder (checkpoints of a run), not a finished artifact")
    if not artifacts.is_complete(folder):
        raise UserError(
            f"{folder} has no manifest.json: it is not a finished hftune stage (still running, interrupted, "
            "or failed). Finish it first (e.g. `--resume`), then push the output folder."
        )
    lineage.read_manifest(folder)  # one hftune wrote, or a UserError naming what is wrong with it
    return folder


def select_files(folder: Path) -> list[Path]:
    """The files of `folder` that go to the Hub (an allowlist, so nothing unexpected slips through)."""
    if (folder / "adapter_config.json").is_file():
        missing = [n for n in ADAPTER_FILES if not (folder / n).is_file()]
        if missing:
            raise UserError(f"{folder}: adapter files missing: {', '.join(missing)}{_pickle_hint(folder)}")
        weights = [folder / n for n in ADAPTER_FILES]
    else:
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise UserError(
                f"{folder}: no adapter_config.json and no *.safetensors weights: nothing to push"
                + _pickle_hint(folder)
            )
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: full-model weights without config.json")
        weights = shards + [folder / n for n in MODEL_FILES]
    names = [*weights, *(folder / n for n in TOKENIZER_FILES), *(folder / n for n in RECORD_FILES)]
    for path in names:
        if path.is_symlink():
            _check_symlink(path)
    files = [p for p in dict.fromkeys(names) if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        # Only the full-model branch gets here (the adapter's weights are checked above): every *.safetensors
        # is something other than a file (a folder, a link to nothing).
        raise UserError(f"{folder}: no weights to upload (no *.safetensors file); nothing was pushed")
    for path in files:
        # A hard link is the same file as another name somewhere else on this file system (perhaps outside
        # the artifact, perhaps not the user's to publish): nothing says which of the two hftune wrote.
        links = path.stat().st_nlink
        if links > 1:
            raise UserError(
                f"{path} is a hard link ({links} names for the same file, possibly outside {folder}); "
                "refusing to upload it. If it is meant to be there, replace it by a plain copy "
                f"({_copy_command(path)}) and push again."
            )
        if path.suffix == ".safetensors":
            _check_safetensors(path)
    return files


def _check_symlink(path: Path) -> None:
    """A symlinked weight file is uploaded as the file it points to, once that is a regular file (its header
    is checked like any weight file's); any other symlink is refused, never skipped: a symlinked vocab.txt or
    config could be any file on the machine, and the upload would silently lack it."""
    target = os.path.realpath(path)
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is a symbolic link (to {target}); refusing to upload it, since only weight files "
            f"(*.safetensors) are followed. If it is meant to be there, replace it by a plain copy "
            f"({_copy_command(path)}) and push again."
        )
    if not os.path.isfile(target):
        raise UserError(f"{path} is a symbolic link to {target}, which is not a file; nothing was pushed")
    logger.info("%s: a symbolic link; uploading the file it points to, %s", path.name, target)


def _copy_command(path: Path) -> str:
    src, tmp = shlex.quote(str(path)), shlex.quote(f"{path}.copy")
    return f"cp {src} {tmp} && mv {tmp} {src}"


def _pickle_hint(folder: Path) -> str:
    pickles = sorted(p.name for ext in ("bin", "pt", "pth", "pkl") for p in folder.glob(f"*.{ext}"))
    if not pickles:
        return ""
    return (
        f" ({', '.join(pickles)}: pickle files are never uploaded, since loading one can run code; save the "
        "weights as safetensors, e.g. `save_pretrained(folder)` with transformers >= 4.35)"
    )


def _check_safetensors(path: Path) -> None:
    """Only a whole safetensors file is uploaded: an 8-byte header length, then a JSON header that fits."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(size - 8, 100_000_000):
                raise ValueError(f"its header claims {length} bytes of a {size}-byte file")
            if not isinstance(json.loads(f.read(length)), dict):
                raise ValueError("its header is not a JSON object")
    except (OSError, struct.error, ValueError) as err:
        raise UserError(f"{path}: not a valid safetensors file, truncated or corrupt? ({err})") from None


def _copy_json(src: Path, dest: Path, edit: dict[str, Any] | None = None) -> None:
    data = artifacts.read_json(src)
    if edit and not isinstance(data, dict):
        raise UserError(f"{src}: a JSON {type(data).__name__}, expected an object")
    clean = strip_secrets(data)
    if clean != data:
        logger.warning("%s: removed secret-looking values from the uploaded copy", src.name)
    if edit:
        clean.update(edit)
    if clean == data:
        shutil.copyfile(src, dest)  # byte for byte: manifests are referenced by their sha256
    else:
        dest.write_text(json.dumps(clean, indent=2) + "\n")


def _copy_yaml(src: Path, dest: Path) -> None:
    try:
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{src}: not readable as YAML ({' '.join(str(err).split())[:300]})") from None
    clean = strip_secrets(data)
    if clean == data:
        shutil.copyfile(src, dest)
    else:
        logger.warning("%s: removed secret-looking values from the uploaded copy", src.name)
        dest.write_text(yaml.safe_dump(clean, sort_keys=True))


def _copy_weights(src: Path, dest: Path, link: bool) -> None:
    if link:  # a temporary staging folder: a hard link saves copying gigabytes (same file system only)
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)


def stage_files(
    folder: Path,
    dest: Path,
    *,
    repo_id: str | None = None,
    eval_dir: str | os.PathLike | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    link_weights: bool = False,
    secrets: Sequence[str] = (),
) -> list[str]:
    """Write into `dest` (an empty folder) exactly what is uploaded; returns the file names. Everything is
    checked (the card rendered, the files chosen, their names free of `secrets`) before the first file is
    written or named in the log."""
    text = card.render(
        folder, eval_dir=eval_dir, repo_id=repo_id, base_model_id=base_model_id, license=license, by="push"
    )
    selected = select_files(folder)
    for src in selected:
        _check_name(src.relative_to(folder), folder, secrets)
    for src in selected:
        target = dest / src.name
        if src.name == "adapter_config.json":
            edit = {"base_model_name_or_path": base_model_id} if base_model_id else None
            _copy_json(src, target, edit)
        elif src.suffix == ".json":
            _copy_json(src, target)
        elif src.suffix == ".yaml":
            _copy_yaml(src, target)
        elif src.suffix == ".safetensors":
            _copy_weights(src, target, link_weights)
        else:
            shutil.copyfile(src, target)
    (dest / "README.md").write_text(text)
    names = sorted(p.name for p in dest.iterdir())
    size = sum((dest / n).stat().st_size for n in names)
    logger.info("staged %d files (%.1f MB): %s", len(names), size / 1e6, ", ".join(names))
    info = card.inspect_folder(folder, base_model_id)
    if info.is_adapter and info.load_base and not lineage.is_hub_id(info.load_base):
        logger.warning(
            "the adapter's base %s is a local folder, so Hub users cannot load this adapter; push the base "
            "and pass --base-model-id ORG/BASE (the card says so too)",
            info.load_base,
        )
    return names


def _safetensors_header(path: Path) -> bytes:
    """Only the JSON header of a safetensors file can hold text (its metadata); the rest is numbers."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return f.read(min(length, 100_000_000))


def _check_name(name: Path, folder: Path, secrets: Sequence[str]) -> None:
    """A file's path in the repo is public too: a token in any of its parts (a shard named after it) is
    refused, and the message names the file with the token redacted."""
    if any(s and s in part for s in secrets for part in name.parts):
        shown = str(folder / name)
        for s in secrets:
            if s:
                shown = shown.replace(s, "<redacted>")
        raise UserError(
            f"{shown}: the file's name contains the Hub token; nothing was uploaded. Rename it and retry."
        )


def assert_no_secret(dest: Path, secrets: list[str]) -> None:
    """The last check before anything is sent: no staged file contains a token, in its bytes or its name."""
    needles = [s.encode() for s in secrets if s]
    for path in sorted(dest.iterdir()):
        _check_name(path.relative_to(dest), dest, secrets)
        data = _safetensors_header(path) if path.suffix == ".safetensors" else path.read_bytes()
        if any(n in data for n in needles):
            raise UserError(f"{path.name} contains the Hub token; nothing was uploaded. Remove it and retry.")


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def _token_if_any() -> str | None:
    """The login a dry run must not leak either, if there is one (a dry run needs none)."""
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # e.g. a failed OIDC exchange: nothing to compare against, not a reason to fail
        return None


def _live_secrets(token: str | None) -> list[str]:
    return [s for s in (token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if s]


def _hub_error(err: Exception, repo_id: str, token: str) -> UserError:
    """A failed Hub call as one readable line, never carrying the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause = _hub_cause(err) or err
    if isinstance(cause, OfflineModeIsEnabled):
        message = "HF_HUB_OFFLINE is set; unset it to push"
    else:
        message = _one_line(err)
        if cause is not err:  # e.g. "Error while uploading 'x' to the Hub." wrapping the HTTP error
            message = f"{message.rstrip('.')}: {_one_line(cause)}"
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, HfHubHTTPError) and status in (401, 403):
            message += f" (is the token valid and allowed to write to {repo_id}? {LOGIN_HINT})"
    return UserError(strip_secrets(f"push to {repo_id} failed: {message}").replace(token, "<redacted>"))


def _one_line(err: BaseException) -> str:
    """The error's text on one line, without the generic "For more information" link lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(line for line in lines if not line.startswith("For more information check"))
    return text[:500] or type(err).__name__


def _hub_cause(err: BaseException) -> BaseException | None:
    """The Hub, network or metadata error behind `err` (huggingface_hub wraps upload failures), if any."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, HfHubHTTPError | OfflineModeIsEnabled | ValueError) or _is_transport_error(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_transport_error(err: BaseException) -> bool:
    """Connection failures of whichever HTTP library this huggingface_hub version uses."""
    return type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def upload(
    staged: Path, files: list[str], repo_id: str, token: str, *, private: bool, revision: str, message: str
) -> str:
    """Create the repo if needed, then one commit with every staged file; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("repo %s ready (an existing repo keeps its visibility)", url)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(staged / n)) for n in files]
        info = api.create_commit(
            repo_id, operations, commit_message=message, revision=revision, repo_type="model"
        )
    except Exception as err:
        if _hub_cause(err) is None:
            raise  # a bug, not a Hub answer: keep its traceback
        raise _hub_error(err, repo_id, token) from None
    logger.info("committed %d files to %s: %s", len(files), repo_id, info.commit_url)
    return info.commit_url


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: str | os.PathLike | None = None,
    eval_dir: str | os.PathLike | None = None,
    revision: str = "main",
    commit_message: str | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    overwrite: bool = False,
) -> PushResult:
    """Upload `folder` to `repo_id`, or with `dry_run` stage it there and upload nothing. The dry-run folder
    is replaced: it must be new, empty or an earlier dry run's, unless `overwrite`."""
    if not lineage.is_hub_id(repo_id) or "/" not in repo_id:
        raise UserError(f"--repo-id {repo_id!r}: expected ORG/NAME (a user or organisation, then a name)")
    folder = check_artifact(folder)
    stage_kwargs = dict(repo_id=repo_id, eval_dir=eval_dir, base_model_id=base_model_id, license=license)
    if dry_run is not None:
        out = Path(dry_run)
        _check_dry_run_folder(folder, out, overwrite)
        with (
            artifacts.new_parents(out),
            _disk_errors("--dry-run", out),
            artifacts.atomic_dir(out, overwrite=overwrite, what="--dry-run") as tmp,
        ):
            secrets = _live_secrets(_token_if_any())
            files = stage_files(folder, tmp, secrets=secrets, **stage_kwargs)
            assert_no_secret(tmp, secrets)
        logger.info("dry run: wrote %s; nothing was uploaded", out)
        return PushResult(repo_id, files, out, None)

    token = _token()  # before any work: a missing login is the likeliest mistake
    secrets = _live_secrets(token)
    stage = lineage.read_manifest(folder)["stage"]
    message = commit_message or f"Upload hftune {stage} artifact"
    with tempfile.TemporaryDirectory(prefix="hftune-push-") as tmp:
        staged = Path(tmp)
        with _disk_errors("staging the upload in", staged):
            files = stage_files(folder, staged, link_weights=True, secrets=secrets, **stage_kwargs)
        assert_no_secret(staged, secrets)
        url = upload(staged, files, repo_id, token, private=private, revision=revision, message=message)
    return PushResult(repo_id, files, None, url)


@contextlib.contextmanager
def _disk_errors(what: str, where: Path) -> Iterator[None]:
    """A folder that cannot be written as one line (whatever was staged is gone by then). A full disk goes
    on to the CLI, which says so and exits 1: not the user's mistake."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
        culprit = f": {err.filename}" if err.filename else ""
        raise UserError(f"{what} {where}: {err.strerror or err}{culprit}; nothing was written") from None


def _check_dry_run_folder(folder: Path, out: Path, overwrite: bool) -> None:
    """--dry-run replaces OUTDIR: only a new or empty folder, or one an earlier dry run staged (unless
    `overwrite`); never the artifact being pushed (nor a folder inside or around it). Stricter than
    `artifacts.check_output`, which lets a stage replace any hftune folder: a dry run must not replace
    another stage's artifact either."""
    src, dst = folder.resolve(), out.resolve()
    if dst == src or dst in src.parents or src in dst.parents:
        raise UserError(f"--dry-run {out}: must be a folder outside {folder} (it is replaced)")
    if overwrite:
        return
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--dry-run {out}: not a folder; give a new folder for the staged files")
    not_staged = _not_staged(out) if out.is_dir() else None
    if not_staged:
        raise UserError(
            f"--dry-run {out}: the folder exists and hftune did not write it as a dry run ({not_staged}); a "
            "dry run replaces its folder with everything in it, so nothing was changed. Give a new or empty "
            "folder, or an earlier dry run's (or pass --overwrite to replace it)."
        )


def _not_staged(out: Path) -> str | None:
    """What in the folder `out` a dry run did not write (None: nothing, `out` is empty or an earlier dry
    run's, with only the files an upload holds and the card `push` wrote)."""
    entries = sorted(out.iterdir())
    if not entries:
        return None
    allowed = {*ADAPTER_FILES, *MODEL_FILES, *TOKENIZER_FILES, *RECORD_FILES, "README.md"}
    foreign = [
        p.name
        for p in entries
        if p.is_symlink() or not p.is_file() or (p.name not in allowed and p.suffix != ".safetensors")
    ]
    if foreign:
        more = f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
        return f"it holds {', '.join(foreign[:4])}{more}"
    found = card.marker(out / "README.md")
    if found is None or found[0] != "push":
        return "it has no README.md written by `hftune push`"
    return None


def summary(result: PushResult) -> str:
    if result.commit_url is None:
        return f"dry run: {len(result.files)} files staged in {result.staged} (nothing uploaded)"
    return f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}"
