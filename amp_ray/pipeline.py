"""The driver: runs a spec's stages in order, skipping those already complete.

One process owns the pipeline; stages fan work out to Ray (Ray Data actor pools, Ray Train
workers) and come back with committed datasets. A stage is re-run when forced, when the datasets
it read have changed, or never silently when its spec values changed (that is an error naming
the changed keys, so an existing run directory is not mixed with a different configuration).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from amp_ray.errors import SpecError
from amp_ray.runtime import RaySession
from amp_ray.spec import PIPELINE, JobSpec
from amp_ray.stages import STAGES
from amp_ray.stages.base import Stage, StageCounts, StageReport
from amp_ray.storage import RunDir, StageRecord

TRAINING_STAGES = frozenset({"sft", "train"})  # they show Ray Train's progress


def select_stages(spec: JobSpec, only: Sequence[str] = ()) -> list[str]:
    """The stages to run: `only` (in pipeline order) or the spec's list; all must be available."""
    for name in only:
        if name not in PIPELINE:
            raise SpecError(f"unknown stage {name!r}; the pipeline is: {', '.join(PIPELINE)}")
    names = sorted(set(only), key=PIPELINE.index) if only else list(spec.stages)
    for name in names:
        if name not in STAGES:
            raise SpecError(
                f"stage {name!r} is not available in this version of amp-ray",
                hint=f"available stages: {', '.join(STAGES)}",
            )
    return names


def run_job(
    spec: JobSpec,
    only: Sequence[str] = (),
    force: bool = False,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    run: RunDir | None = None,
) -> list[StageReport]:
    """Run the selected stages of `spec`; return one report per stage. `run`: the run directory
    when it is not simply spec.storage.run_dir (a sweep trial's, linked to its run's stages)."""
    names = select_stages(spec, only)
    run = run or RunDir.open(spec.storage.run_dir, spec.storage)
    stages = [STAGES[name](spec, run, force) for name in names]
    for stage in stages:
        stage.preflight()
    _check_inputs_available(stages, run)
    check_cluster(spec, names)
    reports = []
    with RaySession(spec.resources, verbose, spec.runtime.data_object_store_gb) as ray_session:
        if ray_session.joins_cluster:  # a local Ray is one node: nothing to check
            ray_session.ensure()
            _check_joined_cluster(spec, names, run)
        echo(f"amp-ray: run {spec.name} in {run.uri}: stages {', '.join(names)}")
        for stage in stages:
            report = _run_stage(stage, run, ray_session, force, echo)
            echo(report.line())
            if report.status != "skipped":
                for line in stage.summary():
                    echo(f"    {line}")
            reports.append(report)
    return reports


def check_cluster(spec: JobSpec, stages: Sequence[str]) -> str:
    """With runtime.cluster_config: every actor pool and Ray Train worker set of `stages` fits
    some node type of that cluster (SpecError naming the spec key otherwise). Returns the note
    for validate's line."""
    from amp_ray.cluster.requests import check_node_types, load_node_types, spec_requests

    if spec.runtime.cluster_config is None:
        return ""
    node_types = load_node_types(spec.runtime.cluster_config)
    requests = spec_requests(spec, list(stages))
    check_node_types(requests, node_types)
    return (
        f", {len(requests)} actor pools and worker sets fit the node types of "
        f"{spec.runtime.cluster_config}"
    )


def _check_joined_cluster(spec: JobSpec, stages: Sequence[str], run: RunDir) -> None:
    """On a cluster, before any stage: the run directory reaches every node, and the requests
    fit the node types of the autoscaler found on the head (when no cluster_config was given)."""
    from amp_ray.cluster.capacity import check_run_dir, current_view
    from amp_ray.cluster.requests import check_node_types, spec_requests

    view = current_view(spec.runtime.cluster_config)
    check_run_dir(run.uri, run.location.is_local, spec.storage.shared, view)
    if view.node_types is not None and spec.runtime.cluster_config is None:
        check_node_types(spec_requests(spec, list(stages)), view.node_types)


def _check_inputs_available(stages: list[Stage], run: RunDir) -> None:
    produced = {(stage.name, out) for stage in stages for out in stage.outputs}
    for stage in stages:
        for source, dataset in stage.inputs:
            if (source, dataset) not in produced and not run.dataset(source, dataset).exists:
                raise SpecError(
                    f"stage {stage.name!r} reads {source}/{dataset}, which is neither in "
                    f"{run.uri} nor made by this run",
                    hint=f"run stage {source!r} first (add it to stages or use --stage {source})",
                )


def _run_stage(
    stage: Stage, run: RunDir, ray_session: RaySession, force: bool, echo: Callable[[str], None]
) -> StageReport:
    config = stage.config()
    inputs = stage.input_versions()
    previous = run.record(stage.name)
    if previous is not None and not force:
        if previous.config != config:
            changed = ", ".join(_changed_keys(previous.config, config))
            raise SpecError(
                f"stage {stage.name!r} is complete in {run.uri} with other settings "
                f"(changed: {changed})",
                hint="use another storage.run_dir, or --force to redo it (and what follows)",
            )
        if previous.inputs == inputs:
            return StageReport(stage.name, "skipped", 0, previous.report["rows_out"], 0, 0.0)
    ray_session.ensure()
    started = time.perf_counter()
    counts, placements = _run_placed(stage, run, echo)
    seconds = time.perf_counter() - started
    status = "done" if previous is None else "redone"
    report = StageReport(
        stage.name, status, counts.rows_in, counts.rows_out, counts.rows_quarantined, seconds
    )
    outputs = {name: run.dataset(stage.name, name).manifest.attempt for name in stage.outputs}
    record = {**report.__dict__, "placements": placements}
    run.commit_record(StageRecord(stage.name, config, inputs, outputs, record))
    return report


def _run_placed(
    stage: Stage, run: RunDir, echo: Callable[[str], None]
) -> tuple[StageCounts, list[dict]]:
    """Run the stage with a placement log that its actors and workers report to (where each
    ran, on which device), and withdraw its resource requests when it ends, however it ends."""
    from amp_ray import runtime
    from amp_ray.cluster import capacity, placement
    from amp_ray.training.tracking import progress_lines

    runtime.placement_log = placement.log_name(run.uri, stage.name)
    log = placement.open_log(runtime.placement_log)
    try:
        # the stages that run Ray Train print its progress (training/tracking.py)
        training = stage.name in TRAINING_STAGES
        lines = progress_lines(echo) if training else contextlib.nullcontext()
        with lines as runtime.progress_queue:
            counts = stage.run()
        return counts, placement.take(log)
    finally:
        runtime.placement_log = None
        runtime.progress_queue = None
        placement.stop(log)
        capacity.release(stage.name)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{path}.")
        elif a != b:
            changed.append(f"{path}: {a!r} -> {b!r}")
    return changed
