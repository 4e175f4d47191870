"""A pipeline run's inputs, fingerprinted from what the pipeline knows before it parses anything: so that a
rerun with nothing to do answers at once, without importing torch, transformers or TRL (seconds of imports).

The pipeline's own fingerprint of a run (`pipeline.decide`) hashes the resolved config, the data and the
parent artifacts; resolving the config takes TRL's config classes. The quick fingerprint hashes what that
resolved config and data are made from instead: the stage's merged values as read from YAML, the files they
name (their content; a recipe YAML's own files too), the parents' manifests, the launch settings, the
library versions and hftune's own files (its defaults live in code), the GPUs the hardware defaults look at,
and the environment variables that steer them. When it equals the one recorded beside the full fingerprint,
the full fingerprint is the recorded one too; anything it cannot see makes it differ, and the pipeline then
takes the full path. A false "changed" costs a parse; a false "unchanged" would skip a stage that should
run, so this module errs on the side of "changed".

Imports nothing beyond the standard library and PyYAML (`tests/test_pipeline_cached.py` checks that the
cached rerun never imports torch, transformers or TRL).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

# The libraries whose versions the resolved config and the trained artifact depend on (their defaults, their
# behaviour), read from the installed metadata (no import).
LIBRARIES = ("hftune", "trl", "transformers", "peft", "torch", "accelerate", "datasets", "liger-kernel")
# Environment variables that change hardware defaults or TRL's resolved arguments (which devices are
# visible, accelerate's launch settings, which transformers reads in TrainingArguments), or where hftune
# builds its `tiny:` models. Not PYTORCH_*: torch sets some of those itself once imported
# (PYTORCH_NVML_BASED_CUDA_CHECK), so a process that trained would read other values than a fresh one.
ENV_PREFIXES = (
    *("ACCELERATE_", "FSDP_", "TORCHELASTIC_", "HFTUNE_", "CUDA_", "HIP_", "ROCR_", "ZE_"),
    *("TRL_", "TRANSFORMERS_"),
)
ENV_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
# Set by hftune itself when a stage module is imported (hftune.stages.dpo quietens TRL's experimental-API
# warning): whether it is set yet says which modules this process imported, not what a run is made from, so
# a cached rerun in a fresh process must not read it as a change.
OWN_ENV = frozenset({"TRL_EXPERIMENTAL_SILENCE"})
# Files up to this size are hashed by content; larger ones (a model's weights named by path) by size and
# modification time, so that a rerun never reads gigabytes to find that nothing changed.
CONTENT_LIMIT = 64 * 2**20
# A folder a value names is signed by its files' names, sizes and modification times, up to this many.
FOLDER_LIMIT = 2000
_CALLABLE = re.compile(r"^([A-Za-z_][\w.]*):[A-Za-z_]\w*$")  # `module:function` (verifiers, transforms)


def environment() -> dict[str, Any]:
    """What every run of one pipeline invocation shares: read once, before any stage's `env:` block is set
    (a rerun reads it at the same point)."""
    return {
        "versions": {name: _version(name) for name in LIBRARIES},
        # Every installed package too (`report_to: all` reports to whichever integrations are installed).
        "installed": _installed(),
        "python": sys.version,
        "hftune_files": _package_hash(Path(__file__).parent),
        "hardware": _hardware(),
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and k not in OWN_ENV
        },
        "cwd": os.getcwd(),  # relative paths in the values are read from here
    }


def fingerprint(
    values: dict[str, Any], *, skip: set[str], parents: Any, launch: Any, shared: dict[str, Any]
) -> dict[str, str]:
    """The quick fingerprint of one run: `values` its merged config (`skip`: keys that name where it writes,
    and the handoff paths, whose artifacts `parents` stands for), `launch` its launch settings, `shared`
    what `environment()` returned. One hash a part, so that a rerun can say what changed."""
    kept = {k: v for k, v in values.items() if k not in skip}
    parts = {
        "values": values,
        "files": _named_files(kept, base=None, depth=0),
        "parents": parents,
        "launch": launch,
        **shared,
    }
    return {name: _digest(part) for name, part in parts.items()}


# The parts, as a rerun names them when one changed.
PARTS = {
    "values": "its config",
    "files": "the files it names",
    "parents": "its parent artifacts",
    "launch": "its launch settings",
    "versions": "the library versions",
    "installed": "the installed packages",
    "python": "the Python version",
    "hftune_files": "hftune's own files",
    "hardware": "the GPUs",
    "env": "the environment variables",
    "cwd": "the current folder",
}


def changed(recorded: Any, now: dict[str, str]) -> list[str]:
    """What differs between a recorded quick fingerprint and `now`, in words."""
    if not isinstance(recorded, dict):
        return ["no quick fingerprint recorded"]
    return [PARTS.get(k, k) for k in sorted({*recorded, *now}) if recorded.get(k) != now.get(k)]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _installed() -> list[str]:
    """The installed distributions with their versions (`trl-1.16.0.dist-info`, ...): the folder names in the
    interpreter's site-packages, read in a millisecond (importlib.metadata takes a hundred). Not every
    sys.path entry: those differ between a script, `python -m` and a test runner (the current folder, the
    tests' folder) while the installed packages do not; PYTHONPATH's packages are in `versions`."""
    folders = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    names = set()
    for folder in folders:
        try:
            names.update(n for n in os.listdir(folder) if n.endswith(".dist-info"))
        except OSError:  # a missing folder
            continue
    return sorted(names)


def _package_hash(folder: Path) -> str:
    """hftune's own files: its code (an editable install keeps its version while its defaults change) and
    the built-in recipes, their data and the eval suites (`resources/`: links to the checkout's folders, so
    the links are followed). About 150 small files: milliseconds."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(root, name)
            digest.update(
                f"{path.relative_to(folder)}\n".encode() + hashlib.sha256(path.read_bytes()).digest()
            )
    return digest.hexdigest()


def _hardware() -> dict[str, Any]:
    """The GPUs the hardware defaults (bf16, use_cpu, pin memory, Liger) would find, without torch: the NVIDIA
    driver's GPU list and the device nodes this process was given, and AMD's compute device; which of them
    are visible is in the environment (CUDA_VISIBLE_DEVICES, ...)."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    return {
        "nvidia_gpus": sorted(p.name for p in nvidia.iterdir()) if nvidia.is_dir() else [],
        "nvidia_devices": sorted(p.name for p in Path("/dev").glob("nvidia*")),
        "amd_kfd": Path("/dev/kfd").exists(),
    }


def _named_files(value: Any, *, base: Path | None, depth: int) -> dict[str, Any]:
    """path -> signature of every file or folder a string in `value` names (from the current folder, or
    beside the YAML file that named it), and of the module file of each `module:function`; a YAML file's own
    strings are followed one level (a recipe names its data file and its transform module)."""
    found: dict[str, Any] = {}
    for text in _strings(value):
        for path in _candidates(text, base):
            key = str(path)
            if key in found:
                continue
            found[key] = _signature(path)
            if depth == 0 and path.is_file() and path.suffix in (".yaml", ".yml"):
                try:
                    inner = yaml.safe_load(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, yaml.YAMLError):
                    continue  # the content hash above stands for it; the parse reports the problem
                for inner_key, sig in _named_files(inner, base=path.parent, depth=1).items():
                    found.setdefault(inner_key, sig)
    return found


def _strings(value: Any) -> list[str]:
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return out


def _candidates(text: str, base: Path | None) -> list[Path]:
    if not text or len(text) > 1024 or "\n" in text or text.strip() in (".", "..", "/", "~"):
        return []
    if match := _CALLABLE.match(text):
        return _module_files(match.group(1), base)
    roots = [base, None] if base is not None else [None]
    out = []
    for root in roots:
        path = Path(text) if root is None else root / text
        try:
            if path.exists():
                out.append(path.absolute())
        except OSError:  # a name too long for the file system: not a file
            pass
    return out


def _module_files(module: str, base: Path | None) -> list[Path]:
    """The file of `module` (found as Python would, without importing it): beside the YAML that named it,
    in the current folder, or on sys.path."""
    relative = module.replace(".", "/")
    for folder in ([base] if base else []) + [Path.cwd()] + [Path(p) for p in sys.path if p]:
        for candidate in (folder / f"{relative}.py", folder / relative / "__init__.py"):
            if candidate.is_file():
                return [candidate.absolute()]
    return []


def _signature(path: Path) -> Any:
    try:
        if path.is_file():
            stat = path.stat()
            if stat.st_size > CONTENT_LIMIT:
                return ["large", stat.st_size, stat.st_mtime_ns]
            return hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_dir():
            entries = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    file = Path(root, name)
                    stat = file.stat()
                    entries.append([str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns])
                    if len(entries) >= FOLDER_LIMIT:
                        return ["folder", path.stat().st_mtime_ns, entries]
            return ["folder", path.stat().st_mtime_ns, entries]
    except OSError as err:  # unreadable: the parse reports it
        return ["unreadable", str(err)]
    return None
