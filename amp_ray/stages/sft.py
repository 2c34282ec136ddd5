"""The sft stage: starting models trained on the `sft` split, then checked on the eval splits.

Tiny LLaVA models named in `models` (with `tiny:`) are built here from config, with a tokenizer
trained on the run's texts. Every run of `sft.runs` trains on Ray Train + DeepSpeed from its
`init` (a model, or another run: incremental generation's nested data), on the items whose id
hashes into its `data_fraction`. Models are committed under <run_dir>/sft/models/<run>; a run whose
model is committed with the same settings is not trained again, and a run killed part-way resumes
from its last checkpoint. Outputs: sft/quarantine, sft/answers, sft/metrics.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import zlib
from pathlib import Path
from typing import Any

from amp_ray.cluster.requests import pool_request, workers_request
from amp_ray.data.items import in_fraction, rows_where
from amp_ray.errors import SpecError
from amp_ray.models.registry import (
    actor_model,
    load_options,
    model_uri,
    root_model,
    run_in_dependency_order,
)
from amp_ray.models.store import (
    commit_model,
    committed_model,
    local_model_path,
    model_metadata,
    new_model_attempt,
)
from amp_ray.runtime import concurrent_runs, light_map
from amp_ray.stages.base import Encoding, Stage, StageCounts

# sft settings that change how the stage runs, not what it makes
HOW_IT_RUNS = {
    "encode_actors": True,
    "input_cpus": True,
    "max_concurrent_runs": True,
    "log_every": True,
    "checkpoint_every": True,
    "eval": {"actors": True},
}
PROCESSOR_FILES = ("config.json", "generation_config.json")  # not part of the processor


class SftStage(Stage):
    name = "sft"
    inputs = (("data", "items"),)
    outputs = ("quarantine", "answers", "metrics")

    def config(self) -> dict[str, Any]:
        roots = sorted({root_model(self.spec, name) for name in self.spec.sft.runs})
        return {
            "seed": self.spec.seed,
            "sft": self.spec.sft.model_dump(mode="json", exclude=HOW_IT_RUNS),
            # the attention kernels change how a model runs, not what it learns
            "models": {
                name: self.spec.models[name].model_dump(
                    mode="json", exclude={"attn_implementation"}
                )
                for name in roots
            },
        }

    def _training_settings(self, name: str) -> dict[str, Any]:
        """What a trained model depends on; a committed model with other settings is retrained."""
        config = self.config()
        config["sft"].pop("eval")
        config["sft"].pop("runs")
        chain = [name]
        while chain[-1] in self.spec.sft.runs:
            chain.append(self.spec.sft.runs[chain[-1]].init)
        runs = {n: self.spec.sft.runs[n].model_dump(mode="json") for n in chain[:-1]}
        return {**config, "chain": runs, "models": {chain[-1]: config["models"][chain[-1]]}}

    def preflight(self) -> None:
        if not self.spec.sft.runs:
            raise SpecError("stage 'sft' has nothing to train: sft.runs is empty")
        for name in self.spec.sft.runs:
            root = root_model(self.spec, name)
            tiny = self.spec.models[root].tiny
            if tiny is not None and tiny.image_size is None and self.spec.data.source != "world":
                raise SpecError(f"models.{root}.tiny.image_size is needed for imported data")

    def run(self) -> StageCounts:
        items = self.run_dir.dataset("data", "items")
        if self.force:
            self.run_dir.location.join(self.name, "ray").remove()
        self._build_tiny_models(items)
        quarantine = self.run_dir.writer(self.name, "quarantine", "quarantine")
        encoded = self._encode(items, quarantine)
        datasets = {name: encoded[self._processor_key(name)] for name in self.spec.sft.runs}
        sft = self.spec.sft
        concurrency = concurrent_runs(
            sft.scaling,
            sft.input_cpus,
            sft.max_concurrent_runs,
            "sft.scaling",
            self.spec.runtime.cluster_config,
        )
        trained = run_in_dependency_order(
            self.spec, lambda name: self._train(name, datasets[name]), concurrency
        )
        trained_rows = max(trained.values())
        self._evaluate(quarantine)
        quarantined = quarantine.commit().num_rows
        sft_rows = max(dataset.num_rows for dataset in encoded.values())
        return StageCounts(sft_rows, trained_rows, quarantined)

    # -- models built from config ---------------------------------------------------------------

    def _build_tiny_models(self, items: Any) -> None:
        from amp_ray.models.tiny import create_tiny_model

        roots = {root_model(self.spec, name) for name in self.spec.sft.runs}
        tiny = {name: self.spec.models[name].tiny for name in sorted(roots)}
        texts: list[str] | None = None
        for name, spec in tiny.items():
            location = self.run_dir.location.join(self.name, "init", name)
            if spec is None or (committed_model(location) and not self.force):
                continue
            if texts is None:
                rounds = items.read_table(["rounds"]).column("rounds").to_pylist()
                texts = [
                    turn[key]
                    for dialogue in rounds
                    for turn in dialogue
                    for key in ("question", "answer")
                ]
            image_size = spec.image_size or self.spec.data.world.image_size
            seed = self.spec.seed + zlib.crc32(name.encode())
            with tempfile.TemporaryDirectory() as directory:
                create_tiny_model(directory, spec, texts, image_size, seed)
                _commit_directory(directory, location, {"built_from": spec.model_dump()})

    # -- encoding, once per distinct processor ----------------------------------------------------

    def _processor_key(self, name: str) -> str:
        """Runs whose starting models share a processor share one encoded dataset."""
        uri = model_uri(self.spec, self.run_dir, root_model(self.spec, name))
        path = Path(local_model_path(uri, self.spec.storage))
        digest = hashlib.sha256()
        if not path.is_dir():  # a hub id (llava-hf/llava-1.5-7b-hf): the id names its processor
            digest.update(uri.encode())
            return digest.hexdigest()
        for file in sorted(path.iterdir()):
            if (
                file.is_file()
                and file.suffix in (".json", ".jinja", ".model", ".txt")
                and file.name not in PROCESSOR_FILES
            ):
                digest.update(file.name.encode() + file.read_bytes())
        return digest.hexdigest()

    def _encode(self, items: Any, quarantine: Any) -> dict[str, Any]:
        from amp_ray.data.encode import EncodeSettings, ItemEncoder

        groups: dict[str, str] = {}
        for name in self.spec.sft.runs:
            groups.setdefault(self._processor_key(name), root_model(self.spec, name))
        pool = self.spec.sft.encode_actors
        request = pool_request("sft.encode_actors", pool, "the encoding pool")

        def sft_items() -> Any:
            rows = light_map(
                items.read_ray(), functools.partial(rows_where, column="split", values=("sft",))
            )
            # blocks of a few batches each, so that every actor of the pool gets work
            return rows.repartition(target_num_rows_per_block=4 * pool.batch_size)

        encoded = {}
        for key, root in groups.items():
            settings = EncodeSettings(
                processor_path=model_uri(self.spec, self.run_dir, root),
                max_length=self.spec.sft.max_length,
                trust_remote_code=load_options(self.spec, root).trust_remote_code,
                storage=self.spec.storage,
            )
            encoding = Encoding.of(
                items.manifest.attempt,
                encoder=ItemEncoder,
                kwargs={"settings": settings},
                pool=pool,
                request=request,
                schema_name="encoded_items",
                quarantine=quarantine,
            )
            encoded[key] = self.encode_once(f"encoded-{key[:12]}", sft_items, encoding)
        return encoded

    # -- training -------------------------------------------------------------------------------

    def _train(self, name: str, encoded: Any) -> int:
        """Train run `name` unless its model is committed with the same settings; rows used."""
        from amp_ray.training.inputs import BatchLayout, PlannedInputs
        from amp_ray.training.launch import fit
        from amp_ray.training.optim import EngineConfig
        from amp_ray.training.sft import SftLoopConfig, sft_loop

        run = self.spec.sft.runs[name]
        sft = self.spec.sft
        location = self.run_dir.location.join(self.name, "models", name)
        settings = self._training_settings(name)
        seed = self.spec.seed + zlib.crc32(name.encode())
        engine = EngineConfig.from_block(sft, run.steps, seed)
        root = actor_model(self.spec, self.run_dir, root_model(self.spec, name), sft.input_cpus)
        keep = functools.partial(in_fraction, fraction=run.data_fraction)
        inputs = PlannedInputs.plan(encoded, BatchLayout.of(sft), root, seed, run.steps, keep)
        if model_metadata(location).get("settings") == settings and not self.force:
            return inputs.num_items
        attempt = new_model_attempt()
        config = SftLoopConfig(
            init_path=model_uri(self.spec, self.run_dir, run.init),
            output_uri=location.uri,
            attempt=attempt,
            storage=self.spec.storage,
            engine=engine,
            load=load_options(self.spec, run.init),
        )
        storage = self.run_dir.location.join(self.name, "ray")
        self.ensure_resources([workers_request("sft.scaling", sft.scaling, f"training {name}")])
        tracker = self.training_tracker(name, run.steps)
        result = fit(sft_loop, config, sft.scaling, name, storage, inputs, tracker=tracker)
        commit_model(location, attempt, {"settings": settings, "final": dict(result.metrics or {})})
        return inputs.num_items

    # -- the world check --------------------------------------------------------------------------

    def _evaluate(self, quarantine: Any) -> None:
        from amp_ray.evaluation.world_check import check_models

        models = {name: model_uri(self.spec, self.run_dir, name) for name in self.spec.sft.runs}
        check_models(self, models, self.spec.sft.eval, quarantine)

    def summary(self) -> list[str]:
        from amp_ray.evaluation.world_tables import sft_table

        metrics = self.run_dir.dataset(self.name, "metrics").read_table()
        details = {
            name: model_metadata(self.run_dir.location.join(self.name, "models", name)).get(
                "final", {}
            )
            for name in self.spec.sft.runs
        }
        return sft_table(metrics, self.spec, details)


def _commit_directory(directory: str, location: Any, metadata: dict[str, Any]) -> None:
    from amp_ray.models.store import upload_model_dir

    attempt = new_model_attempt()
    upload_model_dir(directory, location, attempt)
    commit_model(location, attempt, metadata)
