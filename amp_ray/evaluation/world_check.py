"""The world check: models answer the eval splits' captions, POPE questions and MRHal-style
dialogues greedily on Ray Data actor pools, and the answers are scored against the world's ground
truth (the dialogues with the MRHal rubric by the world's judge). The SFT stage
checks its experts with it, the train stage the policy before and after alignment."""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa

from amp_ray.data.items import in_fraction, rows_where
from amp_ray.runtime import light_map
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.blocks import WorldCheckSpec
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.world.generate import EVAL_SPLITS

EVAL_TASKS = ("caption", "existence", "dialogue")


def check_models(
    stage: Any, models: dict[str, str], settings: WorldCheckSpec, quarantine: Any
) -> pa.Table:
    """Answers of every model (name -> URI) to the check's items, written to <stage>/answers
    (items a model cannot answer to `quarantine`), and their world metrics to <stage>/metrics,
    which is returned. Data that is not the world, or a check not enabled, commits both empty."""
    from amp_ray.evaluation.answers import answer_with_models
    from amp_ray.evaluation.world_eval import world_metric_rows

    answers = stage.run_dir.writer(stage.name, "answers", "answers")
    metrics = stage.run_dir.writer(stage.name, "metrics", "metrics")
    if stage.spec.data.source == "world" and models and settings.enabled:
        sampling = SamplingSpec(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
        )
        items = stage.run_dir.dataset("data", "items").read_ray()
        eval_items = light_map(
            items, functools.partial(_eval_rows, shares=_shares(stage, settings))
        )
        route = functools.partial(
            route_quarantine, stage=stage.name, good="answers", bad="quarantine"
        )
        writers = {"answers": answers, "quarantine": quarantine}
        answer_with_models(
            eval_items,
            models,
            sampling,
            settings.actors,
            writers,
            route,
            stage.spec.storage,
            stage=stage,
            key=f"{'sft' if stage.name == 'sft' else 'training'}.eval.actors",
        )
    committed = answers.commit()
    table = (
        stage.run_dir.dataset(stage.name, "answers").read_table() if committed.num_rows else None
    )
    rows = world_metric_rows(table) if table is not None else []
    result = pa.Table.from_pylist(rows, schema=metrics.schema)
    metrics.write_table(result)
    metrics.commit()
    return result


def _shares(stage: Any, settings: WorldCheckSpec) -> dict[tuple[str, str], float]:
    """(split, task) -> the share of its items the check answers."""
    splits = stage.spec.data.world.splits
    wanted = {
        "caption": settings.items_per_split,
        "existence": settings.items_per_split / 6,  # 6 POPE questions per image
        "dialogue": settings.dialogues_per_split,
    }
    return {
        (name, task): min(1.0, count / max(1, getattr(splits, name)))
        for name in EVAL_SPLITS
        for task, count in wanted.items()
    }


def _eval_rows(batch: pa.Table, shares: dict[tuple[str, str], float]) -> pa.Table:
    """The check's items: captions, POPE questions and dialogues of the eval splits, about
    `items_per_split` captions and POPE questions and `dialogues_per_split` dialogues per split
    (a stable hash picks them)."""
    splits = tuple(sorted({split for split, _ in shares}))
    rows = rows_where(rows_where(batch, "split", splits), "task", EVAL_TASKS)
    keep = [
        in_fraction(item_id, shares[(split, task)])
        for item_id, split, task in zip(
            rows.column("item_id").to_pylist(),
            rows.column("split").to_pylist(),
            rows.column("task").to_pylist(),
            strict=True,
        )
    ]
    return rows.filter(pa.array(keep, pa.bool_()))
