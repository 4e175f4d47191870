"""Stage outputs: atomic folders, manifests, lineage, and the rules for where hftune may write.

A stage writes into a temporary sibling folder and renames it into place only when everything,
manifest last, is written. A folder without `manifest.json` is never a finished stage.
Checkpoints for `--resume` live in `<output_dir>.work/` until the stage completes.

hftune never replaces a folder it did not write: an output path must be new, empty, or a folder with
hftune's manifest, unless the user passes `--overwrite` (`check_output`). One run at a time writes an
output path (`output_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from hftune.config import strip_secrets
from hftune.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_KEYS = {"stage", "created", "config_sha256", "libraries"}  # in every manifest hftune writes
TINY_MARKER = "hftune_tiny.json"  # what `hftune tiny` writes instead of a manifest
RUN_RECORD = "hftune-run.json"  # in a work folder: the config and data a run started with (see --resume)
LIBRARIES = ("hftune", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")
# What hftune itself puts in a stage's work folder; a work folder holding only these is hftune's.
_WORK_ENTRIES = re.compile(
    r"^(checkpoint-\d+|prepared-data-node\d+|init-node\d+|hftune-[\w.-]+|\..*\.(tmp|old)-\d+|runs|[\w-]+\.jsonl)$"
)


def is_hftune_folder(path: str | os.PathLike) -> bool:
    """A folder hftune wrote: its manifest.json is hftune's (a web app's manifest.json is not), or it is a
    tiny model built by `hftune tiny`."""
    path = Path(path)
    if (path / TINY_MARKER).is_file():
        return True
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.keys() >= MANIFEST_KEYS


def _is_hftune_work(path: Path) -> bool:
    return (path / RUN_RECORD).is_file() or all(_WORK_ENTRIES.match(p.name) for p in path.iterdir())


def _some_entries(path: Path, n: int = 4) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_output(
    final: str | os.PathLike,
    *,
    overwrite: bool = False,
    what: str = "output_dir",
    inputs: Iterable[str | os.PathLike | None] = (),
    work: bool = False,
) -> None:
    """Refuse, before any work, an output path whose replacement would lose something the user made.

    `final` may be new, an empty folder, or a folder hftune wrote; anything else (a checkout, a folder of
    the user's, a file) only with `overwrite`. Never, even with `overwrite`: the current folder or one
    that contains it, the home folder or a filesystem root, a symlink, or a folder that holds one of the
    run's `inputs` (its model, data or config would be replaced by the output). `work=True` checks the
    stage's `<final>.work` folder too (its checkpoints are removed when the stage finishes)."""
    final = Path(final)
    resolved = final.resolve()
    flag = "--overwrite"
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UserError(
            f"{what} {final}: is the current folder or contains it; hftune replaces its output folder as a "
            f"whole, so give it a folder of its own (e.g. {Path(final, 'run')})"
        )
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise UserError(f"{what} {final}: hftune will not replace your home folder or a filesystem root")
    for source in inputs:
        if not source or not Path(str(source)).exists():
            continue  # a Hub id, or nothing
        src = Path(str(source)).resolve()
        if src == resolved or resolved in src.parents:
            raise UserError(
                f"{what} {final}: holds {source}, an input of this run; the output replaces the folder, "
                "so write it somewhere else"
            )
    if final.is_symlink():
        raise UserError(f"{what} {final}: is a symbolic link; name the real folder ({final.resolve()})")
    if final.exists() and not overwrite:
        if not final.is_dir():
            raise UserError(
                f"{what} {final}: is a file, not a folder; hftune will not replace it (nothing was changed). "
                f"Choose another path, or pass {flag} to replace it."
            )
        if any(final.iterdir()) and not is_hftune_folder(final):
            raise UserError(
                f"{what} {final}: the folder exists and hftune did not write it (it has no hftune "
                f"manifest.json; it holds {_some_entries(final)}). Nothing was changed. Choose a new "
                f"folder, or pass {flag} to replace it and everything in it."
            )
    wdir = work_dir(final)
    hftune_work = wdir.is_dir() and not wdir.is_symlink() and _is_hftune_work(wdir)
    if work and wdir.exists() and not overwrite and not hftune_work:
        raise UserError(
            f"{what} {final}: {wdir} exists and hftune did not write it (hftune keeps a run's "
            f"checkpoints there and removes the folder when the run ends). Nothing was changed. Move "
            f"it, choose another {what}, or pass {flag}."
        )


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike, *, collective: bool = False, overwrite: bool = False, what: str = "output"
) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` only if the block finishes without error.

    `final` is checked (`check_output`) on entry and again just before it is replaced: something that
    appeared there meanwhile is not deleted either (the finished folder is then kept beside it).
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
        check_output(final, overwrite=overwrite, what=what)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
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
        try:
            check_output(final, overwrite=overwrite, what=what)
        except UserError as err:
            kept = final.parent / f"{final.name}.hftune-new"
            if not kept.exists():
                tmp.rename(kept)
                raise UserError(f"{err}\nThe finished output is in {kept}.") from None
            raise
        _replace(tmp, final)
    if collective:
        distributed.barrier()  # nobody goes on before the artifact is in place


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Remove the `.NAME.tmp-PID` / `.NAME.old-PID` folders a killed save left beside `final` (only those
    of processes that no longer run: a live one may be another run's save in progress)."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)$")
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        m = pattern.match(entry.name)
        if m and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def _replace(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)  # a file the user let --overwrite replace


@contextlib.contextmanager
def new_parents(path: Path) -> Iterator[None]:
    """Create the missing folders above `path`; if the block fails, remove those of them still empty, so a
    failed write leaves nothing behind."""
    made = []
    parent = path.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    try:
        for folder in reversed(made):
            folder.mkdir()
    except OSError as err:
        _remove_empty(made)
        raise UserError(
            f"{path}: could not create {made[-1] if made else path.parent} ({err.strerror or err})"
        ) from None
    try:
        yield
    except BaseException:
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def output_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold `.NAME.lock` beside `final` for the whole run: a second run on the same output path stops at
    once, naming the first one's process, instead of both writing one work folder (the last rename would
    win). The lock is the kernel's (flock), so a killed run never leaves a stale one behind; the file goes
    when the run ends. Parent folders made for the lock go again if the run fails (`new_parents`)."""
    final = Path(final).absolute()  # `.` and `..` locked by their real names (and refused by check_output)
    if final.name in ("", ".", ".."):
        final = final.resolve()
    if not final.name:  # a filesystem root: nothing beside it to lock, and check_output refuses it
        yield
        return
    with new_parents(final), _flock(final.parent / f".{final.name}.lock", final):
        yield


@contextlib.contextmanager
def _flock(path: Path, final: Path) -> Iterator[None]:
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{final}: another hftune run (process {holder}) is writing this output; wait for it to "
                "finish or choose another output path"
            ) from None
        # The holder before us may have removed the file between our open and our lock: retry on a new one.
        if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def no_space_message(err: BaseException) -> str | None:
    """The message for a full disk, whichever library hit it (an OSError, or torch / safetensors wrapping
    one in their own error): exit 1, since it is not the user's mistake, but not a bug to show a traceback
    for either. None when `err` is not about disk space."""
    seen = err
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "No space left on device" in str(
            seen
        ):
            path = getattr(seen, "filename", None)
            if path:
                return (
                    f"no space left on device {_mount_point(Path(path))} while writing {path}; free some "
                    "space and run the same command again"
                )
            return "no space left on device; free some space and run the same command again"
        seen = seen.__cause__ or seen.__context__
    return None


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() or not os.path.ismount(path):
        if path.parent == path:
            break
        path = path.parent
    return path


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


def read_json(path: Path, what: str = "") -> Any:
    """A JSON file of the user's folder, or a UserError that names it (never a traceback)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: not readable as JSON{what} ({err})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a config, an adapter config, a manifest); UserError if not."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__}, expected an object")
    return data


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(path) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def library_versions() -> dict[str, str]:
    from hftune import __version__

    # hftune's own version even when it runs from a checkout that was never pip-installed.
    versions = {"python": platform.python_version(), "hftune": __version__}
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
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the completion manifest; call it last, inside `atomic_dir`. `run`: how the training actually
    ran (processes, engine, mixed precision, device), for stages that train."""
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_sha256": config_hash,
        "parents": parents,
        "data": data,
        "seed": seed,
        **({"run": run} if run is not None else {}),
        "libraries": library_versions(),
        "git_revision": git_revision(),
        "wall_time_s": round(time.time() - started, 2),
        "metrics": metrics,
        "files": sorted(p.name for p in out.iterdir()),
    }
    write_json(out / MANIFEST, manifest)
    return manifest
