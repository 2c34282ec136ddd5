"""The evaluate stage: the hallucination benchmarks for every model, on Ray Data actor pools.

Items come from the published benchmark files of `evaluation.files` or, for a benchmark without
a file, from the world's eval splits. Each model answers every item with the benchmark decoding
(MRHal-Bench's defaults: greedy, 4 beams, no-repeat-ngram 5), every round with its own earlier
answers as history and the image in the first round. A judge pool then rates the MRHal dialogues
and MMHal questions 0–6, and the driver computes the metrics.
Outputs: evaluate/answers, evaluate/judgments, evaluate/metrics, evaluate/quarantine (records
that could not be read, items that could not be answered or judged, each with its reason).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pyarrow as pa

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, pool_request
from amp_ray.data.items import in_fraction, rows_where
from amp_ray.errors import SpecError
from amp_ray.models.registry import load_options, model_uri
from amp_ray.runtime import light_map, map_with_actor_pool
from amp_ray.stages.base import Stage, StageCounts
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.world.generate import BENCHMARK_SPLITS

WORLD_TASKS = {"chair": "caption", "pope": "existence", "mrhal": "dialogue", "mmhal": "dialogue"}


class EvaluateStage(Stage):
    name = "evaluate"
    outputs = ("answers", "judgments", "metrics", "quarantine")

    @property
    def inputs(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        inputs: tuple[tuple[str, str], ...] = ()
        if self._world_benchmarks():
            inputs += (("data", "items"),)
        if any(name in self.spec.sft.runs for name in self._requested()):
            inputs += (("sft", "metrics"),)
        if "train" in self.spec.stages or self.run_dir.dataset("train", "runs").exists:
            inputs += (("train", "runs"),)
        return inputs

    def config(self) -> dict[str, Any]:
        return {
            "evaluation": self.spec.evaluation.model_dump(
                mode="json", exclude={"actors", "judge_actors", "vllm"}
            ),
            "models": self.models(),
            # the prompt files' contents, not only their paths: an edited template re-judges
            "judge_prompts": {b: t.version for b, t in self._judge_templates.items()},
        }

    @functools.cached_property
    def _judge_templates(self) -> dict[str, Any]:
        """The prompt files, read once for the stage's config, preflight and judge pool."""
        from amp_ray.evaluation.judge_prompt import read_prompt_files

        return read_prompt_files(self.spec.evaluation.judge, self.spec.storage)

    def preflight(self) -> None:
        if self.spec.evaluation.engine == "vllm":
            from amp_ray.generation.vllm_engine import check_vllm_environment

            check_vllm_environment(self.spec.evaluation.vllm, "evaluation")
        if self._world_benchmarks() and self.spec.data.source != "world":
            raise SpecError(
                f"benchmarks {self._world_benchmarks()} have no file in evaluation.files and the "
                "data is not the world, so there are no items to run them on",
                hint="add evaluation.files.<benchmark>.path, or drop them from benchmarks",
            )
        if self.spec.evaluation.judge.kind == "ground_truth" and any(
            name in self.spec.evaluation.files for name in ("mrhal", "mmhal")
        ):
            raise SpecError(
                "the ground_truth judge rates world items only; a benchmark file needs an LLM",
                hint="set evaluation.judge.kind: openai with base_url and model",
            )
        if self.spec.evaluation.judge.kind == "openai":
            from amp_ray.evaluation.llm_judge import read_api_key

            read_api_key(self.spec.evaluation.judge)  # a missing key stops before Ray starts
            # and so does a prompt file that cannot be used (read here, kept for the stage)
            self._judge_templates  # noqa: B018

    def _world_benchmarks(self) -> list[str]:
        evaluation = self.spec.evaluation
        return [b for b in evaluation.benchmarks if b not in evaluation.files]

    def _requested(self) -> list[str]:
        return list(self.spec.evaluation.models) or [*self.spec.models, *self.spec.sft.runs]

    def models(self) -> dict[str, str]:
        """name -> URI of every model to evaluate: evaluation.models, or every model the run
        made or named (base models, SFT runs, the train stage's models)."""
        trained = self._trained()
        names = self._requested()
        if not self.spec.evaluation.models:
            names += [name for name in trained if name not in names]
        out: dict[str, str] = {}
        for name in names:
            if name in trained:
                out[name] = trained[name]
            elif name in self.spec.models or name in self.spec.sft.runs:
                out[name] = model_uri(self.spec, self.run_dir, name)
            else:
                raise SpecError(
                    f"evaluation.models names {name!r}, which is neither in models, in "
                    "sft.runs nor a model of the train stage in this run",
                    hint=f"known: {sorted({*self.spec.models, *self.spec.sft.runs, *trained})}",
                )
        return out

    def _trained(self) -> dict[str, str]:
        runs = self.run_dir.dataset("train", "runs")
        if not runs.exists:
            return {}
        names = runs.read_table(["model"]).column("model").to_pylist()
        return {name: self.run_dir.location.join("train", "models", name).uri for name in names}

    def run(self) -> StageCounts:
        from amp_ray.evaluation.answers import answer_with_models

        evaluation = self.spec.evaluation
        if evaluation.engine == "vllm":  # before any answer: every model vLLM is to load
            from amp_ray.generation.vllm_engine import check_vllm_models

            check_vllm_models(self.models(), self.spec.storage)
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        answers = self.run_dir.writer(self.name, "answers", "answers")
        items, rows_in = self._items(quarantine)
        route = functools.partial(route_quarantine, stage=self.name, good="answers", bad="q")
        # each model as it loads everywhere (registry.load_options)
        loads = {name: load_options(self.spec, name) for name in self.models()}
        answer_with_models(
            items,
            self.models(),
            evaluation.decoding,
            evaluation.actors,
            {"answers": answers, "q": quarantine},
            route,
            self.spec.storage,
            loads,
            stage=self,
            key="evaluation.actors",
            vllm=evaluation.vllm if evaluation.engine == "vllm" else None,
        )
        answered = answers.commit()
        judgments = self._judge(quarantine) if answered.num_rows else None
        quarantine.commit()
        self._metrics(judgments)
        bad = self.run_dir.dataset(self.name, "quarantine").read_table().num_rows
        return StageCounts(rows_in, answered.num_rows, bad)

    def _items(self, quarantine: Any) -> tuple[Any, int]:
        """The items to answer (one Ray dataset of one batch a block) and how many there are."""
        import ray
        import ray.data

        parts = []
        for benchmark, file in self.spec.evaluation.files.items():
            from amp_ray.evaluation.benchmarks import read_benchmark

            good, bad = read_benchmark(
                benchmark, file.path, file.image_root, self.spec.storage, file.labels
            )
            quarantine.write_table(bad)
            parts.append(ray.data.from_blocks([good]))  # no 1-CPU metadata task (inputs.py)
        world = self._world_benchmarks()
        if world:
            items = self.run_dir.dataset("data", "items").read_ray()
            select = functools.partial(world_items, benchmarks=world, shares=self._shares())
            parts.append(light_map(items, select))
        dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        # Fixed batches, in item order: which items share a batch (and so its padding) must not
        # follow the order Ray Data's read blocks finish in, or the answers change with the pool
        # sizes. The eval sets are small (benchmark files are read in the driver anyway).
        refs = dataset.materialize().to_arrow_refs()
        table = pa.concat_tables(ray.get(refs), promote_options="default")
        table = table.sort_by("item_id")
        size = self.spec.evaluation.actors.batch_size
        batches = [table.slice(start, size) for start in range(0, table.num_rows, size)]
        return ray.data.from_blocks(batches or [table]), table.num_rows

    def _shares(self) -> dict[str, float]:
        cap = self.spec.evaluation.items_per_split
        splits = self.spec.data.world.splits
        return {
            name: 1.0 if cap is None else min(1.0, cap / max(1, getattr(splits, name)))
            for name in BENCHMARK_SPLITS
        }

    def _judge(self, quarantine: Any) -> pa.Table:
        from amp_ray.evaluation.judge_pool import JUDGED_TASKS, JudgeRater
        from amp_ray.storage.raysink import write_ray

        judgments = self.run_dir.writer(self.name, "judgments", "judgments")
        answers = self.run_dir.dataset(self.name, "answers").read_ray()
        judged = functools.partial(rows_where, column="task", values=tuple(JUDGED_TASKS))
        rows = light_map(answers, judged)
        pool = self.spec.evaluation.judge_actors
        request = pool_request("evaluation.judge_actors", pool, "the judge pool")
        self.ensure_resources([request], spare_cpus=SPARE_CPUS_FOR_TASKS)
        rater = {"spec": self.spec.evaluation.judge, "templates": self._judge_templates}
        rated = map_with_actor_pool(rows, JudgeRater, pool, rater)
        route = functools.partial(route_quarantine, stage=self.name, good="judgments", bad="q")
        write_ray(rated, {"judgments": judgments, "q": quarantine}, route)
        judgments.commit()
        return self.run_dir.dataset(self.name, "judgments").read_table()

    def _metrics(self, judgments: pa.Table | None) -> None:
        from amp_ray.evaluation.eval_metrics import evaluation_metric_rows, failures

        answers_set = self.run_dir.dataset(self.name, "answers")
        answers = answers_set.read_table() if answers_set.exists else None
        quarantine = self.run_dir.dataset(self.name, "quarantine").read_table()
        rows = evaluation_metric_rows(
            answers, judgments, failures(quarantine), self.spec.evaluation.mrhal_mean_rate
        )
        # the models in the order the spec names them: the tables and the report keep it
        order = {name: i for i, name in enumerate(self.models())}
        rows.sort(key=lambda row: order.get(row["model"], len(order)))
        metrics = self.run_dir.writer(self.name, "metrics", "metrics")
        metrics.write_table(pa.Table.from_pylist(rows, schema=metrics.schema))
        metrics.commit()

    def summary(self) -> list[str]:
        from amp_ray.report.document import headline_lines

        # the report stage prints the same table at the job's end
        show = "report" not in self.spec.stages
        lines = headline_lines([self.run_dir.uri], self.spec.storage) if show else []
        bad = self.run_dir.dataset(self.name, "quarantine").read_table(["reason"])
        if bad.num_rows:
            lines.append(f"{bad.num_rows} failed items, with reasons, in {self.name}/quarantine")
        return lines


def world_items(batch: pa.Table, benchmarks: list[str], shares: dict[str, float]) -> pa.Table:
    """The world's eval items of `benchmarks` on about `shares` of each split's images (by a
    stable hash of the image's id); mmhal rows are each dialogue's second question alone."""
    rows = rows_where(batch, "split", tuple(shares))
    tasks = tuple(sorted({WORLD_TASKS[b] for b in benchmarks if b != "mmhal"}))
    if "mmhal" in benchmarks:
        tasks = tuple(sorted({*tasks, "dialogue"}))
    picked = rows_where(rows, "task", tasks)
    # whole images are kept or left out: every benchmark runs on the same images
    keep = [
        in_fraction("/".join(item_id.split("/")[:2]), shares[split])
        for item_id, split in zip(
            picked.column("item_id").to_pylist(), picked.column("split").to_pylist(), strict=True
        )
    ]
    picked = picked.filter(pa.array(keep, pa.bool_()))
    if "mmhal" not in benchmarks:
        return picked
    single = mmhal_rows(rows_where(picked, "task", ("dialogue",)))
    if "mrhal" not in benchmarks:
        picked = rows_where(picked, "task", tuple(t for t in tasks if t != "dialogue"))
    return pa.concat_tables([picked, single])


def mmhal_rows(dialogues: pa.Table) -> pa.Table:
    """Each world dialogue's second round as a one-question item (task mmhal)."""
    out = []
    for row in dialogues.to_pylist():
        if len(row["rounds"]) < 2:
            continue
        notes = json.loads(row["annotations"])
        notes["rounds"] = notes["rounds"][1:2]
        out.append(
            {
                **row,
                "item_id": f"{row['item_id']}/mmhal",
                "task": "mmhal",
                "rounds": row["rounds"][1:2],
                "annotations": json.dumps(notes, sort_keys=True),
            }
        )
    return pa.Table.from_pylist(out, schema=dialogues.schema)
