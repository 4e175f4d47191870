"""Runs of a pipeline side by side: the runs that take nothing from each other (the seed runs of one RL stage,
the reward model beside DPO) train at the same time in processes of their own, each with its share of the
cores, and give the same artifacts as one after another.

Why: a tiny model does not keep two cores busy (two torch threads made a quickstart PPO run at most 1.3x
faster than one; two runs side by side, one thread each, ran each about 1.3x slower than alone, so the two
cores did about 1.5x the work), and the quickstart's three PPO seeds are a third of its time. Nothing is
computed differently: each run seeds itself, and on CPU torch's kernels give the same bits on 1 or 2 threads
(checked on the quickstart: the same table and byte-identical weights in every stage).

How: a fork server (`multiprocessing`'s forkserver) imports the stage code once, before any run; each run is a
child forked from it, so it starts in milliseconds, without paying the imports again (about 4 s of CPU a
process), and without inheriting the state of a process that has already trained (its OpenMP thread pool,
which must not cross a fork, its CUDA context, its memory). The child runs the stage exactly as
`hftune <stage>` would, from the config the pipeline parsed, writes its progress to a log of its own
(`<output_dir>/.pipeline/<run>.log`: interleaved progress bars read as noise) and its summary to a file the
pipeline prints when the run ends.

How many at once (`max_parallel`): on CPU, twice as many as there are cores (RUNS_PER_CORE), one thread each,
as far as memory allows (each run's estimate from `hftune.stages.memory` plus what a Python process with
torch and TRL holds); with a GPU one at a time, since the runs would share its memory and its compute.
Threads: the cores are shared out (`OMP_NUM_THREADS`, when set, caps a run's share).
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hftune.stages.memory import host_available_memory as available_memory

logger = logging.getLogger(__name__)

GIB = 1024**3
# What a run's process holds besides the estimate's weights, optimizer state and activations: the Python
# process with torch, transformers, TRL and datasets imported (measured: 0.7 GiB resident for a quickstart PPO
# run), with room for the allocator's slack.
PROCESS_MEMORY = 1.5 * GIB
# Runs a core may hold at once by default. With no more runs than cores, a core idles once fewer runs than
# cores are left: the quickstart's third PPO seed trained alone on one thread for 26 s beside an idle core.
# With all three seeds started together the operating system shares the two cores among them, and no core
# idles while work is left: the seeds took 43.8 and 39.4 s together instead of 53.2 and 48.5 s (two, then
# the third; alternated runs on 2 vCPUs, one thread a run, the same weights).
RUNS_PER_CORE = 2
# The modules a child needs whatever its stage (imported by the fork server once); each run's own stage module
# is added to them.
PRELOAD = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "transformers.trainer",
    "hftune.logs",
)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def thread_cap() -> int:
    """The most threads one run may use: `OMP_NUM_THREADS` (the CLI sets it to the core count when unset)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or cores()))
    except ValueError:
        return cores()


def threads_each(max_parallel: int) -> int:
    """A run's share of the cores when `max_parallel` run at once (at least 1, at most the cap)."""
    return max(1, min(thread_cap(), cores() // max(1, max_parallel)))


@dataclass
class Parallelism:
    runs: int  # how many runs may train at once
    why: str  # what decided it, for the plan

    def describe(self) -> str:
        if self.runs == 1:
            return f"one run at a time ({self.why})"
        threads = threads_each(self.runs)
        return (
            f"up to {self.runs} runs side by side, {threads} thread{'s' * (threads > 1)} each ({self.why}); "
            "`max_parallel: 1` runs them one after another"
        )


def default_parallelism(estimates: list[float | None], gpu: bool, most: int | None = None) -> Parallelism:
    """How many runs fit at once: one with a GPU; on CPU, no more than RUNS_PER_CORE a core, nor than the
    memory holds (each run's estimate plus PROCESS_MEMORY; an unknown estimate counts as the process
    alone), nor than `most`, the most runs the plan can ever train at once. That cap is what gives each run
    its share of a machine with more cores than the plan has runs to fill (`threads_each`): the
    quickstart's four runs side by side take two threads each on 8 cores, not one each beside 4 idle ones."""
    if gpu:
        return Parallelism(1, "a GPU: runs side by side would share its memory and compute")
    n_cores = cores()
    need = max((e or 0.0 for e in estimates), default=0.0) + PROCESS_MEMORY
    free = available_memory()
    by_cores = RUNS_PER_CORE * n_cores
    by_memory = by_cores if free is None else int(free // need)
    runs = max(1, min(by_cores, by_memory))
    by_plan = ""
    if most is not None and most < runs:
        runs, by_plan = max(1, most), f", at most {most} at once in this plan"
    memory = "" if free is None else f", {free / GIB:.0f} GiB free, ~{need / GIB:.1f} GiB a run"
    return Parallelism(runs, f"{n_cores} cores, {RUNS_PER_CORE} runs a core{by_plan}{memory}")


def start_server(stage_modules: list[str]) -> None:
    """Start the fork server now: it imports the stage code while the pipeline parses its stages (both only
    import, so neither slows the other), and the first run side by side does not wait for it."""
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload([*PRELOAD, *stage_modules])
    forkserver.ensure_running()


def _end_server() -> None:
    """At exit, end the fork server at once (SIGTERM, which it leaves at the default: no teardown). Left alone
    it notices the pipeline is gone and then tears its own interpreter down, 1-1.5 s with torch imported,
    holding the pipeline's standard output open all the while (`hftune pipeline ... | tee log` waited for
    it). It holds nothing worth finalising: every run it forked was waited for, and they are not its to
    end (each is a process of its own)."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:  # already gone
            pass


# Registered once, whether or not a server starts (without one, or in the server itself, there is no pid).
atexit.register(_end_server)


@dataclass
class Job:
    key: str
    process: Any  # multiprocessing.Process
    log: Path
    summary: Path
    threads: int
    started: float

    @property
    def elapsed(self) -> float:
        return time.time() - self.started


def start(
    key: str,
    stage_name: str,
    cfg: Any,
    *,
    resume: bool,
    threads: int,
    folder: Path,
    freeze_gc: bool,
    debug: bool,
) -> Job:
    """Start one run in a child of the fork server; its log and summary go to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    log, summary = folder / f"{key}.log", folder / f"{key}.summary"
    log.write_text("")
    summary.unlink(missing_ok=True)
    # The server's environment and folder are those of the moment it started (a test, or a second pipeline
    # in the same process, may have changed them since): the child takes the caller's.
    context = dict(
        environ=dict(os.environ), cwd=os.getcwd(), threads=threads, freeze_gc=freeze_gc, debug=debug
    )
    process = multiprocessing.get_context("forkserver").Process(
        target=_child, args=(stage_name, cfg, resume, str(log), str(summary), context), name=f"hftune-{key}"
    )
    process.start()
    return Job(key, process, log, summary, threads, time.time())


def wait_any(jobs: list[Job]) -> Job:
    """Block until one of the jobs ends; that job (its process joined)."""
    sentinels = {job.process.sentinel: job for job in jobs}
    ready = wait(list(sentinels))
    job = sentinels[ready[0]]
    job.process.join()
    return job


def log_tail(job: Job, lines: int = 25) -> str:
    """The end of a run's log, for the report of a failed run (progress bars' carriage returns resolved)."""
    text = job.log.read_text(errors="replace") if job.log.is_file() else ""
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(f"  | {line}" for line in shown[-lines:] if line.strip())


def _child(stage_name: str, cfg: Any, resume: bool, log: str, summary: str, context: dict[str, Any]) -> None:
    """One run in a child of the fork server: what `hftune <stage> --config` does, from the parsed config."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(context["environ"])
    os.environ["OMP_NUM_THREADS"] = str(context["threads"])
    os.chdir(context["cwd"])
    import torch

    torch.set_num_threads(context["threads"])
    if context["freeze_gc"]:
        gc.freeze()  # the imported libraries' objects, inherited from the server: never scanned again
    from hftune import artifacts, logs
    from hftune.errors import UserError
    from hftune.stages import registry

    logs.setup(context["debug"])
    module = registry.load(stage_name)
    try:
        with artifacts.output_lock(cfg.output_dir):
            result = module.run(cfg, resume=resume)
    except UserError as err:
        print(f"hftune: error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    Path(summary).write_text(module.summary(result))
