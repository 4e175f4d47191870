"""The `hftune` entry point ends the process without the interpreter's teardown where that is safe
(`hftune.process_exit`): the exit code, the exit handlers and buffered output survive; a live thread or a
distributed process group gets a normal exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# An object whose finaliser runs only in the interpreter's teardown: it prints "teardown" if that ran.
PROLOGUE = """
import atexit, sys, threading, time
from hftune.process_exit import exit_now

class Witness:
    def __del__(self):
        sys.stdout.write("teardown\\n")
        sys.stdout.flush()

witness = Witness()
atexit.register(lambda: print("exit handler ran"))
print("buffered output")  # to a pipe: block-buffered, lost unless flushed
"""


def _run(body: str) -> subprocess.CompletedProcess:
    script = PROLOGUE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_skips_the_teardown_but_keeps_the_code_the_handlers_and_the_output():
    done = _run("exit_now(3)")
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["buffered output", "exit handler ran"]


def test_a_live_thread_gets_a_normal_exit_that_waits_for_it():
    done = _run(
        """
        def late():
            time.sleep(0.3)
            print("thread finished")
        threading.Thread(target=late).start()
        exit_now(0)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "thread finished" in done.stdout and "teardown" in done.stdout


def test_a_daemon_thread_does_not_hold_the_exit():
    done = _run("threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); exit_now(0)")
    assert done.returncode == 0 and "teardown" not in done.stdout


def test_a_process_of_a_distributed_launch_exits_normally():
    # Stands in for torch.distributed with a process group up (the real one needs torch and a launch).
    done = _run(
        """
        import types
        sys.modules["torch.distributed"] = types.SimpleNamespace(is_available=lambda: True,
                                                                 is_initialized=lambda: True)
        exit_now(0)
        """
    )
    assert done.returncode == 0 and "teardown" in done.stdout


def test_the_hftune_command_exits_with_mains_code():
    done = subprocess.run(
        [sys.executable, "-m", "hftune", "sft", "--config", "/nonexistent/hftune.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "/nonexistent/hftune.yaml" in done.stderr
