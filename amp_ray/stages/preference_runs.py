"""The preference-training runs of a train stage: encoding the K-level data once, the settings
each run's committed model must match, and one Ray Train run per planned model
(training/preference.py). Both the offline runs (stages/train.py) and the online rounds
(stages/online.py) train through `PreferenceRuns`."""

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
from amp_ray.models.registry import actor_model, load_options, model_uri
from amp_ray.models.store import commit_model, model_metadata, new_model_attempt
from amp_ray.runtime import concurrent_runs
from amp_ray.spec.alignment import TrainingSpec
from amp_ray.stages.base import Encoding, Stage
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON
from amp_ray.storage.run import fingerprint
from amp_ray.training.runs import PlannedRun, arms

if TYPE_CHECKING:  # torch-side types: imported where a run is built
    from amp_ray.training.optim import EngineConfig
    from amp_ray.training.preference import PreferenceLoopConfig

# training keys that change how a run runs, not what it learns: not part of its settings
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


class PreferenceRuns:
    """The runs of the train stage `stage` (its spec, run directory, resources and trackers)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.spec = stage.spec
        self.run_dir = stage.run_dir
        self.name = stage.name

    def recipes(self) -> dict[str, TrainingSpec]:
        """arm name -> its training block, the training block's own recipe first."""
        training = self.spec.training
        return {arm: training.arm(arm) for arm in arms(training)}

    def reads_stored_reference(self) -> bool:
        return any(recipe.reads_stored_reference for recipe in self.recipes().values())

    def encoded_levels(self) -> list[int]:
        """The data levels some recipe trains on: each item is encoded with these once."""
        return sorted({k for recipe in self.recipes().values() for k in recipe.read_levels})

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

    def encode(
        self, source: Any, quarantine: Any, recipe: TrainingSpec | None = None, name: str = ""
    ) -> Any:
        """The rows of `source` encoded for training into train/encoded<name> (token ids beside
        the stored image; the workers make the pixel inputs): for the offline recipes, or for
        `recipe` alone (an online round), with every level it trains on; reused where it is
        committed from the same source and settings (Stage.encode_once)."""
        from amp_ray.data.encode import EncodeSettings
        from amp_ray.data.level_encoding import LevelEncoder

        training = self.spec.training
        pool = training.encode_actors
        if recipe is None:
            levels = (training.num_levels, self.encoded_levels(), self.reads_stored_reference())
        else:
            levels = (recipe.num_levels, recipe.read_levels, recipe.reference == "precomputed")
        settings = EncodeSettings(
            processor_path=model_uri(self.spec, self.run_dir, str(training.policy)),
            max_length=training.max_length,
            trust_remote_code=load_options(self.spec, str(training.policy)).trust_remote_code,
            storage=self.spec.storage,
        )
        kwargs = {"settings": settings}
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

        return self.stage.encode_once(f"encoded{name}", rows, encoding)

    # -- training runs ----------------------------------------------------------------------

    def location(self, run: PlannedRun) -> Any:
        return self.run_dir.location.join(self.name, "models", run.model)

    def train_all(self, runs: list[PlannedRun], encoded: Any) -> list[RunResult]:
        training = self.spec.training
        concurrency = concurrent_runs(
            training.scaling,
            training.input_cpus,
            training.compare.max_concurrent_runs,
            "training.scaling",
            self.spec.runtime.cluster_config,
        )
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda run: self.train(run, encoded), runs))

    def train(self, run: PlannedRun, encoded: Any, start: RunStart | None = None) -> RunResult:
        """Train `run` unless its model is committed with the same settings. `start` is for a
        run that is not a planned offline one (an online round)."""
        from amp_ray.training.inputs import set_aside_rows
        from amp_ray.training.launch import fit
        from amp_ray.training.preference import preference_loop

        recipe = start.recipe if start else self.spec.training.arm(run.arm)
        location = self.location(run)
        settings = {
            "stage": self.offline_config(),
            "inputs": self.stage.input_versions(),
            "run": asdict(run),
            "recipe": recipe.model_dump(mode="json", exclude={**HOW_IT_RUNS, "online": True}),
            **(start.settings if start else {}),
        }
        metadata = model_metadata(location)
        if metadata.get("settings") == settings and not self.stage.force:
            return RunResult(run, metadata["history"], metadata.get("set_aside", []))
        attempt = new_model_attempt()
        config = self.loop_config(recipe, run, location.uri, attempt, start)
        self.stage.ensure_resources(
            [workers_request("training.scaling", recipe.scaling, f"training {run.model}")]
        )
        # one Ray Train run per settings: a changed spec never resumes another's checkpoint
        result = fit(
            preference_loop,
            config,
            recipe.scaling,
            f"{run.model}-{fingerprint(settings, {})}",
            self.run_dir.location.join(self.name, "ray"),
            inputs=self.inputs(encoded, recipe, config.engine),
            tracker=self.stage.training_tracker(run.model, config.engine.steps),
        )
        history = _history(result)
        set_aside = set_aside_rows(result.checkpoint)
        metadata = {"settings": settings, "history": history, "set_aside": set_aside}
        commit_model(location, attempt, metadata)
        return RunResult(run, history, set_aside)

    def inputs(self, encoded: Any, recipe: TrainingSpec, engine: EngineConfig) -> Any:
        """The run's planned inputs (training/inputs.py) over the encoded dataset."""
        from amp_ray.training.inputs import BatchLayout, PlannedInputs

        policy = actor_model(self.spec, self.run_dir, str(recipe.policy), recipe.input_cpus)
        layout = BatchLayout.of(recipe)
        return PlannedInputs.plan(encoded, layout, policy, engine.seed, engine.steps)

    def loop_config(
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
