"""The trials of a sweep: which points and seeds, and the job spec each one runs.

A trial is the run's spec with the point's overrides and one training seed. It shares with the
run every stage before `train` whose settings and inputs its overrides leave unchanged (those
folders are linked, not copied: storage/location.py LinkedLocation), runs the others again in
sweep/trials/<trial>/, then trains and evaluates there. The driver decides all of this before
Ray Tune starts, so a trial only has to run the spec it is given.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from amp_ray.spec import PIPELINE, JobSpec, validate_spec
from amp_ray.spec.blocks import ActorPoolSpec, ScalingSpec, StorageSpec, walk_blocks
from amp_ray.spec.load import with_overrides
from amp_ray.storage.location import LinkedLocation, Location, open_location
from amp_ray.storage.run import RunDir
from amp_ray.training.runs import equal_step_runs, model_name

SEED_PATH = "training.compare.seeds"
# the stages a trial may share with its run; train and evaluate are always its own
UPSTREAM = PIPELINE[: PIPELINE.index("train")]
TRIAL_STAGES = ("train", "evaluate")


@dataclass(frozen=True)
class Trial:
    """One point of the grid at one seed."""

    point: dict[str, Any]  # dotted spec path -> value
    seed: int

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.point, SEED_PATH: [self.seed]}

    @property
    def name(self) -> str:
        """Its folder under sweep/trials: from its overrides, so a grid that grows keeps the
        trials it had."""
        digest = hashlib.sha256(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()
        return f"trial-{digest[:10]}"

    @property
    def setting(self) -> str:
        """The point as the tables show it: the last part of each path (the whole path where
        two share it), e.g. `beta=0.1 levels=[0, 3]`; `-` for a sweep over seeds alone."""
        last = [path.rsplit(".", 1)[-1] for path in self.point]
        names = [
            short if last.count(short) == 1 else path
            for short, path in zip(last, self.point, strict=True)
        ]
        return " ".join(f"{n}={_show(v)}" for n, v in zip(names, self.point.values(), strict=True))


@dataclass(frozen=True)
class TrialPlan:
    """Everything a Tune trial needs to run its trial: plain data, sent to the trial's actor."""

    name: str
    setting: str
    seed: int
    overrides: dict[str, Any]
    spec: dict[str, Any]  # the trial's job spec (validated again in the trial)
    run_dir: str  # its own folder
    links: dict[str, str] = field(default_factory=dict)  # stage -> the run's URI it reads it in
    metric: str = ""
    own_model: str = ""  # the model whose metric is the trial's objective

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def open_run_dir(self) -> RunDir:
        """The trial's run directory, with its shared stages linked to the run's."""
        storage = StorageSpec.model_validate(self.spec["storage"])
        own = open_location(self.run_dir, storage)
        links = tuple(
            (stage, open_location(uri, storage)) for stage, uri in sorted(self.links.items())
        )
        return RunDir(LinkedLocation(own.fs, own.path, links))


def trials(spec: JobSpec) -> list[Trial]:
    """The grid (sweep.points(); one empty point for a sweep over seeds alone) at num_seeds
    seeds from training.compare.seeds' first: point-major, so every seed of a point is near."""
    first = spec.training.compare.seeds[0]
    seeds = [first + i for i in range(spec.sweep.num_seeds)]
    points = spec.sweep.points() or [{}]
    return [Trial(point, seed) for point, seed in itertools.product(points, seeds)]


def plan(spec: JobSpec, run: RunDir, trial: Trial, concurrent: int) -> TrialPlan:
    """The trial's spec and links. `concurrent`: trials at once (CPU requests are divided by
    it when sweep.share_cpus)."""
    raw = spec.model_dump(mode="json", exclude={"sweep"})
    raw = with_overrides(raw, trial.overrides)
    folder = run.location.join("sweep", "trials", trial.name)
    raw["storage"]["run_dir"] = folder.uri
    candidate = validate_spec(raw)  # the run's stages: upstream configs as the run saw them
    links, again = shared_stages(candidate, run, folder)
    raw["stages"] = [*again, *TRIAL_STAGES]
    training = candidate.training
    models = [r.model for r in equal_step_runs(training)]
    if training.compare.equal_time:
        models += [
            model_name(training, arm, seed, "time")
            for arm in training.compare.arms
            for seed in training.compare.seeds
        ]
    # the evaluate stage rates the trained models; the world check on the way would repeat it
    raw["training"]["eval"]["enabled"] = False
    raw["evaluation"]["models"] = models
    if spec.sweep.share_cpus and concurrent > 1:
        raw = with_overrides(raw, shared_cpu_overrides(candidate, concurrent))
    return TrialPlan(
        name=trial.name,
        setting=trial.setting,
        seed=trial.seed,
        overrides=trial.overrides,
        spec=validate_spec(raw).model_dump(mode="json"),
        run_dir=folder.uri,
        links={stage: run.uri for stage in links},
        metric=spec.sweep.metric,
        own_model=training.name,
    )


def shared_stages(
    trial_spec: JobSpec, run: RunDir, folder: Location
) -> tuple[list[str], list[str]]:
    """(stages the trial reads from the run, stages it runs again): the run's completed stages
    before train, in order, linked while the trial's settings and inputs for them are the ones
    the run used; from the first that differs on, the trial runs them itself."""
    from amp_ray.stages import STAGES

    linked: list[str] = []
    again: list[str] = []
    for name in UPSTREAM:
        record = run.record(name)
        if record is None:
            continue
        view = RunDir(
            LinkedLocation(folder.fs, folder.path, tuple((s, run.location) for s in linked))
        )
        stage = STAGES[name](trial_spec, view)
        same = stage.config() == record.config and stage.input_versions() == record.inputs
        (linked if same and not again else again).append(name)
    return linked, again


def shared_cpu_overrides(spec: JobSpec, concurrent: int) -> dict[str, float]:
    """Every actor pool's num_cpus and every Ray Train block's cpus_per_worker, divided by
    `concurrent`: that many trials then ask for what one run asked for."""
    out: dict[str, float] = {}
    for path, block in walk_blocks(spec):
        if isinstance(block, ActorPoolSpec):
            out[f"{path}.num_cpus"] = block.num_cpus / concurrent
        elif isinstance(block, ScalingSpec):
            out[f"{path}.cpus_per_worker"] = block.cpus_per_worker / concurrent
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)
