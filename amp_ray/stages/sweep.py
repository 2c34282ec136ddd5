"""The sweep stage: Ray Tune over the spec's sweep grid; every trial trains and evaluates.

A trial is the spec with one point of `sweep.parameters` and one training seed (sweep/trials.py):
it shares the run's earlier stages that the point leaves unchanged, runs again those it changes
(say generation.methods: generate, rank and reference), then train and evaluate, all in
sweep/trials/<trial>/ (its own stage records, so a killed sweep resumes each trial where it
stopped). Up to `sweep.max_concurrent_trials` run at once on Ray Tune (sweep/tune.py). A trial
that fails is recorded with its error and the stage completes on the others.
Outputs: sweep/results (every evaluate metric of every trial's models, with its point and seed).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from amp_ray.errors import SpecError
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.stages.preference_runs import HOW_IT_RUNS
from amp_ray.stages.train import TrainStage
from amp_ray.storage.run import fingerprint
from amp_ray.sweep.trials import UPSTREAM, plan, trials


class SweepStage(Stage):
    name = "sweep"
    outputs = ("results",)

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        """What the run's train stage would read: the trials train on it (or re-make it)."""
        return TrainStage(self.spec, self.run_dir).inputs[:1]

    def config(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "seed": spec.seed,
            "sweep": spec.sweep.model_dump(mode="json", exclude={"max_concurrent_trials"}),
            "training": spec.training.model_dump(mode="json", exclude=HOW_IT_RUNS),
            "evaluation": spec.evaluation.model_dump(
                mode="json", exclude={"actors", "judge_actors"}
            ),
        }

    def preflight(self) -> None:
        sweep = self.spec.sweep
        benchmark = sweep.metric.split("/")[0]
        if benchmark.split("_")[0] not in self.spec.evaluation.benchmarks and benchmark != "bias":
            raise SpecError(
                f"sweep.metric {sweep.metric!r} reads benchmark {benchmark!r}, which "
                f"evaluation.benchmarks {self.spec.evaluation.benchmarks} does not run",
                hint="add it to evaluation.benchmarks or choose another sweep.metric",
            )
        if self.spec.training.policy is None:
            raise SpecError("stage 'sweep' trains in every trial: it needs training.policy")
        if "train" in self.spec.stages:
            raise SpecError(
                "stages lists both train and sweep: every sweep trial trains and evaluates its "
                f"own {self.spec.training.name!r}",
                hint="drop train from stages (evaluate may stay, for the models the run names)",
            )

    def run(self) -> StageCounts:
        from amp_ray.sweep.results import result_rows
        from amp_ray.sweep.tune import run_trials

        sweep = self.spec.sweep
        chosen = trials(self.spec)
        concurrent = min(sweep.max_concurrent_trials, len(chosen))
        plans = [plan(self.spec, self.run_dir, trial, concurrent) for trial in chosen]
        again = sorted({s for p in plans for s in p.spec["stages"] if s in UPSTREAM})
        rerun = f"; trials re-run {', '.join(again)}" if again else ""
        print(f"    sweep: {len(plans)} trials, {concurrent} at once{rerun}", flush=True)
        outcomes = run_trials(
            plans,
            concurrent,
            sweep.mode,
            self.run_dir.location.join(self.name, "tune"),
            f"sweep-{fingerprint(self.config(), self.input_versions())}",
            lambda line: print(line, flush=True),
        )
        errors = {o.name: o.error for o in outcomes}
        rows = [row for p in plans for row in result_rows(p, errors.get(p.name, "did not run"))]
        if all(error is not None for error in errors.values()):
            first = next(iter(errors.values()))
            raise RuntimeError(f"every sweep trial failed; the first: {first}")
        results = self.run_dir.writer(self.name, "results", "sweep_results")
        results.write_table(pa.Table.from_pylist(rows, schema=results.schema))
        results.commit()
        failed = sum(error is not None for error in errors.values())
        return StageCounts(len(plans), len(plans) - failed, failed)

    def summary(self) -> list[str]:
        from amp_ray.sweep.results import summary_lines

        if "report" in self.spec.stages:
            return []  # the report stage prints the same table at the job's end
        rows = self.run_dir.dataset(self.name, "results").read_table().to_pylist()
        sweep = self.spec.sweep
        return summary_lines(rows, sweep.metric, sweep.mode, self.spec.training.name)
