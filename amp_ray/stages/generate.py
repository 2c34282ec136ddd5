"""The generate stage: candidate answers for every preference item, on chained Ray Data actor pools.

Items of `generation.splits` flow through one actor pool per model: each MEG expert (largest
first), each IG checkpoint (most data first), then the BDHS policy (one candidate per hiding
threshold). Each pool appends its candidates to the item's row; rows are written once, at the
end of the chain, journaled so that a killed run resumes with every item exactly once.
Outputs: generate/candidates (CANDIDATES) and generate/quarantine.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
from amp_ray.errors import SpecError
from amp_ray.models.registry import ActorModel, actor_model, model_uri
from amp_ray.runtime import light_map, map_with_actor_pool
from amp_ray.spec.alignment import GenerationSpec
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.batches import fixed_batches, where_in

HOW_IT_RUNS = {"actors": True, "vllm": True, "bdhs": {"engine": True}}  # not what is made


class GenerateStage(Stage):
    name = "generate"
    outputs = ("candidates", "quarantine")

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        made_by_sft = any(name in self.spec.sft.runs for name in self.model_names())
        return (("data", "items"),) + ((("sft", "metrics"),) if made_by_sft else ())

    def bdhs_model(self) -> str | None:
        return self.spec.generation.bdhs.model or self.spec.training.policy

    def model_names(self) -> list[str]:
        generation = self.spec.generation
        names: list[str] = []
        if "meg" in generation.methods:
            names += generation.meg.experts
        if "ig" in generation.methods:
            names += generation.ig.checkpoints
        bdhs = self.bdhs_model()
        if "bdhs" in generation.methods and bdhs is not None:
            names.append(bdhs)
        return names

    def config(self) -> dict[str, Any]:
        return {
            "seed": self.spec.seed,
            "generation": self.spec.generation.model_dump(mode="json", exclude=HOW_IT_RUNS),
            "models": {
                name: model_uri(self.spec, self.run_dir, name) for name in self.model_names()
            },
        }

    def preflight(self) -> None:
        if not self.spec.generation.methods:
            raise SpecError(
                "stage 'generate' has no generator: generation.methods is empty",
                hint="choose from meg, ig, bdhs",
            )
        if self.spec.generation.engine == "vllm":
            from amp_ray.generation.vllm_engine import check_vllm_environment

            check_vllm_environment(self.spec.generation.vllm, "generation")
        if "bdhs" in self.spec.generation.methods and self.bdhs_model() is None:
            raise SpecError(
                "BDHS needs a policy to hide the image from: set generation.bdhs.model "
                "or training.policy"
            )

    def pools(self) -> list[tuple[type, dict[str, Any]]]:
        """(callable class, constructor kwargs) of every actor pool in the chain, in order."""
        from amp_ray.generation.pools import bdhs_candidates, model_candidates

        generation: GenerationSpec = self.spec.generation
        seed = self.spec.seed

        def model(name: str) -> ActorModel:
            return actor_model(self.spec, self.run_dir, name, generation.actors.num_cpus)

        pools: list[tuple[type, dict[str, Any]]] = []
        rank = 1
        for method in generation.methods:
            if method == "bdhs":
                pools.append(bdhs_candidates(generation, model(str(self.bdhs_model())), rank, seed))
                rank += len(generation.bdhs.rho_th)
                continue
            names = generation.meg.experts if method == "meg" else generation.ig.checkpoints
            for name in names:
                pools.append(model_candidates(generation, method, model(name), rank, seed))
                rank += 1
        return pools

    def run(self) -> StageCounts:
        from amp_ray.generation.candidates import start_candidates

        pools = self.pools()
        actors = self.spec.generation.actors
        self.check_vllm_models(pools)
        # the chain's pools run side by side: all of them must fit at once
        self.ensure_resources(
            [
                pool_request("generation.actors", actors, f"the pool of {kw['model'].name}")
                for _, kw in pools
            ],
            spare_cpus=SPARE_CPUS_FOR_TASKS,
        )
        items = self.run_dir.dataset("data", "items")
        rows_in = _count_in_splits(items, self.spec.generation.splits)

        def pending(done: set[str]) -> Any:
            # Fixed batches in item order, one block each (sampling is seeded per batch): actors
            # share the work evenly, every finished batch is journaled on its own (a killed run
            # loses at most the batches in flight), and the candidates never depend on pool
            # sizes or on the order blocks finish in.
            in_splits = where_in("split", self.spec.generation.splits)
            rows = fixed_batches(items, actors.batch_size, ("split",), in_splits, done)
            rows = light_map(rows, start_candidates)
            for fn_class, kwargs in pools:
                rows = map_with_actor_pool(rows, fn_class, actors, kwargs, whole_blocks=True)
            return rows

        counts = self.write_journaled(pending, "candidates", "candidates")
        return StageCounts(rows_in, counts.rows_out, counts.rows_quarantined)

    def check_vllm_models(self, pools: list[tuple[type, dict[str, Any]]]) -> None:
        """Every model a vLLM pool loads is checked before any generation starts (the vLLM
        environment was, in preflight)."""
        from amp_ray.generation.vllm_engine import check_vllm_models

        vllm = [kwargs["model"] for _, kwargs in pools if kwargs.get("vllm") is not None]
        check_vllm_models({model.name: model.uri for model in vllm}, self.spec.storage)

    def summary(self) -> list[str]:
        table = self.run_dir.dataset(self.name, "candidates").read_table(["candidates", "rounds"])
        return candidates_summary(table)


def _count_in_splits(items: Any, splits: list[str]) -> int:
    column = items.read_table(["split"]).column("split")
    return int(pc.sum(pc.is_in(column, value_set=pa.array(splits))).as_py() or 0)


def candidates_summary(table: pa.Table) -> list[str]:
    """Per source: candidates and how many differ from the reference; BDHS tries; distinct
    answers per item."""
    per_source: dict[str, list[int]] = {}
    tries: list[int] = []
    unguided = 0
    distinct: list[int] = []
    for row in table.to_pylist():
        reference = [turn["answer"] for turn in row["rounds"]]
        texts = {tuple(reference)}
        for cand in row["candidates"]:
            stats = per_source.setdefault(cand["source"], [0, 0])
            stats[0] += 1
            stats[1] += cand["answers"] != reference
            texts.add(tuple(cand["answers"]))
            if cand["generator"] == "bdhs":
                info = json.loads(cand["info"])
                tries += info["tries"]
                unguided += sum(info["unguided"])
        distinct.append(len(texts))
    lines = [f"{'source':<24} {'candidates':>10} {'differ from reference':>22}"]
    for source, (count, differ) in per_source.items():
        lines.append(f"{source:<24} {count:>10} {differ / max(1, count):>22.2f}")
    if distinct:
        mean = sum(distinct) / len(distinct)
        lines.append(f"distinct answers per item (reference included): mean {mean:.2f}")
    if tries:
        lines.append(
            f"BDHS: mean tries {sum(tries) / len(tries):.2f}, "
            f"unguided last tries {unguided / len(tries):.2f}"
        )
    return lines
