"""Ending the `hftune` process without tearing the interpreter down.

Measured on 2 cores: once torch, transformers and TRL are imported, Python's finalisation (every module's
namespace cleared object by object, the extensions' destructors) takes 1.0-1.5 s after the command's work
is done, on every command that trained, evaluated or only parsed a stage config. Nothing hftune leaves
depends on it: every file it writes is closed and renamed into place before the command returns. So the
`hftune` entry point runs the exit handlers a normal exit runs (logging flushed, the pipeline's fork server
ended, multiprocessing's children joined), flushes the standard streams and ends the process at once.

It falls back to a normal exit whenever another thread that a normal exit would wait for is still alive,
and in a process of a distributed launch (torchrun, accelerate), whose process group is left to the
interpreter's own teardown as before.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(code: int | None) -> None:
    """End the process with `code`: at once where that is safe (see the module), otherwise `sys.exit`."""
    if not _safe_to_skip_teardown():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hftune ... | head`) or a closed stream
            pass
    os._exit(code or 0)


def _safe_to_skip_teardown() -> bool:
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return False
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized())
