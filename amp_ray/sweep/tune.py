"""Running a sweep's trials on Ray Tune.

Each trial is a Tune function trial that runs its plan's stages (pipeline.run_job, joining the
Ray the driver started) and reports one number, the objective. Ray Train V2 cannot be handed to
a Tuner directly ("Improper 'run'"), so the trial function fits its TorchTrainers itself, from
inside the train stage. The trial actor only coordinates: it asks for no CPU, and the
resources that matter are those of the train workers and actor pools its spec asks for
(sweep/trials.py divides them between the trials running at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from amp_ray.storage.location import Location
from amp_ray.sweep.trials import TrialPlan

# What a trial's own actor holds: no CPU (it waits on its stages' workers, which ask for their
# own), and a little memory, since Tune needs a bundle that asks for something. Even 0.01 CPU per
# trial hangs a 2-CPU sweep: the trials' actor pools then hold 1.0 and the reservations 0.02,
# and Ray Data's whole-CPU tasks (repartition) wait for a CPU that never frees.
TRIAL_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}
OBJECTIVE = "objective"
LOG = "trial.log"


@dataclass(frozen=True)
class TrialOutcome:
    name: str
    objective: float | None
    error: str | None  # why the trial failed, None when it ran to its end


def run_trial(config: dict[str, Any]) -> None:
    """The Tune function: run one trial's stages outside Tune's placement group, report its
    objective. Tune schedules a trial's child tasks into the trial's own bundle; Ray Data's
    shuffle tasks (the train stage's sort) would then be refused ("cannot fit into any bundles"),
    so the stages run in a task that belongs to no placement group, as a driver's would."""
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    unplaced = PlacementGroupSchedulingStrategy(placement_group=None)
    stages = ray.remote(num_cpus=0, max_retries=0)(run_plan)
    value = ray.get(stages.options(scheduling_strategy=unplaced).remote(config["plan"]))
    tune.report({OBJECTIVE: math.nan if value is None else value})


def run_plan(plan_dict: dict[str, Any]) -> float | None:
    """Run a trial plan's stages, write its log; its objective (None if it has none)."""
    from amp_ray.pipeline import run_job
    from amp_ray.spec import validate_spec
    from amp_ray.sweep.results import objective

    plan = TrialPlan(**plan_dict)
    run = plan.open_run_dir()
    lines: list[str] = []
    try:
        run_job(validate_spec(plan.spec), echo=lines.append, run=run)
    finally:
        run.location.join(LOG).write_bytes_atomic("\n".join(lines).encode())
    metrics = run.dataset("evaluate", "metrics").read_table().to_pylist()
    return objective(metrics, plan.own_model, plan.metric)


def run_trials(
    plans: list[TrialPlan],
    concurrent: int,
    mode: str,
    storage: Location,
    name: str,
    echo: Callable[[str], None],
) -> list[TrialOutcome]:
    """Run every plan on Ray Tune, at most `concurrent` at once; Tune's own records go to
    `storage/name`. A failed trial does not stop the others: its error comes back."""
    from ray import tune

    trainable = tune.with_resources(run_trial, TRIAL_RESOURCES)
    by_name = {plan.name: plan for plan in plans}
    tuner = tune.Tuner(
        trainable,
        param_space={"plan": tune.grid_search([plan.to_dict() for plan in plans])},
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode=mode,
            max_concurrent_trials=concurrent,
            trial_name_creator=lambda trial: trial.config["plan"]["name"],
            trial_dirname_creator=lambda trial: trial.config["plan"]["name"],
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.arrow_fs,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_Progress(echo, by_name, len(plans))],
            verbose=0,
        ),
    )
    outcomes = []
    for result in tuner.fit():
        plan_name = result.config["plan"]["name"]
        value = (result.metrics or {}).get(OBJECTIVE)
        value = None if value is None or math.isnan(value) else float(value)
        error = _error_text(result.error) if result.error is not None else None
        outcomes.append(TrialOutcome(plan_name, value, error))
    return outcomes


def _error_text(error: BaseException) -> str:
    """The trial's own exception, not Tune's wrapper around it."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    text = f"{type(cause).__name__}: {cause}".strip()
    return text.splitlines()[0][:500] if text else type(cause).__name__


class _Progress(Callback):
    """One line on the driver as each trial ends: the sweep takes long, and Tune is quiet."""

    def __init__(self, echo: Callable[[str], None], plans: dict[str, TrialPlan], total: int):
        self.echo = echo
        self.plans = plans
        self.total = total
        self.ended = 0

    def _line(self, trial: Any, what: str) -> None:
        self.ended += 1
        plan = self.plans.get(trial.config["plan"]["name"])
        setting = f"{plan.setting or '-'} seed {plan.seed}" if plan else trial.trial_id
        self.echo(f"    trial {self.ended}/{self.total} ({setting}): {what}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        value = (trial.last_result or {}).get(OBJECTIVE)
        self._line(trial, f"{OBJECTIVE} {value:.4f}" if isinstance(value, float) else "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "failed (its error is in sweep/results)")
