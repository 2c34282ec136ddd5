"""The train stage: the policy aligned on the K-level preference data with the spec's loss.

Reads reference/preferences (the levels with their reference log-probs), or the preferences
alone when the reference runs in the loop or the loss needs none. Items are encoded on a Ray Data
actor pool, rows training must not see go to train/quarantine with the reason, and the policy is
trained on Ray Train + DeepSpeed (amp_ray/training/preference.py). A killed run resumes from its
last checkpoint; a run with other settings starts afresh. Outputs: the model at
train/models/<training.name> (HF format), train/log (every logged window), train/quarantine.
"""

from __future__ import annotations

import functools
import json
import zlib
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.errors import SpecError
from amp_ray.models.registry import model_uri
from amp_ray.models.store import commit_model, new_model_attempt
from amp_ray.runtime import light_map, map_with_actor_pool
from amp_ray.spec.blocks import PREFERENCE_SOURCES
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON, split_batch
from amp_ray.storage.raysink import write_ray
from amp_ray.storage.run import fingerprint

HOW_IT_RUNS = {"encode_actors": True, "log_every": True, "checkpoint_every": True}


class TrainStage(Stage):
    name = "train"
    outputs = ("quarantine", "log")

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

    def reads_stored_reference(self) -> bool:
        training = self.spec.training
        return training.loss != "sft" and training.reference == "precomputed"

    def config(self) -> dict[str, Any]:
        policy = self.spec.training.policy
        return {
            "seed": self.spec.seed,
            "policy": model_uri(self.spec, self.run_dir, policy) if policy else None,
            "training": self.spec.training.model_dump(mode="json", exclude=HOW_IT_RUNS),
        }

    def preflight(self) -> None:
        if self.spec.training.policy is None:
            raise SpecError("stage 'train' needs training.policy: the model to align")

    def run(self) -> StageCounts:
        from amp_ray.training.launch import fit
        from amp_ray.training.preference import preference_loop

        source = self.run_dir.dataset(*self.inputs[0])
        check_num_levels(source, self.spec.training.num_levels, "/".join(self.inputs[0]))
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        encoded = self._encode(source, quarantine)
        quarantined = quarantine.commit().num_rows
        rows = encoded.count()
        if rows == 0:
            raise SpecError(
                f"no usable training items in {'/'.join(self.inputs[0])}: all {quarantined} "
                "are in train/quarantine with their reasons"
            )
        location = self.run_dir.location.join(self.name, "models", self.spec.training.name)
        attempt = new_model_attempt()
        config = self._loop_config(location.uri, attempt)
        # one Ray Train run per settings: a changed spec never resumes another's checkpoint
        run_name = f"{self.spec.training.name}-{fingerprint(self.config(), self.input_versions())}"
        storage = self.run_dir.location.join(self.name, "ray")
        if self.force:
            storage.remove()
        result = fit(
            preference_loop,
            config,
            {"train": encoded},
            self.spec.training.scaling,
            run_name,
            storage,
            unsplit=True,
        )
        history = _history(result)
        commit_model(location, attempt, {"settings": self.config(), "final": history[-1]})
        self._write_log(history)
        return StageCounts(source.num_rows, rows, quarantined)

    def _encode(self, source: Any, quarantine: Any) -> Any:
        from amp_ray.data.levels import LevelEncoder

        training = self.spec.training
        pool = training.encode_actors
        levels = training.trained_levels[:1] if training.loss == "sft" else training.trained_levels
        args = (
            model_uri(self.spec, self.run_dir, str(training.policy)),
            training.max_length,
            training.round_weight_step,
            training.num_levels,
            levels,
            self.reads_stored_reference(),
            self.spec.storage,
        )
        rows = source.read_ray().repartition(target_num_rows_per_block=pool.batch_size)
        encoded = map_with_actor_pool(rows, LevelEncoder, pool, args).materialize()
        write_ray(encoded, {"quarantine": quarantine}, functools.partial(_bad, stage=self.name))
        # sorted by item id: a stored order every worker reads the same way
        return light_map(encoded, _good).sort("item_id").materialize()

    def _loop_config(self, output_uri: str, attempt: str) -> dict[str, Any]:
        from amp_ray.training.optim import EngineConfig
        from amp_ray.training.preference import PreferenceLoopConfig

        t = self.spec.training
        seed = self.spec.seed + zlib.crc32(t.name.encode())
        policy = model_uri(self.spec, self.run_dir, str(t.policy))
        in_loop = t.loss != "sft" and t.reference == "in_loop"
        return PreferenceLoopConfig(
            init_path=policy,
            reference_path=policy if in_loop else None,
            output_uri=output_uri,
            attempt=attempt,
            storage=self.spec.storage.model_dump(),
            objective={
                "loss": t.loss,
                "beta": t.beta,
                "penalty_weight": t.penalty.weight,
                "length_normalise": t.penalty.length_normalise,
                "spread_over_pairs": t.penalty.spread_over_pairs,
                "gamma": t.gamma,
            },
            engine=asdict(EngineConfig.from_block(t, t.max_steps, seed)),
            lora=t.lora.model_dump() if t.lora else None,
            freeze_vision=t.freeze_vision,
            gradient_checkpointing=t.gradient_checkpointing,
            forward=t.forward,
        ).to_dict()

    def _write_log(self, history: list[dict[str, float]]) -> None:
        log = self.run_dir.writer(self.name, "log", "training_log")
        name = self.spec.training.name
        rows = [
            {"model": name, "step": int(window["step"]), "metric": key, "value": float(value)}
            for window in history
            for key, value in window.items()
            if key != "step"
        ]
        log.write_table(pa.Table.from_pylist(rows, schema=log.schema))
        log.commit()

    def summary(self) -> list[str]:
        from amp_ray.training.tables import training_table

        return training_table(self.run_dir.dataset(self.name, "log").read_table())


def check_num_levels(dataset: Any, num_levels: int, where: str) -> None:
    """Fail before any worker starts when the data's K is not the spec's."""
    counts = pc.list_value_length(dataset.read_table(["levels"]).column("levels"))
    most = pc.max(counts).as_py() or 0
    if most != num_levels:
        raise SpecError(
            f"training.num_levels is {num_levels} but the items in {where} have {most} levels: "
            f"set training.num_levels: {most}, or re-rank with ranking.num_levels: {num_levels}"
        )


def _history(result: Any) -> list[dict[str, float]]:
    from amp_ray.training.preference import HISTORY_FILE
    from amp_ray.training.worker import checkpoint_file

    saved = checkpoint_file(result.checkpoint, HISTORY_FILE)
    if not saved:
        raise RuntimeError("training ended without its metrics history in the last checkpoint")
    return json.loads(saved)


def _bad(batch: pa.Table, stage: str) -> dict[str, pa.Table]:
    return {"quarantine": split_batch(batch, stage)[1]}


def _good(batch: pa.Table) -> pa.Table:
    good = batch.filter(pc.is_null(batch.column(QUARANTINE_REASON)))
    return good.drop_columns([QUARANTINE_REASON, ROW_JSON])
