"""The rank stage: auto-check every item's candidates and keep K ranked levels (AMP §3.1 (c)).

A checker (the embedding checker of the paper, or the synthetic world's ground truth) scores each
candidate against the reference; the reference stays on top and K−1 distinct levels are kept
below it (amp_ray/ranking/level_selection.py). Items that cannot fill K distinct levels go to
quarantine with the reason. Outputs: rank/preferences (PREFERENCES) and rank/quarantine.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import pyarrow as pa

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
from amp_ray.runtime import map_with_actor_pool
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.storage.raysink import write_ray


class RankStage(Stage):
    name = "rank"
    inputs = (("generate", "candidates"),)
    outputs = ("preferences", "quarantine")

    def config(self) -> dict[str, Any]:
        return {"ranking": self.spec.ranking.model_dump(mode="json", exclude={"actors"})}

    def run(self) -> StageCounts:
        from amp_ray.ranking import CandidateRanker, ranker_kwargs

        ranking = self.spec.ranking
        candidates = self.run_dir.dataset("generate", "candidates")
        pool = ranking.actors
        kwargs = ranker_kwargs(ranking, ranking.num_levels)
        self.ensure_resources(
            [pool_request("ranking.actors", pool, "the ranking pool")],
            spare_cpus=SPARE_CPUS_FOR_TASKS,
        )
        source = candidates.read_ray(override_num_blocks=max(2, 4 * pool.max_actors))
        ranked = map_with_actor_pool(source, CandidateRanker, pool, kwargs)
        preferences = self.run_dir.writer(self.name, "preferences", "preferences")
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        route = functools.partial(
            route_quarantine, stage=self.name, good="preferences", bad="quarantine"
        )
        write_ray(ranked, {"preferences": preferences, "quarantine": quarantine}, route)
        kept = preferences.commit({"checker": ranking.checker, "num_levels": ranking.num_levels})
        return StageCounts(candidates.num_rows, kept.num_rows, quarantine.commit().num_rows)

    def summary(self) -> list[str]:
        preferences = self.run_dir.dataset(self.name, "preferences").read_table(
            ["levels", "order_changed"]
        )
        reasons = self.run_dir.dataset(self.name, "quarantine").read_table(["reason"])
        return levels_summary(preferences, reasons, self.spec.ranking.num_levels)


def levels_summary(preferences: pa.Table, reasons: pa.Table, num_levels: int) -> list[str]:
    """How many items reached K distinct levels, how often the checker reordered them, and
    which generators land at which level."""
    total = preferences.num_rows + reasons.num_rows
    changed = sum(bool(flag) for flag in preferences.column("order_changed").to_pylist())
    lines = [
        f"items with {num_levels} distinct levels: {preferences.num_rows} of {total} "
        f"({preferences.num_rows / max(1, total):.0%}); checked order differs from the initial "
        f"order in {changed / max(1, preferences.num_rows):.0%} of them"
    ]
    for reason, count in most_common(Counter(reasons.column("reason").to_pylist()), 3):
        lines.append(f"  dropped {count}: {reason}")
    by_level: list[Counter[str]] = [Counter() for _ in range(num_levels)]
    for levels in preferences.column("levels").to_pylist():
        for k, level in enumerate(levels):
            by_level[k][level["source"]] += 1
    for k, counts in enumerate(by_level):
        top = ", ".join(f"{source} {n}" for source, n in most_common(counts, 4))
        lines.append(f"  level {k}: {top}")
    return lines


def most_common(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """The n largest counts, ties by name: Counter.most_common keeps ties in the order the
    rows came in, which follows the order Ray Data's blocks were written."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
