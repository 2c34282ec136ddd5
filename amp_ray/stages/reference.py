"""The reference stage: log π_ref of every level of every preference item, stored with the data.

Reads rank/preferences (or data/preferences, for imported preference data), scores each level
once with the reference model (by default the policy's starting model) on a Ray Data actor
pool, journaled like generation so a killed run resumes. Outputs: reference/preferences
(REFERENCE_LOGPROBS: the preferences plus ref_logps) and reference/quarantine.
"""

from __future__ import annotations

from typing import Any

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
from amp_ray.errors import SpecError
from amp_ray.models.registry import model_uri
from amp_ray.runtime import map_with_actor_pool
from amp_ray.spec.blocks import PREFERENCE_SOURCES
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.batches import fixed_batches


class ReferenceStage(Stage):
    name = "reference"
    outputs = ("preferences", "quarantine")

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        source = "data" if self.spec.data.source in PREFERENCE_SOURCES else "rank"
        made_by_sft = self.reference_model() in self.spec.sft.runs
        return ((source, "preferences"),) + ((("sft", "metrics"),) if made_by_sft else ())

    def reference_model(self) -> str | None:
        return self.spec.reference.model or self.spec.training.policy

    def config(self) -> dict[str, Any]:
        name = self.reference_model()
        return {
            "model": name,
            "uri": model_uri(self.spec, self.run_dir, name) if name else None,
            "scores": "per_round",  # ref_logps per level and round (before: per level)
            "max_length": self.spec.training.max_length,
        }

    def preflight(self) -> None:
        if self.reference_model() is None:
            raise SpecError(
                "stage 'reference' needs a reference model: set reference.model or "
                "training.policy (the reference is the policy's starting point)"
            )

    def run(self) -> StageCounts:
        from amp_ray.generation.reference_scorer import ReferenceScorer, scorer_kwargs

        name = str(self.reference_model())
        source_stage, dataset = self.inputs[0]
        preferences = self.run_dir.dataset(source_stage, dataset)
        pool = self.spec.reference.actors
        kwargs = scorer_kwargs(self.spec, self.run_dir, name)
        self.ensure_resources(
            [pool_request("reference.actors", pool, f"scoring with {name}")],
            spare_cpus=SPARE_CPUS_FOR_TASKS,
        )

        def pending(done: set[str]) -> Any:
            # fixed batches in item order, one block each: every actor gets work, each batch is
            # journaled alone, and its padding (so the scored floats) never follows the pools
            rows = fixed_batches(preferences, pool.batch_size, done=done)
            return map_with_actor_pool(rows, ReferenceScorer, pool, kwargs, whole_blocks=True)

        counts = self.write_journaled(pending, "preferences", "reference_logprobs")
        return StageCounts(preferences.num_rows, counts.rows_out, counts.rows_quarantined)
