"""Stage outputs: atomic folders, manifests, and lineage.

A stage writes into a temporary sibling folder and renames it into place only when everything,
manifest last, is written. A folder without `manifest.json` is never a finished stage.
Checkpoints for `--resume` live in `<output_dir>.work/` until the stage completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from hftune.config import strip_secrets

MANIFEST = "manifest.json"
LIBRARIES = ("hftune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, collective: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` only if the block finishes without error.

    `collective=True` is for a training stage's artifact in a multi-process run: every process enters
    (saving a sharded FSDP / ZeRO-3 model needs them all) and gets the same folder, but only the main
    process creates it, writes into it (callers check `distributed.is_main_process()`) and renames it.
    """
    from hftune import distributed

    final = Path(final)
    main = not collective or distributed.is_main_process()
    pid = distributed.broadcast(os.getpid()) if collective else os.getpid()
    tmp = final.parent / f".{final.name}.tmp-{pid}"
    if main:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if collective:
        distributed.barrier()
    try:
        yield tmp
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if collective:
        distributed.barrier()  # every process has done its part of the save
    if main:
        _replace(tmp, final)
    if collective:
        distributed.barrier()  # nobody goes on before the artifact is in place


def _replace(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def work_dir(final: str | os.PathLike) -> Path:
    """Where a stage keeps checkpoints while it runs (kept after a crash so `--resume` can continue)."""
    final = Path(final)
    return final.parent / f"{final.name}.work"


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_text(path: Path, text: str) -> None:
    """Write a file atomically: a reader (or a crash) never sees half of it, and no temporary file is left
    behind; the pid keeps concurrent writers apart."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(strip_secrets(data), indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(path) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest_sha256(folder: str | os.PathLike) -> str | None:
    """The hash by which lineage names a finished artifact (None: not a finished hftune artifact)."""
    manifest = Path(folder) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def parent_ref(name_or_path: str, role: str) -> dict[str, Any]:
    """How a manifest names an input model: its path or id, and its own manifest hash if it has one."""
    ref: dict[str, Any] = {"role": role, "name_or_path": name_or_path}
    digest = manifest_sha256(name_or_path)
    if digest is not None:
        ref["manifest_sha256"] = digest
        ref["stage"] = read_manifest(name_or_path).get("stage")
    return ref


def write_manifest(
    out: Path,
    *,
    stage: str,
    config_hash: str,
    parents: list[dict[str, Any]],
    data: dict[str, Any],
    metrics: dict[str, Any],
    seed: int,
    started: float,
) -> dict[str, Any]:
    """Write the completion manifest; call it last, inside `atomic_dir`."""
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_sha256": config_hash,
        "parents": parents,
        "data": data,
        "seed": seed,
        "libraries": library_versions(),
        "git_revision": git_revision(),
        "wall_time_s": round(time.time() - started, 2),
        "metrics": metrics,
        "files": sorted(p.name for p in out.iterdir()),
    }
    write_json(out / MANIFEST, manifest)
    return manifest
