"""The train stage: the policy aligned on the K-level preference data with the spec's loss,
and checked on the world before and after.

Reads reference/preferences (the levels with their reference log-probs), or the preferences
alone when the reference runs in the loop or the loss needs none. Items are encoded once on a
Ray Data actor pool; rows training must not see go to train/quarantine with the reason. Each
planned run (training/runs.py: the training block's own recipe, and the arms of
training.compare at every seed) trains on Ray Train + DeepSpeed (stages/preference_runs.py,
training/preference.py); a
model committed with the same settings is not trained again, and a killed run resumes from its
last checkpoint. With training.online.rounds, the online rounds run after the offline runs
(stages/online.py): round r generates with the last round's model (round 1: the policy), ranks,
scores with the fixed reference and trains from those weights, keeping its data in
train/round<r>_preferences (and train/round<r>_quarantine) and its model in
train/models/<training.name>-online-r<r>; a round committed with the same settings is reused.
Outputs: train/models/<model> (HF format), train/log (every logged window), train/runs (what
each model is), train/answers and train/metrics (the world check of the policy and of every
trained model, round models included), train/quarantine (every row set aside, the rounds' too).
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.errors import SpecError
from amp_ray.models.registry import model_uri
from amp_ray.spec.blocks import PREFERENCE_SOURCES
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.stages.online import (
    OnlineRounds,
    reference_entry,
    round_model,
    rounds_config,
    rounds_summary,
)
from amp_ray.stages.preference_runs import (
    PreferenceRuns,
    RunResult,
    check_num_levels,
    check_reference_dtype,
    scored_dtypes,
    set_aside_table,
)
from amp_ray.training.runs import equal_step_runs, equal_time_runs


class TrainStage(Stage):
    name = "train"
    outputs = ("quarantine", "encoded", "log", "runs", "answers", "metrics")

    @functools.cached_property
    def runs(self) -> PreferenceRuns:
        """Its preference-training runs (the online rounds train through them too)."""
        return PreferenceRuns(self)

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        if self.runs.reads_stored_reference():
            source = ("reference", "preferences")
        elif self.spec.data.source in PREFERENCE_SOURCES:
            source = ("data", "preferences")
        else:
            source = ("rank", "preferences")
        made_by_sft = self.spec.training.policy in self.spec.sft.runs
        return (source,) + ((("sft", "metrics"),) if made_by_sft else ())

    def config(self) -> dict[str, Any]:
        training = self.spec.training
        config = self.runs.offline_config()
        if training.online.rounds:
            config["training"]["online"] = training.online.model_dump(mode="json")
            config["online"] = rounds_config(self.spec, self.run_dir)
        return config

    def preflight(self) -> None:
        if self.spec.training.policy is None:
            raise SpecError("stage 'train' needs training.policy: the model to align")
        online = self.spec.training.online
        if online.rounds and online.generator != "bdhs" and self.spec.generation.engine == "vllm":
            from amp_ray.generation.vllm_engine import check_vllm_environment

            # the rounds sample on generation's engine: a fresh engine per round's weights
            check_vllm_environment(self.spec.generation.vllm, "generation")

    def run(self) -> StageCounts:
        from amp_ray.evaluation.world_check import check_models

        training = self.spec.training
        source = self.run_dir.dataset(*self.inputs[0])
        check_num_levels(source, training.num_levels, "/".join(self.inputs[0]))
        if self.runs.reads_stored_reference():
            where, scorer = "/".join(self.inputs[0]), reference_entry(self.spec)
            check_reference_dtype(scored_dtypes(source), training, where, scorer)
        if self.force:
            self.run_dir.location.join(self.name, "ray").remove()
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        online = None
        if training.online.rounds:
            online = OnlineRounds(self.runs, source, quarantine)
            online.check_fits()  # now, not after hours of offline training
        encoded = self.runs.encode(source, quarantine)
        rows = encoded.num_rows
        if rows == 0:
            raise SpecError(
                f"no usable training items in {'/'.join(self.inputs[0])}: all of them are in "
                "train/quarantine with their reasons"
            )
        results = self.runs.train_all(equal_step_runs(training), encoded)
        step_seconds: dict[str, list[float]] = {}
        for result in results:
            step_seconds.setdefault(result.run.arm, []).append(result.step_seconds)
        results += self.runs.train_all(equal_time_runs(training, step_seconds), encoded)
        if online is not None:
            results += online.run()
        quarantine.write_table(set_aside_table(self.name, results))
        self._write_log(results)
        self._write_runs(results)
        policy = str(training.policy)
        models = {policy: model_uri(self.spec, self.run_dir, policy)}
        models.update({r.run.model: self.runs.location(r.run).uri for r in results})
        check_models(self, models, training.eval, quarantine)
        return StageCounts(source.num_rows, rows, quarantine.commit().num_rows)

    # -- outputs ----------------------------------------------------------------------------

    def _write_log(self, results: list[RunResult]) -> None:
        log = self.run_dir.writer(self.name, "log", "training_log")
        rows = [
            {"model": r.run.model, "step": int(window["step"]), "metric": key, "value": value}
            for r in results
            for window in r.history
            for key, value in window.items()
            if key != "step"
        ]
        log.write_table(pa.Table.from_pylist(rows, schema=log.schema))
        log.commit()

    def _write_runs(self, results: list[RunResult]) -> None:
        runs = self.run_dir.writer(self.name, "runs", "training_runs")
        rows = [
            {**asdict(r.run), "step_seconds": r.step_seconds, "final_loss": r.history[-1]["loss"]}
            for r in results
        ]
        runs.write_table(pa.Table.from_pylist(rows, schema=runs.schema))
        runs.commit()

    def summary(self) -> list[str]:
        from amp_ray.training.tables import comparison_table, training_table

        training = self.spec.training
        log = self.run_dir.dataset(self.name, "log").read_table()
        own = log.filter(pc.equal(log.column("model"), training.name))
        lines = [f"training of {training.name} ({training.loss}):", *training_table(own)]
        if training.online.rounds:
            lines += rounds_summary(self.run_dir, training, log)
        metrics = self.run_dir.dataset(self.name, "metrics").read_table()
        if metrics.num_rows:
            runs = self.run_dir.dataset(self.name, "runs").read_table().to_pylist()
            # the online recipe is its last round's model: earlier rounds are not more seeds
            last = round_model(training, training.online.rounds) if training.online.rounds else ""
            runs = [r for r in runs if r["arm"] != training.online_arm or r["model"] == last]
            control = training.compare.control
            lines += comparison_table(metrics, runs, str(training.policy), control)
        return lines
