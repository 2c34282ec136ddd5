"""Which models the train stage trains: the training block's own recipe and, for the
before/after comparison, every arm of `training.compare` at every seed, at equal steps and, if
asked, at the own recipe's wall time (docs/world.md: report each method against the
continued-SFT control, paired by seed, at equal steps and at equal wall time)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from amp_ray.spec.alignment import TrainingSpec

BUDGETS = ("steps", "time")


@dataclass(frozen=True)
class PlannedRun:
    """One model to train: `arm`'s recipe at `seed`, for `steps` optimizer steps."""

    model: str  # its name: the model lives at train/models/<model>
    arm: str
    seed: int
    steps: int
    budget: str  # "steps": the own recipe's step count; "time": its wall time

    @property
    def label(self) -> str:
        """The arm as the tables show it."""
        return self.arm if self.budget == "steps" else f"{self.arm} (equal time)"


def model_name(training: TrainingSpec, arm: str, seed: int, budget: str) -> str:
    """The own recipe at the first seed keeps training.name (the model later stages use)."""
    if arm == training.name and seed == training.compare.seeds[0] and budget == "steps":
        return training.name
    return f"{arm}-{'time-' if budget == 'time' else ''}seed{seed}"


def arms(training: TrainingSpec) -> list[str]:
    return [training.name, *training.compare.arms]


def equal_step_runs(training: TrainingSpec) -> list[PlannedRun]:
    """Every arm at every seed for the training block's max_steps (seed-major: a run with few
    seeds finishes whole comparisons first)."""
    return [
        PlannedRun(model_name(training, arm, seed, "steps"), arm, seed, training.max_steps, "steps")
        for seed in training.compare.seeds
        for arm in arms(training)
    ]


def equal_time_runs(
    training: TrainingSpec, step_seconds: dict[str, list[float]]
) -> list[PlannedRun]:
    """The other arms again, each for as many steps as take the own recipe's wall time, from
    the median step time of every arm's equal-step runs (`step_seconds`: arm -> seconds)."""
    if not training.compare.equal_time or not training.compare.arms:
        return []
    own = statistics.median(step_seconds[training.name])
    planned = []
    for arm in training.compare.arms:
        steps = max(1, round(training.max_steps * own / statistics.median(step_seconds[arm])))
        for seed in training.compare.seeds:
            planned.append(
                PlannedRun(model_name(training, arm, seed, "time"), arm, seed, steps, "time")
            )
    return planned
