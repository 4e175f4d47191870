"""`hftune pipeline`: the whole recipe from one config. Stages run in order, each in
`<output_dir>/<stage>/`, with the paths between them (SFT -> reward model -> policy -> eval) filled in.

    hftune pipeline --config configs/tiny/pipeline.yaml [--dry-run] [--force sft]

A pipeline config names `output_dir` and a list of `stages`; each stage is `{stage: NAME, config: FILE}`
plus any keys of that stage's config inline (inline keys override the file). The keys that hand one
stage's output to the next are the pipeline's to fill and may not be typed. A stage is skipped when its
finished artifact was made from the same resolved config, the same data and the same parent artifacts
(recorded in `<output_dir>/pipeline.json`; a rerun where nothing changed answers from that ledger at
once, without loading TRL: see `hftune.quick_fingerprint`); `--force STAGE` re-runs it and every stage that
takes its output (directly or through another stage). An interrupted stage (a crash, `kill -9`) resumes from
its last checkpoint when the same command runs again. The plan (what will run, be skipped or resume) is
printed before the first stage starts; the last lines say how long the pipeline and each run took.

A training stage entry may also say how to run it: `num_processes: N` starts it in N processes with
`torchrun --standalone` (DDP: gloo on CPU, NCCL on GPUs), and `accelerate_config: FILE` with `accelerate
launch --config_file FILE` (FSDP, DeepSpeed; `num_processes` then overrides the file's).

A pipeline may branch after SFT: RL stages (ppo, rloo, grpo) and offline preference-optimisation stages
(dpo, kto, orpo, simpo) all start from the SFT model, and the eval compares them side by side
(`rlhf_models: {rlhf: [<output_dir>/ppo], dpo: [<output_dir>/dpo]}`: a lone RL stage's variant keeps its
name `rlhf`, every other is named after its stage: `{ppo: [...], rloo: [...], dpo: [...]}`). With an RL
stage alone the eval takes `rlhf_models: <output_dir>/ppo` as always. A stage re-runs only when something
it takes from (directly or through another stage) changed, so a changed PPO setting never re-trains DPO,
nor the other way round.

The RL or preference-optimisation stage entry may say `seeds: [1, 2, 3]`: the stage then runs once per seed
(its `seed` set to each), into `<output_dir>/<stage>-seed<N>` (`ppo-seed1`, ...), each run skipped, resumed
and recorded in the ledger on its own (adding a seed later trains only the new run), and the eval takes every
run as the seeds of one variant (`rlhf_models: {rlhf: [<output_dir>/ppo-seed1, ...]}`) and reports a CI
across seeds beside each number. Without `seeds` the stage runs once in `<output_dir>/<stage>` as always.
`--force ppo` re-runs every seed run, `--force ppo-seed2` that one run (and the stages that take from it).

Runs that take nothing from each other (the seed runs, the reward model beside DPO) train side by side, each
in a process of its own with its share of the cores (`hftune.side_by_side`): the same artifacts as one after
another, sooner. `max_parallel: N` (a key of the pipeline config, or `--max-parallel N`) caps how many train
at once; by default two a core as far as the memory estimates allow on CPU, and no more than the plan can
ever train at once (each run then gets its share of the cores), one with a GPU. A run side by side writes
its progress to `<output_dir>/.pipeline/<run>.log` and the pipeline prints its summary when it ends; a run
with the machine to itself trains in the pipeline's own process, as before.
`freeze_gc: false` turns off what the pipeline does by default: Python's garbage collector skips the
objects that live for the whole run (the imported libraries), which it would otherwise walk on every full
collection.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftune import artifacts, distributed, quick_fingerprint, side_by_side
from hftune.config import ConfigError, show, value_problem
from hftune.errors import StageFailed, UserError, did_you_mean
from hftune.stages import registry
from hftune.stages.registry import STAGES
from hftune.yaml_loading import load_yaml_mapping

logger = logging.getLogger(__name__)

LEDGER = "pipeline.json"
# config.json of the Hub models the shipped configs start from (architecture only), for offline plans.
ARCHITECTURES = Path(__file__).parent / "architectures"
PIPELINE_KEYS = ("output_dir", "stages", "max_parallel", "freeze_gc")
# Keys a stage takes from a seeded stage (one run per seed): every run, as the seeds of one variant.
SEEDED_HANDOFF = {"rlhf_models": "rlhf"}
# The eval's trained variants (`rlhf_models`) come from the RL stage and the preference-optimisation stage:
# a pipeline that branches after SFT hands both, side by side, as `{rlhf: [...], dpo: [...]}`.
VARIANTS_KEY = "rlhf_models"
VARIANT_ROLES = ("rl", "po")
SEEDED_ROLES = VARIANT_ROLES  # the stages whose runs the eval can take as the seeds of one variant


@dataclass
class RunOptions:
    """How the pipeline runs its stages (keys of the pipeline config, not of any stage: they change how fast
    it runs, never what it computes, so no stage re-runs when they change)."""

    max_parallel: int | None = None  # runs training at once; None: two a core, as far as memory allows
    freeze_gc: bool = True  # the garbage collector skips what lives for the whole pipeline (see run)


@dataclass
class PlannedStage:
    name: str
    values: dict[str, Any]  # the stage's config: file + inline + handoff
    source: str  # where its keys came from, for error messages
    output_dir: Path
    cfg: Any = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, str] | None = None  # the same inputs, fingerprinted before parsing (quick_fingerprint)
    made_of: dict[str, Any] | None = None  # its config and data hashes (read once: they do not change)
    action: str = "run"  # run | skip | resume
    launch: Launch | None = None  # run in its own processes (torchrun / accelerate launch)
    seed: int | None = None  # one run of a stage with `seeds`: the seed it sets
    wall_s: float | None = None  # how long it ran this time (None: it did not run)
    beside: bool = False  # it ran beside other runs (its time overlaps theirs)

    @property
    def key(self) -> str:
        """The run's name: its folder and ledger entry (`ppo`, or `ppo-seed1` for one of several seeds)."""
        return self.name if self.seed is None else f"{self.name}-seed{self.seed}"


@dataclass
class Launch:
    """A stage the pipeline starts in N processes of its own instead of running it in-process."""

    num_processes: int
    accelerate_config: Path | None = None
    sharding: str | None = None  # 'FSDP' / 'DeepSpeed' when the accelerate config shards the model
    mixed_precision: str | None = field(default=None, compare=False)  # the accelerate config's

    def command(self, stage_name: str, config_file: Path, *, resume: bool) -> list[str]:
        hftune = ["-m", "hftune", STAGES[stage_name].command, "--config", str(config_file)]
        hftune += ["--resume"] if resume else []
        if self.accelerate_config is not None:
            launcher = ["-m", "accelerate.commands.launch", "--config_file", str(self.accelerate_config)]
            return [sys.executable, *launcher, "--num_processes", str(self.num_processes), *hftune]
        # --standalone: a free rendezvous port on this machine, so two pipelines never collide.
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.num_processes}"]
        return [sys.executable, *launcher, *hftune]

    def fingerprint(self) -> dict[str, Any]:
        # More processes train on a larger global batch: a different run, not the same one resumed.
        config = self.accelerate_config
        return {
            "num_processes": self.num_processes,
            "accelerate_config": hashlib.sha256(config.read_bytes()).hexdigest() if config else None,
        }


def _launch(entry: dict[str, Any], name: str, where: str, config_path: str, problems: list[str]):
    """Pop the keys of a stage entry that say how the pipeline runs it (`num_processes`,
    `accelerate_config`; not keys of the stage's config) and check them; None for an in-process stage."""
    n = entry.pop("num_processes", None)
    accelerate_config = entry.pop("accelerate_config", None)
    if n is None and accelerate_config is None:
        return None
    if not STAGES[name].trains:
        problems.append(f"{where}: `num_processes` / `accelerate_config` are for training stages, not {name}")
        return None
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        problems.append(f"{where}: `num_processes` must be a whole number >= 1, got {n!r}")
        return None
    if accelerate_config is None:
        return Launch(n) if n > 1 else None  # one process: run in-process as usual
    file = _beside(config_path, accelerate_config)
    if not file.is_file():
        problems.append(f"{where}: `accelerate_config`: file not found: {accelerate_config}")
        return None
    launch = load_yaml_mapping(file) or {}
    kind = str(launch.get("distributed_type", "")).upper()
    return Launch(
        n or int(launch.get("num_processes") or 1),  # without `num_processes`, the config's own count
        file.resolve(),
        {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}.get(kind),
        launch.get("mixed_precision"),
    )


def _seeds(entry: dict[str, Any], name: str, where: str, problems: list[str]) -> list[int] | None:
    """Pop `seeds` (a key of the stage entry, not of the stage's config: the pipeline runs the stage once per
    seed) and check it; None when the entry has none (or a bad one, reported)."""
    if "seeds" not in entry:
        return None
    seeds = entry.pop("seeds")
    if STAGES[name].role not in SEEDED_ROLES:
        rl, po = (", ".join(n for n, spec in STAGES.items() if spec.role == r) for r in ("rl", "po"))
        problems.append(
            f"{where}: `seeds` is for the RL stage ({rl}) and the preference-optimisation stage ({po}), "
            f"not {name}"
        )
        return None
    if not isinstance(seeds, list) or not seeds:
        problems.append(f"{where}: `seeds`: expected a list of whole numbers ([1, 2, 3]), got {seeds!r:.80}")
        return None
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        problems.append(f"{where}: `seeds`: expected whole numbers, got {bad[0]!r:.80}")
        return None
    for s in seeds:
        if (problem := value_problem("seed", s)) is not None:
            problems.append(f"{where}: `seeds`: {problem}")
            return None
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        problems.append(f"{where}: `seeds`: {twice[0]} is listed twice (each seed is one run)")
        return None
    if "seed" in entry:
        problems.append(f"{where}: `seed` and `seeds` both given (each run of `seeds` sets `seed`)")
        return None
    return seeds


def _beside(config_path: str, value: Any) -> Path:
    """A file a pipeline config names: as given if it exists from here, else beside the pipeline config."""
    file = Path(str(value))
    if not file.is_absolute() and not file.is_file():
        file = Path(config_path).parent / file
    return file


def load_plan(config_path: str, output_dir: str | None = None) -> tuple[Path, list[PlannedStage], RunOptions]:
    """The stages of a pipeline config in order, with their merged values, and how to run them; `output_dir`
    overrides the config's."""
    raw = load_yaml_mapping(config_path)
    problems = [
        f"`{k}`: unknown key{did_you_mean(str(k), PIPELINE_KEYS)}" for k in raw if k not in PIPELINE_KEYS
    ]
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        problems.append("`stages`: required, a list of {stage: NAME, config: FILE, ...keys}")
        stages = []
    if output_dir is not None:
        raw["output_dir"] = output_dir
    if not raw.get("output_dir"):
        problems.append("`output_dir`: required (each stage writes to <output_dir>/<stage>)")
    elif not isinstance(raw["output_dir"], str):
        problems.append(f"`output_dir`: expected a folder path (a string), got {raw['output_dir']!r:.80}")
        raw["output_dir"] = None
    root = Path(str(raw.get("output_dir") or "runs/pipeline"))
    options = _run_options(raw, problems)
    plan: list[PlannedStage] = []
    seen: set[str] = set()
    for i, entry in enumerate(stages):
        where = f"`stages[{i}]`"
        if not isinstance(entry, dict) or "stage" not in entry:
            problems.append(f"{where}: expected a mapping with `stage` (one of {', '.join(STAGES)})")
            continue
        entry = dict(entry)
        name = str(entry.pop("stage"))
        if name not in STAGES:
            problems.append(f"{where}: unknown stage {name!r}{did_you_mean(name, STAGES)}")
            continue
        launch = _launch(entry, name, where, config_path, problems)
        seeds = _seeds(entry, name, where, problems)
        role = STAGES[name].role
        # One stage a role, except the trained variants the eval compares: several RL and preference-
        # optimisation stages may branch from SFT (`ppo` beside `rloo`, `dpo` beside `kto`), each once.
        taken = name if role in VARIANT_ROLES else role
        if taken in seen:
            problems.append(
                f"{where}: a second {name} stage (once per pipeline; use `seeds` for several runs)"
                if role in VARIANT_ROLES
                else f"{where}: a second {role} stage (one of each per pipeline)"
            )
            continue
        seen.add(taken)
        values: dict[str, Any] = {}
        source = f"{config_path} ({where}: {name})"
        if entry.get("config"):
            file = _beside(config_path, entry.pop("config"))
            values.update(load_yaml_mapping(file))
            source = f"{file} (pipeline {config_path}, stage {name})"
        roles = {
            STAGES[s["stage"]].role for s in stages[:i] if isinstance(s, dict) and s.get("stage") in STAGES
        }
        for key, role in STAGES[name].handoff.items():
            taken = [r for r in _source_roles(key, role) if r in roles]
            if key in entry and taken:
                problems.append(f"{where}: `{key}` is filled in by the pipeline from the {taken[0]} stage")
        values.update(entry)
        if STAGES[name].algorithm:
            # A stage's name is its algorithm: a config (file or entry) that asks for another would be trained
            # as the stage's name says, so the contradiction is refused rather than settled silently.
            asked = values.get("algorithm", STAGES[name].algorithm)
            if asked != STAGES[name].algorithm:
                known = isinstance(asked, str) and asked in STAGES
                better = f"use `stage: {asked}`" if known else "remove `algorithm` (the stage sets it)"
                said = asked if isinstance(asked, str) and len(asked) <= 40 else show(asked)
                problems.append(f"{where}: stage {name}'s config says `algorithm: {said}`; {better}")
                continue
            values["algorithm"] = STAGES[name].algorithm
        for seed in seeds or [None]:
            run = PlannedStage(name, dict(values), source, root / name, launch=launch, seed=seed)
            if seed is not None:
                run.values["seed"] = seed
                run.output_dir = root / run.key
            run.values["output_dir"] = str(run.output_dir)
            plan.append(run)
    for stage in plan:
        spec = STAGES[stage.name]
        for key, role in spec.handoff.items():
            earlier = [s for s in plan if STAGES[s.name].role in _source_roles(key, role)]
            if not earlier:
                if key not in stage.values and key not in spec.optional_handoff:
                    problems.append(f"stage {stage.name}: no {role} stage before it to take `{key}` from")
                continue
            for first in {s.name: s for s in reversed(earlier)}.values():  # each source stage's first run
                if plan.index(first) > plan.index(stage):
                    problems.append(f"stage {stage.name}: must come after the {first.name} stage")
            names = {s.name for s in earlier}
            if key == VARIANTS_KEY and (len(names) > 1 or any(STAGES[n].role != "rl" for n in names)):
                # A preference-optimisation stage, or several RL stages: every trained variant by name,
                # side by side, each stage's seed runs as one variant (a lone RL stage keeps its name
                # `rlhf`, so an RL-only pipeline hands exactly what it always did).
                rl_stages = {s.name for s in earlier if STAGES[s.name].role == "rl"}
                variants: dict[str, list[str]] = {}
                for s in earlier:
                    variants.setdefault(variant_name(s.name, len(rl_stages)), []).append(str(s.output_dir))
                stage.values[key] = variants
            elif earlier[0].seed is None:
                stage.values[key] = str(earlier[0].output_dir)
            elif key in SEEDED_HANDOFF:  # every seed run, as one variant
                stage.values[key] = {SEEDED_HANDOFF[key]: [str(s.output_dir) for s in earlier]}
            else:
                problems.append(
                    f"stage {stage.name}: takes one `{key}` from the {earlier[0].name} stage, which runs "
                    "once per seed (`seeds`); run it without `seeds`"
                )
    if problems:
        raise ConfigError(config_path, problems)
    return root, plan, options


def _run_options(raw: dict[str, Any], problems: list[str]) -> RunOptions:
    options = RunOptions()
    n = raw.get("max_parallel", "auto")
    if n != "auto":
        if problem := max_parallel_problem(n):
            problems.append(f"`max_parallel`: {problem}")
        else:
            options.max_parallel = n
    freeze = raw.get("freeze_gc", True)
    if not isinstance(freeze, bool):
        problems.append(f"`freeze_gc`: expected true or false, got {freeze!r:.80}")
    else:
        options.freeze_gc = freeze
    return options


def max_parallel_problem(n: Any) -> str | None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"expected a whole number >= 1 (or auto: two a core, as far as memory allows), got {n!r:.80}"
    return None


def _source_roles(key: str, role: str) -> tuple[str, ...]:
    """The roles of the stages a handoff key is filled from: the registry's one role, except the eval's
    trained variants, which come from the RL and the preference-optimisation stage alike."""
    return VARIANT_ROLES if key == VARIANTS_KEY else (role,)


def variant_name(stage_name: str, rl_stages: int = 1) -> str:
    """The eval's name for the variant a trained stage gives: `rlhf` for the one RL stage (as the eval has
    always called it), the stage's own name for a preference-optimisation one (`dpo`, `kto`, `orpo`,
    `simpo`) and for each of several RL stages (`ppo`, `rloo`, `grpo`)."""
    if STAGES[stage_name].role == "rl" and rl_stages == 1:
        return SEEDED_HANDOFF[VARIANTS_KEY]
    return stage_name


def upstream(plan: list[PlannedStage]) -> list[set[int]]:
    """For each run of the plan, the runs whose outputs it takes, directly or through another run (by
    index). The sibling branches after SFT (reward -> ppo, and dpo) take nothing from each other, so a change
    in one never re-runs the other; nor do the seed runs of one stage."""
    out: list[set[int]] = []
    for stage in plan:
        roles = {r for key, role in STAGES[stage.name].handoff.items() for r in _source_roles(key, role)}
        direct = {j for j, s in enumerate(plan) if STAGES[s.name].role in roles and s is not stage}
        # A stage takes only from earlier ones (load_plan refuses any other order), so theirs are known.
        out.append(direct.union(*(out[j] for j in direct if j < len(out))))
    return out


def _write_stage_config(stage: PlannedStage, folder: Path) -> Path:
    """A stage's merged config as a file its launched processes can read."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage.key}.yaml"
    # In the plan's order, not sorted: the eval lists (and reports) its trained variants as the stages come.
    text = yaml.safe_dump(stage.values, sort_keys=False)
    path.write_text(f"# {stage.source}, with the pipeline's handoff paths\n" + text)
    return path


def _parse_stages(plan: list[PlannedStage]) -> dict[str, Any]:
    """Parse every stage's merged config with the stage's own strict parser, from the values in memory (no
    file is written: a refused config leaves no trace); errors, then and while it runs, name the user's
    file. The problems of all stages are reported together."""
    modules, errors = {}, []
    for stage in plan:
        module = modules[stage.name] = registry.load(stage.name)
        try:
            # A copy: the parsed sections may share the values' lists and mappings, the plan keeps its own.
            stage.cfg = module.parse(None, values=copy.deepcopy(stage.values), source=stage.source)
        except ConfigError as err:
            errors.append(ConfigError(stage.source, err.problems))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserError("\n".join(str(err) for err in errors))
    return modules


def _data_fingerprint(cfg) -> str | None:
    """The data a stage reads, cheaply: each local file's content hash, or a Hub source's id."""
    if not getattr(cfg.hftune, "data_recipe", None) and not getattr(
        cfg.sections.get("script"), "dataset_name", None
    ):
        return None
    from hftune.data import resolve_source_path
    from hftune.data.mixture import data_parts

    found = []
    for part in data_parts(cfg.hftune, cfg.sections.get("script")):
        if part.data_files:
            path = Path(part.data_files)
        elif part.recipe.source.path:
            path = resolve_source_path(part.recipe)
        else:
            found.append(part.recipe.source.describe())  # a Hub dataset: its id, split, config and revision
            continue
        found.append(_file_hash(path))
    return found[0] if len(found) == 1 else hashlib.sha256("\n".join(found).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    """A file's content hash; a folder's, over its files' names and contents."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\n".encode() + hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()
    return str(path)


def _parents(stage: PlannedStage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in STAGES[stage.name].handoff:
        if key in stage.values:
            # A path that is not (yet) a finished artifact, or a Hub id, has no manifest: None.
            out[key] = _manifest_hashes(stage.values[key])
    return out


def _manifest_hashes(value: Any) -> Any:
    """The manifest hash of a handed-off folder, or of each folder of a mapping / list of them (the seed
    runs of one variant)."""
    if isinstance(value, dict):
        return {str(k): _manifest_hashes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_manifest_hashes(v) for v in value]
    return artifacts.manifest_sha256(str(value))


# Where a run writes, not what it computes: left out of both fingerprints.
WRITES_TO = ("output_dir", "logging_dir", "run_name", "cache_dir")


def decide(root: Path, stage: PlannedStage, *, forced: bool, upstream_changed: bool = False) -> str:
    """Skip a stage whose artifact came from these very inputs; resume one that was interrupted."""
    if stage.made_of is None:  # the plan is decided first, then each run again when its turn comes
        stage.made_of = {
            "config_sha256": stage.cfg.config_hash(ignore=WRITES_TO),
            "data": _data_fingerprint(stage.cfg),
        }
    stage.fingerprint = {
        **stage.made_of,
        "parents": _parents(stage),  # a re-made parent has a new manifest, so its children run again
    }
    if stage.launch is not None:
        stage.fingerprint["launch"] = stage.launch.fingerprint()
    record = _read_ledger(root).get(stage.key, {})
    up_to_date = (
        artifacts.is_complete(stage.output_dir)
        and record.get("inputs") == stage.fingerprint
        and record.get("manifest_sha256") == artifacts.manifest_sha256(stage.output_dir)
    )
    if up_to_date and not forced and not upstream_changed:
        stage.action = "skip"
    elif not forced and not upstream_changed and _started_inputs(stage) == stage.fingerprint:
        stage.action = "resume"  # interrupted with these very inputs: continue from its checkpoints
    else:
        stage.action = "run"
    return stage.action


STARTED = "hftune-pipeline-inputs.json"  # in a stage's work folder: the inputs it was started with


def _started_inputs(stage: PlannedStage) -> dict[str, Any] | None:
    path = artifacts.work_dir(stage.output_dir) / STARTED
    return json.loads(path.read_text()) if path.is_file() else None


def _read_ledger(root: Path) -> dict[str, Any]:
    path = root / LEDGER
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(root: Path, stage: PlannedStage, wall_s: float) -> None:
    stage.wall_s = wall_s
    ledger = _read_ledger(root)
    ledger[stage.key] = {
        "inputs": stage.fingerprint,
        "quick_inputs": stage.quick,
        "manifest_sha256": artifacts.manifest_sha256(stage.output_dir),
        "wall_time_s": round(wall_s, 2),
    }
    artifacts.write_json(root / LEDGER, ledger)


def _confirm_quick(root: Path, stage: PlannedStage) -> None:
    """A run the full fingerprint found up to date: its quick fingerprint now stands for the same inputs
    (it changes where the full one may not: an edit of hftune's files, a recipe's description, ...), so the
    next rerun can answer without parsing."""
    ledger = _read_ledger(root)
    record = ledger.get(stage.key)
    if stage.quick is not None and record is not None and record.get("quick_inputs") != stage.quick:
        record["quick_inputs"] = stage.quick
        artifacts.write_json(root / LEDGER, ledger)


def _quick(stage: PlannedStage, shared: dict[str, Any]) -> dict[str, str]:
    """The run's quick fingerprint (see hftune.quick_fingerprint): its merged values and the files they name,
    its parents' manifests, its launch settings, and what `shared` holds (versions, hardware, environment).
    The handoff paths are its parents, fingerprinted by their manifests."""
    return quick_fingerprint.fingerprint(
        stage.values,
        skip={*WRITES_TO, *STAGES[stage.name].handoff},
        parents=_parents(stage),
        launch=stage.launch.fingerprint() if stage.launch else None,
        shared=shared,
    )


def _up_to_date_quickly(root: Path, plan: list[PlannedStage], shared: dict[str, Any]) -> bool:
    """Whether every run of the plan is finished and recorded with the quick fingerprint its inputs have now:
    then the full path would skip every one (the quick fingerprint sees everything the full one is made
    from), and nothing needs parsing. Any doubt (no record, another artifact, a changed file) is a no."""
    ledger = _read_ledger(root)
    for stage in plan:
        record = ledger.get(stage.key) or {}
        if not (
            record.get("quick_inputs")
            and artifacts.is_complete(stage.output_dir)
            and record.get("manifest_sha256") == artifacts.manifest_sha256(stage.output_dir)
        ):
            return False
        stage.quick = _quick(stage, shared)
        if changed := quick_fingerprint.changed(record["quick_inputs"], stage.quick):
            logger.info(
                "stage %s: %s changed since it was recorded; checking every stage",
                stage.key,
                ", ".join(changed),
            )
            return False
    return True


def _predict(root: Path, plan: list[PlannedStage], forced: list[bool]) -> None:
    """Every run's action before any of them runs. Earlier stages have not re-run yet, so a stage that takes
    from one that will run is marked to run too (not a sibling branch, nor the other seed runs of the same
    stage: they take nothing from it)."""
    sources = upstream(plan)
    will_run: set[int] = set()
    for i, stage in enumerate(plan):
        changed = bool(sources[i] & will_run)
        if decide(root, stage, forced=forced[i], upstream_changed=changed) != "skip":
            will_run.add(i)


def run(
    config_path: str,
    *,
    dry_run: bool = False,
    force: str | None = None,
    output_dir: str | None = None,
    overwrite: bool = False,
    max_parallel: int | None = None,
) -> list[PlannedStage]:
    started = time.time()
    root, plan, options = load_plan(config_path, output_dir)
    if max_parallel is not None:
        options.max_parallel = max_parallel
    names = list(dict.fromkeys(n for s in plan for n in (s.name, s.key)))
    if force and force not in names:
        raise UserError(f"--force {force}: no such stage in {config_path} ({', '.join(names)})")
    # Read before any stage's parse sets its `env:` block, as the next rerun reads it.
    shared = quick_fingerprint.environment()
    if not dry_run and not force and _read_ledger(root):
        # A rerun with nothing to do answers from the ledger, without parsing (which imports TRL, torch, ...).
        check_outputs(root, plan, overwrite=overwrite)  # refused alike either way
        with artifacts.output_lock(root):  # a run in progress on this folder is refused, as below
            cached = _up_to_date_quickly(root, plan, shared)
        if cached:
            for stage in plan:
                stage.action = "skip"
            print(describe(plan, memory=False), flush=True)
            logger.info("every stage is up to date (its inputs are the recorded ones): nothing to run")
            return plan
    if not dry_run and options.max_parallel != 1 and side_by_side.cores() > 1 and _widest(plan) > 1:
        # Runs may go side by side: the fork server imports the stage code now, on another core, while this
        # process imports the same for parsing (both single-threaded: no trained model competes for a core).
        side_by_side.start_server(sorted({STAGES[s.name].module for s in plan}))
    modules = _parse_stages(plan)
    _check_recipes(plan)
    for stage in plan:
        if stage.launch and distributed.fsdp_without_gpu(stage.launch.sharding):
            raise UserError(f"{stage.source}: {distributed.FSDP_NEEDS_GPU}")
        args = getattr(stage.cfg, "training", None)
        precision = stage.launch.mixed_precision if stage.launch else None
        if args is not None and distributed.precision_without_gpu(precision, vars(args)):
            raise UserError(f"{stage.source}: {distributed.LAUNCH_PRECISION.format(precision)}")
        if stage.launch and STAGES[stage.name].role == "rl":
            from hftune.stages.rl.config import PPO_DISTRIBUTED, RL_SHARDED

            if stage.name == "ppo" and stage.cfg.model.use_peft and stage.launch.num_processes > 1:
                raise UserError(f"{stage.source}: {PPO_DISTRIBUTED}")
            if stage.launch.sharding:
                raise UserError(f"{stage.source}: {RL_SHARDED.format(stage.launch.sharding)}")
    check_outputs(root, plan, overwrite=overwrite)
    forced = _forced(plan, force)
    _predict(root, plan, forced)
    parallel = _parallelism(plan, options)
    # The plan before any stage trains (flushed: a log redirected to a file shows it first, not at the end).
    print(describe(plan) + f"\nruns: {parallel.describe()}", flush=True)
    if dry_run:
        return plan
    if options.freeze_gc:
        # What is alive now (the libraries, the parsed configs) lives as long as the pipeline: left out of
        # every collection from here on (see _release_memory).
        gc.freeze()
    with artifacts.output_lock(root):
        _execute(root, plan, modules, forced, shared, parallel, options, overwrite=overwrite)
    print(_done(plan, time.time() - started), flush=True)
    return plan


def _forced(plan: list[PlannedStage], force: str | None) -> list[bool]:
    """Which runs `--force` re-runs: the named stage (every seed run of it) or run (`ppo-seed2`), and every
    stage that takes from it, directly or through another (not the other seed runs of a forced run, nor a
    sibling branch: they take nothing from it)."""
    first = next((i for i, s in enumerate(plan) if force in (s.name, s.key)), len(plan))
    if first == len(plan):
        return [False] * len(plan)
    one_run = force != plan[first].name  # `--force ppo-seed2`
    chosen = {i for i, s in enumerate(plan) if (s.key if one_run else s.name) == force}
    return [i in chosen or bool(sources & chosen) for i, sources in enumerate(upstream(plan))]


def check_outputs(root: Path, plan: list[PlannedStage], *, overwrite: bool) -> None:
    """Before any stage runs: the pipeline's folder is new, empty or an earlier pipeline run's, and no stage
    would replace a folder hftune did not write (stage 3 must not refuse after stages 1 and 2 trained)."""
    # A first stage killed before it finished leaves only its work folder, lock and perhaps a half-saved
    # temporary folder (no ledger yet): the same command resumes it. Anything else in a folder without a
    # ledger is not this pipeline's.
    ours = {n for s in plan for n in (artifacts.work_dir(s.output_dir).name, f".{s.output_dir.name}.lock")}
    ours.add(".pipeline")  # the logs of runs side by side, the configs of launched ones
    saving = tuple(f".{s.output_dir.name}.tmp-" for s in plan)
    entries = list(root.iterdir()) if root.is_dir() else []
    foreign = [p for p in entries if p.name not in ours and not p.name.startswith(saving)]
    if foreign and not (root / LEDGER).is_file() and not overwrite:
        raise UserError(
            f"output_dir {root}: the folder exists and is not an hftune pipeline's (it has no {LEDGER}; it "
            f"holds {', '.join(sorted(p.name for p in root.iterdir())[:4])}). Nothing was changed. Choose a "
            "new folder, or pass --overwrite to let the pipeline write its stage folders into it."
        )
    if root.exists() and not root.is_dir():
        raise UserError(f"output_dir {root}: is a file, not a folder")
    artifacts.check_output(root, overwrite=True)  # never the current folder, home or a symlink, even so
    for stage in plan:
        artifacts.check_output(
            stage.output_dir, overwrite=overwrite, what=f"stage {stage.key}: output_dir", work=True
        )


def _release_memory(freeze_gc: bool) -> None:
    import torch

    # A finished stage's trainer, model and optimizer state. With the collector frozen this walks only what
    # the stage left (the libraries were frozen before it); what survives is frozen in turn, so the next
    # stage's collections skip it too (and a stage that unfroze everything, like PPO's `freeze_gc`, is
    # covered again).
    gc.collect()
    if freeze_gc:
        gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _parallelism(plan: list[PlannedStage], options: RunOptions) -> side_by_side.Parallelism:
    """How many runs may train at once: the config's `max_parallel` (or --max-parallel), else what the
    cores and memory allow (side_by_side.default_parallelism) when the plan has runs that could overlap."""
    if options.max_parallel is not None:
        return side_by_side.Parallelism(options.max_parallel, "max_parallel")
    widest = _widest(plan)
    if widest <= 1:  # a chain, a single run, or nothing is all there is to run
        return side_by_side.Parallelism(1, "no two runs are independent")
    model_config = root_model_config(plan)
    estimates = [_estimate_bytes(stage, model_config) for stage in plan]
    return side_by_side.default_parallelism(estimates, distributed.accelerator_available(), most=widest)


def _widest(plan: list[PlannedStage]) -> int:
    """The most runs of the plan (of those that will run: all of them before the actions are decided) that
    can train at once: the largest set of them in which none takes from another. By Dilworth's theorem
    that is the fewest chains covering them, which is their number less a maximum matching of "j takes
    from i" (`upstream` is already transitive); Kuhn's augmenting paths find it (a plan has a few dozen
    runs at most). Fixed by the plan, not by which run happens to end first, so every run's share of the
    cores (and so what it computes) is too."""
    sources = upstream(plan)
    runs = [i for i, stage in enumerate(plan) if stage.action != "skip"]
    takers = {i: [j for j in runs if i in sources[j]] for i in runs}
    follows: dict[int, int] = {}  # run -> the run before it in its chain

    def augment(i: int, seen: set[int]) -> bool:
        for j in takers[i]:
            if j not in seen:
                seen.add(j)
                if j not in follows or augment(follows[j], seen):
                    follows[j] = i
                    return True
        return False

    return len(runs) - sum(augment(i, set()) for i in runs)


def _estimate_bytes(stage: PlannedStage, model_config) -> float | None:
    if model_config is None or stage.cfg is None or not STAGES[stage.name].trains:
        return None
    from hftune.stages import memory

    return memory.estimate(stage.name, stage.cfg, model_config).total


def _execute(
    root: Path,
    plan: list[PlannedStage],
    modules: dict[str, Any],
    forced: list[bool],
    shared: dict[str, Any],
    parallel: side_by_side.Parallelism,
    options: RunOptions,
    *,
    overwrite: bool,
) -> None:
    """Run the plan: each run once every run it takes from has finished, decided again then (a re-made
    parent changes its inputs); runs that take nothing from each other side by side, up to `parallel.runs`.
    A run that would train alone (nothing else running or ready) runs in this process with every thread."""
    sources = upstream(plan)
    pending, decided, done, running = list(range(len(plan))), set(), set(), {}
    failed: list[str] = []
    codes: list[int] = []
    while pending or running:
        # Decide each run whose sources are done; a skipped one is done at once and may make others ready.
        while undecided := [i for i in pending if sources[i] <= done and i not in decided]:
            for i in undecided:
                decided.add(i)
                if _decide_now(root, plan[i], forced[i], shared) == "skip":
                    pending.remove(i)
                    done.add(i)
        ready = [i for i in pending if sources[i] <= done]
        ran_alone = False
        for i in ready if not failed else []:
            stage = plan[i]
            alone = parallel.runs == 1 or stage.launch is not None or (not running and len(ready) == 1)
            if (alone and running) or len(running) >= parallel.runs:
                break  # it needs the machine to itself, or every slot is taken: wait for a run to end
            pending.remove(i)
            _prepare_work(stage)
            if alone:
                started = time.time()
                _run_here(root, stage, modules[stage.name], options, overwrite=overwrite)
                _record(root, stage, time.time() - started)
                done.add(i)
                ran_alone = True
                break  # what is ready has changed
            running[i] = _start_beside(root, stage, parallel, options, overwrite=overwrite)
        if ran_alone:
            continue
        if not running:
            break  # nothing runs and nothing can start: a run failed and what takes from it is dropped
        job = side_by_side.wait_any(list(running.values()))
        i = next(k for k, j in running.items() if j is job)
        del running[i]
        if _finish_beside(root, plan[i], job):
            done.add(i)
        else:
            failed.append(plan[i].key)
            codes.append(job.process.exitcode)
            pending = [k for k in pending if i not in sources[k]]  # nothing that takes from it starts
    if failed:
        raise StageFailed(
            f"stage {', '.join(failed)} failed (the end of its log is above); the runs beside it finished "
            "and are kept. Run the same command again to resume it from its last checkpoint.",
            # A refused input exits 2 as the stage alone would; a signal (negative) as a shell reports it.
            exit_code=128 - codes[0] if codes[0] < 0 else codes[0] or 1,
        )


def _decide_now(root: Path, stage: PlannedStage, forced: bool, shared: dict[str, Any]) -> str:
    """A run's action when its turn comes (both fingerprints taken before it runs, from the same inputs); a
    skipped one confirms its quick fingerprint."""
    stage.quick = _quick(stage, shared)
    if decide(root, stage, forced=forced) == "skip":
        _confirm_quick(root, stage)
        logger.info("stage %s: up to date (%s), skipped", stage.key, stage.output_dir)
    return stage.action


def _prepare_work(stage: PlannedStage) -> None:
    logger.info("stage %s: %s -> %s", stage.key, stage.action, stage.output_dir)
    if stage.action == "run" and STAGES[stage.name].trains:
        # A forced or changed stage starts over: an old run's checkpoints must not be resumed into it. The
        # stage's work folder is the stage's own (it removes it when it finishes); the pipeline only clears it
        # (check_outputs made sure it is hftune's) and records there which inputs this run started with.
        work = artifacts.work_dir(stage.output_dir)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        artifacts.write_json(work / STARTED, stage.fingerprint)


def _run_here(root: Path, stage: PlannedStage, module: Any, options: RunOptions, *, overwrite: bool) -> None:
    """A run that has the machine to itself: in its own launched processes, or in this one."""
    if stage.launch is not None:
        print(f"== {stage.key} ({stage.launch.num_processes} processes) ==", flush=True)
        config_file = _write_stage_config(stage, root / ".pipeline")
        _run_launched(stage, config_file, overwrite=overwrite)
        return
    import torch

    torch.set_num_threads(side_by_side.threads_each(1))  # a run beside others may have had fewer
    # `--overwrite` is a run option, not a setting: given to this run, the parsed config kept.
    cfg = dataclasses.replace(stage.cfg, overwrite=overwrite)
    with artifacts.output_lock(stage.output_dir):
        result = module.run(cfg, resume=stage.action == "resume")
    print(f"== {stage.key} ==\n{module.summary(result)}", flush=True)
    del result
    _release_memory(options.freeze_gc)  # the next stage (or its launched processes) gets the memory back


def _start_beside(
    root: Path,
    stage: PlannedStage,
    parallel: side_by_side.Parallelism,
    options: RunOptions,
    *,
    overwrite: bool,
) -> side_by_side.Job:
    job = side_by_side.start(
        stage.key,
        stage.name,
        dataclasses.replace(stage.cfg, overwrite=overwrite),
        resume=stage.action == "resume",
        threads=side_by_side.threads_each(parallel.runs),
        folder=root / ".pipeline",
        freeze_gc=options.freeze_gc,
        debug=logging.getLogger("hftune").isEnabledFor(logging.DEBUG),
    )
    print(
        f"== {stage.key}: started beside the others ({job.threads} thread{'s' * (job.threads > 1)}; "
        f"progress in {job.log}) ==",
        flush=True,
    )
    return job


def _finish_beside(root: Path, stage: PlannedStage, job: side_by_side.Job) -> bool:
    """Report a run that trained beside others; record it if it finished."""
    code = job.process.exitcode
    if code == 0 and artifacts.is_complete(stage.output_dir) and job.summary.is_file():
        print(
            f"== {stage.key} ({job.elapsed:.0f} s beside the others) ==\n{job.summary.read_text()}",
            flush=True,
        )
        stage.beside = True
        _record(root, stage, job.elapsed)
        return True
    print(
        f"== {stage.key}: failed (exit code {code}) after {job.elapsed:.0f} s; the end of {job.log}: ==\n"
        f"{side_by_side.log_tail(job)}",
        file=sys.stderr,
        flush=True,
    )
    return False


def _run_launched(stage: PlannedStage, config_file: Path, *, overwrite: bool = False) -> None:
    """Run a stage in processes of its own; they print their own progress and summary."""
    command = stage.launch.command(stage.name, config_file, resume=stage.action == "resume")
    command += ["--overwrite"] if overwrite else []
    logger.info("launching: %s", " ".join(command))
    env = dict(os.environ)
    # The CPU threads this run may use, shared between its processes rather than taken by each.
    threads = int(env.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    env["OMP_NUM_THREADS"] = str(max(1, threads // stage.launch.num_processes))
    code = subprocess.run(command, env=env).returncode
    if code != 0 or not artifacts.is_complete(stage.output_dir):
        raise StageFailed(
            f"stage {stage.name} failed in its {stage.launch.num_processes} processes (exit code {code}; "
            "their output is above). Run the same command again to resume it from its last checkpoint.",
            # The launchers exit 1 whatever failed; a signal (a negative code) exits as a shell reports it.
            exit_code=128 - code if code < 0 else code or 1,
        )


def _check_recipes(plan: list[PlannedStage]) -> None:
    from hftune.data.mixture import data_parts

    for stage in plan:
        extras, script = stage.cfg.hftune, stage.cfg.sections.get("script")
        if getattr(extras, "data_recipe", None) or getattr(script, "dataset_name", None):
            data_parts(extras, script)  # a missing or malformed recipe fails now, before any stage runs


def root_model_config(plan: list[PlannedStage]):
    """The config of the model the pipeline starts from, read without loading (or downloading) weights;
    None when it is not available (a Hub model offline, not in the local cache and not one whose
    architecture hftune ships)."""
    first = plan[0].cfg
    extras = first.hftune
    if getattr(extras, "init_architecture", None):
        from hftune.models.tiny import model_config

        return model_config(
            extras.init_architecture, extras.init_vocab_size, extras.init_hidden_size,
            extras.init_num_layers, extras.init_num_heads, 1024, {"pad": 0, "eos": 1},
        )  # fmt: skip
    model_section = first.sections.get("model")  # an eval-only pipeline starts from no model of its own
    name = getattr(model_section, "model_name_or_path", None)
    if not name:
        return None
    from transformers import AutoConfig

    from hftune.models.tiny import TINY_PREFIX

    if name.startswith(TINY_PREFIX):
        from hftune.models.tiny import tiny_path

        folder = tiny_path(name)  # only if already built: a dry run builds nothing
        return AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
    try:
        from hftune.models.loading import resolve_source

        base = resolve_source(name).base
    except UserError:
        return None
    # Only config.json: a local folder or the Hub cache first, then hftune's copy of a shipped config's
    # architecture (so the plan needs no network), then a few KB from the Hub.
    try:
        return AutoConfig.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError):
        pass
    shipped = ARCHITECTURES / (base.replace("/", "--") + ".json")
    if shipped.is_file():
        return AutoConfig.from_pretrained(shipped)
    try:
        return AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return None


def _memory_line(stage: PlannedStage, model_config) -> str | None:
    if stage.name == "eval" or stage.cfg is None:
        return None
    if model_config is None:
        return "memory: unknown (the base model's config is not available offline)"
    from hftune.stages import memory

    return "memory: " + memory.estimate(stage.name, stage.cfg, model_config).describe()


def describe(plan: list[PlannedStage], *, memory: bool = True) -> str:
    """Each run's action, folder and handoff; `memory`: with each training stage's memory estimate (this
    reads the base model's config: not for a plan answered without parsing)."""
    lines = ["pipeline plan:"]
    model_config = root_model_config(plan) if memory else None
    width = max([7, *(len(s.key) for s in plan)])
    for stage in plan:
        handoff = ", ".join(
            f"{k}={_show_handoff(stage.values[k])}" for k in STAGES[stage.name].handoff if k in stage.values
        )
        launch = f" [{stage.launch.num_processes} processes]" if stage.launch else ""
        launch += f" [seed {stage.seed}]" if stage.seed is not None else ""
        lines.append(
            f"  {stage.key:{width}s} {stage.action:7s} -> {stage.output_dir}{launch}"
            + (f"  ({handoff})" if handoff else "")
        )
        if memory and (line := _memory_line(stage, model_config)):
            lines.append(f"  {'':{width}s} {line}")
    return "\n".join(lines)


def _done(plan: list[PlannedStage], wall_s: float) -> str:
    """What each run did, where and in how long (the end of a long log; the plan printed first has the
    details): where the time went, for whoever times the pipeline."""
    width = max([7, *(len(s.key) for s in plan)])
    lines = [f"pipeline done in {_seconds(wall_s)}:"]
    for s in plan:
        took = "" if s.wall_s is None else f"  ({_seconds(s.wall_s)}{' beside the others' * s.beside})"
        lines.append(f"  {s.key:{width}s} {s.action:7s} -> {s.output_dir}{took}")
    return "\n".join(lines)


def _seconds(wall_s: float) -> str:
    return f"{wall_s:.1f} s" if wall_s < 10 else f"{wall_s:.0f} s"


def _show_handoff(value: Any) -> str:
    """A handed-off path, or the seed runs of one variant as `rlhf: [a, b]`."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in value.items())
    return str(value)
