"""The train stage: the policy aligned on the K-level preference data with the spec's loss,
and checked on the world before and after.

Reads reference/preferences (the levels with their reference log-probs), or the preferences
alone when the reference runs in the loop or the loss needs none. Items are encoded once on a
Ray Data actor pool; rows training must not see go to train/quarantine with the reason. Each
planned run (training/runs.py: the training block's own recipe, and the arms of
training.compare at every seed) trains on Ray Train + DeepSpeed (training/preference.py); a
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

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.cluster.requests import pool_request, workers_request
from amp_ray.errors import SpecError
from amp_ray.models.registry import load_options, model_uri
from amp_ray.models.store import commit_model, model_metadata, new_model_attempt
from amp_ray.runtime import concurrent_runs
from amp_ray.spec.alignment import TrainingSpec
from amp_ray.spec.blocks import PREFERENCE_SOURCES
from amp_ray.stages.base import Encoding, Stage, StageCounts
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON
from amp_ray.storage.run import fingerprint
from amp_ray.training.runs import PlannedRun, arms, equal_step_runs, equal_time_runs

if TYPE_CHECKING:  # torch-side types: the stage imports them where it builds the run
    from amp_ray.training.optim import EngineConfig
    from amp_ray.training.preference import PreferenceLoopConfig

HOW_IT_RUNS = {
    "encode_actors": True,
    "input_cpus": True,
    "log_every": True,
    "checkpoint_every": True,
    "compare": {"max_concurrent_runs": True},
    "eval": {"actors": True},
}


@dataclass(frozen=True)
class RunResult:
    run: PlannedRun
    history: list[dict[str, float]]  # every logged window's metrics
    set_aside: list[dict[str, Any]]  # rows the workers could not use (item_id, reason, row_json)

    @property
    def step_seconds(self) -> float:
        return statistics.median(window["step_seconds"] for window in self.history)


@dataclass(frozen=True)
class RunStart:
    """How a run that is not a planned offline one trains (an online round)."""

    recipe: TrainingSpec
    init_uri: str  # the weights it starts from (the last round's model)
    encoded_levels: list[int]  # the data levels its encoded rows hold
    settings: dict[str, Any]  # merged over the offline settings its committed model must match


class TrainStage(Stage):
    name = "train"
    outputs = ("quarantine", "encoded", "log", "runs", "answers", "metrics")

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        if self.reads_stored_reference():
            source = ("reference", "preferences")
        elif self.spec.data.source in PREFERENCE_SOURCES:
            source = ("data", "preferences")
        else:
            source = ("rank", "preferences")
        made_by_sft = self.spec.training.policy in self.spec.sft.runs
        return (source,) + ((("sft", "metrics"),) if made_by_sft else ())

    def recipes(self) -> dict[str, TrainingSpec]:
        """arm name -> its training block, the training block's own recipe first."""
        training = self.spec.training
        return {arm: training.arm(arm) for arm in arms(training)}

    def reads_stored_reference(self) -> bool:
        return any(recipe.reads_stored_reference for recipe in self.recipes().values())

    def encoded_levels(self) -> list[int]:
        """The data levels some recipe trains on: each item is encoded with these once."""
        return sorted({k for recipe in self.recipes().values() for k in recipe.read_levels})

    def config(self) -> dict[str, Any]:
        training = self.spec.training
        config = self.offline_config()
        if training.online.rounds:
            from amp_ray.stages.online import rounds_config

            config["training"]["online"] = training.online.model_dump(mode="json")
            config["online"] = rounds_config(self.spec, self.run_dir)
        return config

    def offline_config(self) -> dict[str, Any]:
        """What the offline runs depend on. The online block is not part of it: changing it
        redoes the rounds alone, and run directories made before it existed stay complete."""
        policy = self.spec.training.policy
        return {
            "seed": self.spec.seed,
            "policy": model_uri(self.spec, self.run_dir, policy) if policy else None,
            "training": self.spec.training.model_dump(
                mode="json", exclude={**HOW_IT_RUNS, "online": True}
            ),
        }

    def preflight(self) -> None:
        if self.spec.training.policy is None:
            raise SpecError("stage 'train' needs training.policy: the model to align")

    def run(self) -> StageCounts:
        from amp_ray.evaluation.world_check import check_models

        training = self.spec.training
        source = self.run_dir.dataset(*self.inputs[0])
        check_num_levels(source, training.num_levels, "/".join(self.inputs[0]))
        if self.reads_stored_reference():
            from amp_ray.stages.online import reference_entry

            where, scorer = "/".join(self.inputs[0]), reference_entry(self.spec)
            check_reference_dtype(scored_dtypes(source), training, where, scorer)
        if self.force:
            self.run_dir.location.join(self.name, "ray").remove()
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        online = None
        if training.online.rounds:
            from amp_ray.stages.online import OnlineRounds

            online = OnlineRounds(self, source, quarantine)
            online.check_fits()  # now, not after hours of offline training
        encoded = self._encode(source, quarantine)
        rows = encoded.num_rows
        if rows == 0:
            raise SpecError(
                f"no usable training items in {'/'.join(self.inputs[0])}: all of them are in "
                "train/quarantine with their reasons"
            )
        results = self._train_all(equal_step_runs(training), encoded)
        step_seconds: dict[str, list[float]] = {}
        for result in results:
            step_seconds.setdefault(result.run.arm, []).append(result.step_seconds)
        results += self._train_all(equal_time_runs(training, step_seconds), encoded)
        if online is not None:
            results += online.run()
        quarantine.write_table(set_aside_table(self.name, results))
        self._write_log(results)
        self._write_runs(results)
        policy = str(training.policy)
        models = {policy: model_uri(self.spec, self.run_dir, policy)}
        models.update({r.run.model: self._location(r.run).uri for r in results})
        check_models(self, models, training.eval, quarantine)
        return StageCounts(source.num_rows, rows, quarantine.commit().num_rows)

    def _encode(
        self, source: Any, quarantine: Any, recipe: TrainingSpec | None = None, name: str = ""
    ) -> Any:
        """The rows of `source` encoded for training into train/encoded<name> (token ids beside
        the stored image; the workers make the pixel inputs): for the offline recipes, or for
        `recipe` alone (an online round), with every level it trains on; reused where it is
        committed from the same source and settings (Stage.encode_once)."""
        from amp_ray.data.levels import LevelEncoder

        training = self.spec.training
        pool = training.encode_actors
        if recipe is None:
            levels = (training.num_levels, self.encoded_levels(), self.reads_stored_reference())
        else:
            levels = (recipe.num_levels, recipe.read_levels, recipe.reference == "precomputed")
        kwargs = {
            "processor_path": model_uri(self.spec, self.run_dir, str(training.policy)),
            "max_length": training.max_length,
            "round_weight_step": training.round_weight_step,
            "storage": self.spec.storage,
            "trust_remote_code": load_options(self.spec, str(training.policy)).trust_remote_code,
        }
        kwargs.update(zip(("num_levels", "levels", "need_reference"), levels, strict=True))
        encoding = Encoding.of(
            source.manifest.attempt,
            encoder=LevelEncoder,
            kwargs=kwargs,
            pool=pool,
            request=pool_request("training.encode_actors", pool, "the encoding pool"),
            schema_name="encoded_levels",
            quarantine=quarantine,
        )

        def rows() -> Any:
            return source.read_ray().repartition(target_num_rows_per_block=pool.batch_size)

        return self.encode_once(f"encoded{name}", rows, encoding)

    # -- training runs ----------------------------------------------------------------------

    def _location(self, run: PlannedRun) -> Any:
        return self.run_dir.location.join(self.name, "models", run.model)

    def _train_all(self, runs: list[PlannedRun], encoded: Any) -> list[RunResult]:
        training = self.spec.training
        concurrency = concurrent_runs(
            training.scaling,
            training.input_cpus,
            training.compare.max_concurrent_runs,
            "training.scaling",
            self.spec.runtime.cluster_config,
        )
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda run: self._train(run, encoded), runs))

    def _train(self, run: PlannedRun, encoded: Any, start: RunStart | None = None) -> RunResult:
        """Train `run` unless its model is committed with the same settings. `start` is for a
        run that is not a planned offline one (an online round)."""
        from amp_ray.training.inputs import set_aside_rows
        from amp_ray.training.launch import fit
        from amp_ray.training.preference import preference_loop

        recipe = start.recipe if start else self.spec.training.arm(run.arm)
        location = self._location(run)
        settings = {
            "stage": self.offline_config(),
            "inputs": self.input_versions(),
            "run": asdict(run),
            "recipe": recipe.model_dump(mode="json", exclude={**HOW_IT_RUNS, "online": True}),
            **(start.settings if start else {}),
        }
        metadata = model_metadata(location)
        if metadata.get("settings") == settings and not self.force:
            return RunResult(run, metadata["history"], metadata.get("set_aside", []))
        attempt = new_model_attempt()
        config = self._loop_config(recipe, run, location.uri, attempt, start)
        self.ensure_resources(
            [workers_request("training.scaling", recipe.scaling, f"training {run.model}")]
        )
        # one Ray Train run per settings: a changed spec never resumes another's checkpoint
        result = fit(
            preference_loop,
            config,
            recipe.scaling,
            f"{run.model}-{fingerprint(settings, {})}",
            self.run_dir.location.join(self.name, "ray"),
            inputs=self._inputs(encoded, recipe, config.engine),
            tracker=self.training_tracker(run.model, config.engine.steps),
        )
        history = _history(result)
        set_aside = set_aside_rows(result.checkpoint)
        metadata = {"settings": settings, "history": history, "set_aside": set_aside}
        commit_model(location, attempt, metadata)
        return RunResult(run, history, set_aside)

    def _inputs(self, encoded: Any, recipe: TrainingSpec, engine: EngineConfig) -> Any:
        """The run's planned inputs (training/inputs.py) over the encoded dataset."""
        from amp_ray.training.inputs import PlannedInputs

        return PlannedInputs.plan(
            encoded,
            processor_path=model_uri(self.spec, self.run_dir, str(recipe.policy)),
            storage=self.spec.storage,
            seed=engine.seed,
            micro_batch_size=recipe.micro_batch_size,
            accumulation=recipe.gradient_accumulation_steps,
            num_workers=recipe.scaling.num_workers,
            steps=engine.steps,
            input_cpus=recipe.input_cpus,
            trust_remote_code=load_options(self.spec, str(recipe.policy)).trust_remote_code,
        )

    def _loop_config(
        self,
        recipe: TrainingSpec,
        run: PlannedRun,
        output_uri: str,
        attempt: str,
        start: RunStart | None = None,
    ) -> PreferenceLoopConfig:
        from amp_ray.training.objective import Objective
        from amp_ray.training.optim import EngineConfig
        from amp_ray.training.preference import PreferenceLoopConfig

        # the reference stays the starting policy, wherever a run's weights start from
        policy = model_uri(self.spec, self.run_dir, str(recipe.policy))
        in_loop = recipe.loss_kind.needs_reference and recipe.reference == "in_loop"
        encoded = start.encoded_levels if start else self.encoded_levels()
        return PreferenceLoopConfig(
            init_path=start.init_uri if start else policy,
            reference_path=policy if in_loop else None,
            output_uri=output_uri,
            attempt=attempt,
            storage=self.spec.storage,
            objective=Objective.from_recipe(recipe),
            engine=EngineConfig.from_block(recipe, run.steps, self.spec.seed + run.seed),
            lora=recipe.lora,
            freeze_vision=recipe.freeze_vision,
            gradient_checkpointing=recipe.gradient_checkpointing,
            forward=recipe.forward,
            level_index=[encoded.index(k) for k in recipe.read_levels],
            load=load_options(self.spec, str(recipe.policy)),
        )

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
            from amp_ray.stages.online import round_model, rounds_summary

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


def check_num_levels(dataset: Any, num_levels: int, where: str) -> None:
    """Fail before any worker starts when the data's K is not the spec's."""
    counts = pc.list_value_length(dataset.read_table(["levels"]).column("levels"))
    most = pc.max(counts).as_py() or 0
    if most != num_levels:
        raise SpecError(
            f"training.num_levels is {num_levels} but the items in {where} have {most} levels: "
            f"set training.num_levels: {most}, or re-rank with ranking.num_levels: {num_levels}"
        )


def scored_dtypes(dataset: Any) -> set[str | None]:
    """The dtypes the reference log-probs of `dataset` were scored in (None: not recorded)."""
    if "ref_dtype" not in dataset.manifest.arrow_schema.names:
        return {None}
    return set(dataset.read_table(["ref_dtype"]).column("ref_dtype").to_pylist())


def check_reference_dtype(
    scored: set[str | None], training: TrainingSpec, where: str, scorer: str
) -> None:
    """Refuse reference log-probs scored in another dtype than the policy trains in: the DPO
    margins would start off zero by the precision gap alone. `scorer`: the `models` entry whose
    dtype the reference loads in."""
    from amp_ray.spec.blocks import weights_dtype

    trains_in = weights_dtype(training.precision)
    if scored <= {trains_in} or training.reference_dtype_mismatch == "allow":
        return
    shown = ", ".join(sorted(str(d) if d else "an unrecorded dtype" for d in scored))
    raise SpecError(
        f"{where} is scored in {shown}, but training.precision {training.precision} trains the "
        f"policy in {trains_in}",
        hint=f"set models.{scorer}.dtype: {trains_in} and score the reference again (offline: "
        "--stage reference --force), or change training.precision, or set "
        "training.reference_dtype_mismatch: allow",
    )


def set_aside_table(stage: str, results: list[RunResult]) -> pa.Table:
    """The rows the runs' workers set aside, once per item, as quarantine rows."""
    from amp_ray.storage.schemas import QUARANTINE

    rows = {row["item_id"]: row for result in results for row in result.set_aside}
    return pa.Table.from_pylist(
        [
            {
                "stage": stage,
                "item_id": key,
                "reason": row[QUARANTINE_REASON],
                "row_json": row[ROW_JSON],
            }
            for key, row in sorted(rows.items())
        ],
        schema=QUARANTINE,
    )


def _history(result: Any) -> list[dict[str, float]]:
    from amp_ray.training.preference import HISTORY_FILE
    from amp_ray.training.worker import checkpoint_file

    saved = checkpoint_file(result.checkpoint, HISTORY_FILE)
    if not saved:
        raise RuntimeError("training ended without its metrics history in the last checkpoint")
    return json.loads(saved)
