"""Answering items with a model on a Ray Data actor pool: every round, own answers as history."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from amp_ray.data.encode import load_image
from amp_ray.errors import DataError
from amp_ray.generation.candidates import load_engine, stable_seed
from amp_ray.models.registry import ActorModel, LoadOptions
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.engines import VllmSpec
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import ANSWERS


def answer_with_models(
    items: Any,
    models: dict[str, str],
    sampling: SamplingSpec,
    pool: Any,
    writers: dict[str, Any],
    route: Any,
    storage: Any = None,
    loads: dict[str, LoadOptions] | None = None,
    stage: Any = None,
    key: str = "evaluation.actors",
    vllm: VllmSpec | None = None,
) -> None:
    """Every model (name -> URI) answers the Ray dataset `items` on its own actor pool; the rows
    go to `writers` through `route` (answers, and the quarantine of items it cannot answer).
    Models are answered side by side, as many at once as leave CPUs for reading (on a cluster
    that grows: as many as it holds at its largest). `stage` (the stage answering, with `key`,
    the spec key of `pool`) waits for each wave's resources first. Given `vllm` settings the
    models answer on vLLM engines (generation/vllm_engine.py)."""
    from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
    from amp_ray.runtime import batched, concurrent_pools, map_with_actor_pool
    from amp_ray.storage.raysink import write_ray

    loads = loads or {}
    config = stage.spec.runtime.cluster_config if stage is not None else None
    for wave in batched(list(models), concurrent_pools(pool, config)):
        if stage is not None:
            requests = [pool_request(key, pool, f"the answering pool of {name}") for name in wave]
            stage.ensure_resources(requests, spare_cpus=SPARE_CPUS_FOR_TASKS)
        per_model = [
            map_with_actor_pool(
                items,
                AnswerGenerator,
                pool,
                {
                    "model": ActorModel(
                        name, models[name], loads.get(name, LoadOptions()), pool.num_cpus, storage
                    ),
                    "sampling": sampling,
                    "vllm": vllm,
                },
            )
            for name in wave
        ]
        generated = per_model[0].union(*per_model[1:]) if len(wave) > 1 else per_model[0]
        write_ray(generated, writers, route)


class AnswerGenerator:
    """Ray Data callable: item rows in, the model's answers to every round out (ANSWERS schema,
    plus the quarantine column for items it could not answer)."""

    def __init__(
        self, model: ActorModel, sampling: SamplingSpec, vllm: VllmSpec | None = None
    ) -> None:
        self.engine = load_engine(model, vllm)
        self.model_name = model.name
        self.sampling = sampling
        self.storage = model.storage

    def answer(self, rows: list[dict], images: list[Any]) -> list[list[Any]]:
        dialogues = [[turn["question"] for turn in row["rounds"]] for row in rows]
        seeds = [stable_seed(self.model_name, row["item_id"]) for row in rows]
        return self.engine.answer_dialogues(images, dialogues, self.sampling, seeds)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images: list[Any] = []
        reasons: list[str | None] = []
        for row in rows:
            try:
                images.append(load_image(row, self.storage))
                reasons.append(None)
            except DataError as exc:
                images.append(None)
                reasons.append(exc.message)
        usable = [i for i, reason in enumerate(reasons) if reason is None]
        answered = (
            self.answer([rows[i] for i in usable], [images[i] for i in usable]) if usable else []
        )
        results: dict[int, list[Any]] = dict(zip(usable, answered, strict=True))
        out = [
            {
                "item_id": row["item_id"],
                "model": self.model_name,
                "split": row["split"],
                "task": row["task"],
                "questions": [turn["question"] for turn in row["rounds"]],
                "references": [turn["answer"] for turn in row["rounds"]],
                "answers": [g.text for g in results.get(i, [])],
                "finished": [g.finished for g in results.get(i, [])],
                "annotations": row["annotations"],
            }
            for i, row in enumerate(rows)
        ]
        table = pa.Table.from_pylist(out, schema=ANSWERS)
        return table.append_column(QUARANTINE_REASON, pa.array(reasons, pa.string()))
