"""The train stage's online and mixed rounds (training.online; 2407.02477 §2, §5).

`OnlineRounds` is the one driver of the loop; the train stage runs it after its offline runs.
Round r = 1..training.online.rounds:

1. Items: the train stage's preference items (the rows its offline runs read), or with
   `items_per_round` a stable subset of them, a different one each round (`round_items`).
2. Candidates from the current policy (round 1: training.policy; round r: round r−1's model) on
   a Ray Data actor pool of shape generation.actors: `BdhsCandidates` (the policy completes the
   reference with the image hidden, generation.bdhs) or `ModelCandidates` (`sampled`:
   generation.sampling.num_samples answers). The policy's name is the candidates' source.
3. `CandidateRanker` (ranking.checker) with K = 2 keeps the reference and the worst distinct
   candidate below it: below the reference the worst is the clearest preference, and the best
   ones are where a checker's false negatives (a paraphrase scored as a miss) gather. An item
   whose candidates all equal or tie the reference has no pair this round and is set aside.
4. With `mix_offline` the item's worst offline level goes between them: [y+, y−, ỹ−], the levels
   Mixed-DPO takes (levels 1 and 2 are not ordered against each other; the loss never pairs
   them).
5. `ReferenceScorer` with the fixed reference (reference.model or training.policy: the model the
   offline data was scored with), unless training.reference is in_loop.
6. `LevelEncoder`, then `steps_per_round` steps of DPO or Mixed-DPO from the current weights
   (`PreferenceRuns.train` with a `RunStart`), with the starting policy as the reference.

Steps 1–5 are one streaming Ray Data pass, written to train/round<r>_preferences and
train/round<r>_quarantine; the model is train/models/<training.name>-online-r<r>. A round's data
and model committed with the same settings (and the same weights before it) are reused, so a
killed job resumes at the round it was in. Rows a round cannot use also go to train/quarantine.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, ResourceRequest, pool_request
from amp_ray.errors import DataError
from amp_ray.models.registry import ActorModel, load_options, model_uri, root_model
from amp_ray.models.store import committed_model
from amp_ray.runtime import light_map, map_with_actor_pool
from amp_ray.spec import JobSpec
from amp_ray.stages.preference_runs import (
    PreferenceRuns,
    RunResult,
    RunStart,
    check_reference_dtype,
    scored_dtypes,
)
from amp_ray.storage import RunDir
from amp_ray.storage.batches import fixed_batches, where_in
from amp_ray.storage.quarantine import QUARANTINE_REASON, route_quarantine
from amp_ray.storage.raysink import write_ray
from amp_ray.storage.run import fingerprint
from amp_ray.storage.schemas import ITEM_FIELDS, PREFERENCES
from amp_ray.training.runs import PlannedRun

if TYPE_CHECKING:
    from amp_ray.storage.dataset import Dataset, DatasetWriter


def round_model(training: Any, number: int) -> str:
    """The model round `number` trains: train/models/<name>-online-r<number>."""
    return f"{training.name}-online-r{number}"


def round_dataset(number: int, kind: str = "preferences") -> str:
    """A round's dataset under train/: round<number>_preferences or round<number>_quarantine."""
    return f"round{number}_{kind}"


def round_items(item_ids: list[str], count: int | None, seed: int, number: int) -> frozenset[str]:
    """The items of round `number`: all of them, or the `count` first by a hash of (seed, round,
    item id), the same on every run and another subset each round."""
    if count is None or count >= len(item_ids):
        return frozenset(item_ids)

    def key(item_id: str) -> bytes:
        return hashlib.blake2b(f"{seed}:{number}:{item_id}".encode(), digest_size=8).digest()

    return frozenset(sorted(item_ids, key=key)[:count])


def reference_model(spec: JobSpec) -> str:
    """The fixed reference: the model the reference stage scored the offline data with."""
    return str(spec.reference.model or spec.training.policy)


def reference_entry(spec: JobSpec) -> str:
    """The `models` entry whose settings (its dtype) the reference loads with."""
    return root_model(spec, reference_model(spec))


def rounds_config(spec: JobSpec, run_dir: RunDir) -> dict[str, Any]:
    """The settings the rounds' data depend on outside the training block."""
    generation, online = spec.generation, spec.training.online
    config: dict[str, Any] = {
        "sampling": generation.sampling.model_dump(mode="json"),
        "ranking": spec.ranking.model_dump(mode="json", exclude={"actors", "num_levels"}),
    }
    if online.generator == "bdhs":  # bdhs.model is not used: the rounds' policy completes
        config["bdhs"] = generation.bdhs.model_dump(mode="json", exclude={"model"})
    if spec.training.reference == "precomputed":
        name = reference_model(spec)
        config["reference"] = {"model": name, "uri": model_uri(spec, run_dir, name)}
    return config


def with_offline_level(batch: pa.Table, offline: Any) -> pa.Table:
    """Ranked rows [y+, ỹ−] to Mixed-DPO's [y+, y−, ỹ−], y− the item's worst offline level.
    `offline`: a table (item_id, level), or a Ray object reference to one (put once, so that
    each task does not carry a copy of every item's level)."""
    if not isinstance(offline, pa.Table):
        import ray

        offline = ray.get(offline)
    ids = batch.column("item_id")
    mine = offline.filter(pc.is_in(offline.column("item_id"), value_set=ids.combine_chunks()))
    found = mine.column("item_id").to_pylist()
    worst = dict(zip(found, mine.column("level").to_pylist(), strict=True))
    levels = batch.column("levels").to_pylist()
    reasons = batch.column(QUARANTINE_REASON).to_pylist()
    for i, item_id in enumerate(ids.to_pylist()):
        if reasons[i] is not None:
            continue
        if item_id not in worst:
            reasons[i] = "no offline levels for this item to mix with"
            continue
        levels[i] = [levels[i][0], worst[item_id], *levels[i][1:]]
    index = batch.schema.get_field_index("levels")
    batch = batch.set_column(index, "levels", pa.array(levels, PREFERENCES.field("levels").type))
    index = batch.schema.get_field_index(QUARANTINE_REASON)
    return batch.set_column(index, QUARANTINE_REASON, pa.array(reasons, pa.string()))


def worst_offline_levels(source: Dataset) -> pa.Table:
    """(item_id, level): each offline item's last (worst) level."""
    table = source.read_table(["item_id", "levels"])
    worst = [levels[-1] if levels else None for levels in table.column("levels").to_pylist()]
    level_type = PREFERENCES.field("levels").type.value_type
    return pa.table({"item_id": table.column("item_id"), "level": pa.array(worst, level_type)})


@dataclass(frozen=True)
class Policy:
    """The weights a round generates with and starts training from."""

    name: str  # the candidates' source: training.policy, then the round models
    uri: str
    version: str  # what identifies the weights: the policy's URI, or <round model>@<attempt>


class OnlineRounds:
    """The online rounds of a train stage, over `source` (the offline preference rows); rows a
    round cannot use are also written to `quarantine` (train/quarantine)."""

    def __init__(self, runs: PreferenceRuns, source: Dataset, quarantine: DatasetWriter) -> None:
        self.runs = runs
        self.stage = stage = runs.stage  # the train stage: its config, inputs, resources
        self.spec = stage.spec
        self.run_dir = stage.run_dir
        self.source = source
        self.quarantine = quarantine
        self.training = stage.spec.training
        self.recipe = self.training.online_recipe()

    def run(self) -> list[RunResult]:
        """Every round's training result, steps counted from the starting policy."""
        name = str(self.training.policy)
        uri = model_uri(self.spec, self.run_dir, name)
        policy = Policy(name, uri, uri)
        results = []
        for number in range(1, self.training.online.rounds + 1):
            result = self._round(number, policy)
            location = self.runs.location(result.run)
            committed = committed_model(location)
            if committed is None:
                raise RuntimeError(f"round {number} returned without committing {location.uri}")
            # the attempt names the weights wherever the run directory is moved or copied
            version = f"{result.run.model}@{posixpath.basename(committed.path)}"
            policy = Policy(result.run.model, location.uri, version)
            # a round model has trained every round up to it: that is what tables compare
            steps = number * self.training.online.steps_per_round
            results.append(replace(result, run=replace(result.run, steps=steps)))
        return results

    def _round(self, number: int, policy: Policy) -> RunResult:
        settings = self._settings(number, policy)
        data = self._data(number, policy, settings)
        quarantined = self.run_dir.dataset("train", round_dataset(number, "quarantine"))
        if quarantined.num_rows:
            self.quarantine.write_table(quarantined.read_table())
        if self._scores_reference:  # scored in the checkpoint's own dtype where none is given
            scorer = reference_entry(self.spec)
            where = f"train/{round_dataset(number)}"
            check_reference_dtype(scored_dtypes(data), self.recipe, where, scorer)
        encoded = self.runs.encode(data, self.quarantine, self.recipe, f"_round{number}")
        if encoded.num_rows == 0:
            self.quarantine.commit()  # so that the reasons can be read
            raise DataError(
                f"online round {number} has no usable items: train/quarantine says why each "
                f"was set aside ({data.num_rows} reached train/{round_dataset(number)})"
            )
        run = PlannedRun(
            round_model(self.training, number),
            self.training.online_arm,
            self.training.compare.seeds[0],
            self.training.online.steps_per_round,
            "steps",
        )
        # the round's own settings replace the stage's (which hold the round count)
        start = RunStart(
            self.recipe,
            policy.uri,
            list(range(self.recipe.num_levels)),
            {**settings, "data": data.manifest.attempt},
        )
        return self.runs.train(run, encoded, start)

    def _settings(self, number: int, policy: Policy) -> dict[str, Any]:
        """What round `number` depends on: the stage's settings less the round count (a later
        round added to a killed job keeps the earlier ones), the round and the weights before."""
        stage = self.stage.config()
        stage["training"]["online"].pop("rounds")
        return {
            "stage": stage,
            "inputs": self.stage.input_versions(),
            "round": number,
            "policy": policy.version,
        }

    def _data(self, number: int, policy: Policy, settings: dict[str, Any]) -> Dataset:
        """The round's preference data, made unless committed with the same settings."""
        done = self.run_dir.dataset("train", round_dataset(number))
        version = fingerprint(settings, {})
        if (
            done.exists
            and done.manifest.metadata.get("settings") == version
            and not self.stage.force
        ):
            return done
        schema = "reference_logprobs" if self._scores_reference else "preferences"
        writers = {
            "preferences": self.run_dir.writer("train", round_dataset(number), schema),
            "quarantine": self.run_dir.writer(
                "train", round_dataset(number, "quarantine"), "quarantine"
            ),
        }
        route = functools.partial(
            route_quarantine, stage="train", good="preferences", bad="quarantine"
        )
        self.check_fits()  # the nodes of earlier pools may have gone while training
        write_ray(self._rows(number, policy), writers, route)
        # the quarantine first: committed preferences mean the whole round's data is there
        writers["quarantine"].commit({"settings": version})
        writers["preferences"].commit({"settings": version, "policy": policy.name})
        return self.run_dir.dataset("train", round_dataset(number))

    @property
    def _scores_reference(self) -> bool:
        return self.recipe.reference == "precomputed"

    def _rows(self, number: int, policy: Policy) -> Any:
        """The streaming pass of steps 1–5 (see the module docstring)."""
        from amp_ray.generation.candidates import stable_seed, start_candidates
        from amp_ray.generation.reference_scorer import ReferenceScorer, scorer_kwargs
        from amp_ray.ranking import CandidateRanker, ranker_kwargs

        generation, ranking, reference = (
            self.spec.generation,
            self.spec.ranking,
            self.spec.reference,
        )
        ids = self.source.read_table(["item_id"]).column("item_id").to_pylist()
        items = round_items(ids, self.training.online.items_per_round, self.spec.seed, number)
        # fixed batches in item order, one block each, through every pool of the round: the
        # actors share the work evenly and the candidates never follow the pool sizes
        batch = generation.actors.batch_size
        rows = fixed_batches(self.source, batch, select=where_in("item_id", items))
        rows = light_map(rows.select_columns(list(ITEM_FIELDS)), start_candidates)
        # another seed each round: BDHS picks other split points and masks, sampling other draws
        seed = stable_seed(self.spec.seed, "online", number)
        generator, kwargs = self._generator(policy, seed)
        rows = map_with_actor_pool(rows, generator, generation.actors, kwargs, whole_blocks=True)
        # K = 2: the reference and the worst distinct candidate below it
        ranker = ranker_kwargs(ranking, 2)
        rows = map_with_actor_pool(rows, CandidateRanker, ranking.actors, ranker, whole_blocks=True)
        if self.training.online.mix_offline:
            import ray

            offline = ray.put(worst_offline_levels(self.source))
            rows = light_map(rows, functools.partial(with_offline_level, offline=offline))
        if not self._scores_reference:
            return rows
        name = reference_model(self.spec)
        scorer = scorer_kwargs(self.spec, self.run_dir, name)
        return map_with_actor_pool(
            rows, ReferenceScorer, reference.actors, scorer, whole_blocks=True
        )

    def _generator(self, policy: Policy, seed: int) -> tuple[type, dict[str, Any]]:
        """(callable class, constructor kwargs) of the round's candidate pool."""
        from amp_ray.generation.pools import bdhs_candidates, model_candidates

        generation = self.spec.generation
        load = load_options(self.spec, policy.name)
        model = ActorModel(
            policy.name, policy.uri, load, generation.actors.num_cpus, self.spec.storage
        )
        if self.training.online.generator == "bdhs":
            return bdhs_candidates(generation, model, 1, seed)
        return model_candidates(generation, "sampled", model, 1, seed)

    def pool_requests(self) -> list[ResourceRequest]:
        """The round's pools, which run side by side as one streaming pass."""
        requests = [
            pool_request("generation.actors", self.spec.generation.actors, "round candidates"),
            pool_request("ranking.actors", self.spec.ranking.actors, "round ranking"),
        ]
        if self._scores_reference:
            reference = self.spec.reference.actors
            requests.append(pool_request("reference.actors", reference, "round reference"))
        return requests

    def check_fits(self) -> None:
        """Before the offline runs: the rounds' pools can run here, or the cluster can grow to
        them (a small Ray hangs on too many CPUs instead of failing). (A reference whose spec
        dtype differs from the rounds' precision is refused by the spec, JobSpec's rules.)"""
        self.stage.ensure_resources(self.pool_requests(), spare_cpus=SPARE_CPUS_FOR_TASKS)


def rounds_summary(run_dir: RunDir, training: Any, log: pa.Table) -> list[str]:
    """Per round: the policy that generated, items trained on and set aside, first and last
    logged loss."""
    online = training.online
    loss = "Mixed-DPO" if online.mix_offline else "DPO"
    lines = [
        f"online rounds ({online.generator} candidates, {loss}, {online.steps_per_round} steps):",
        f"    {'round':<6} {'items':>6} {'set aside':>9} {'loss first':>10} {'loss last':>10}"
        "  generated by",
    ]
    values = [row for row in log.to_pylist() if row["metric"] == "loss"]
    for number in range(1, online.rounds + 1):
        data = run_dir.dataset("train", round_dataset(number))
        aside = run_dir.dataset("train", round_dataset(number, "quarantine")).num_rows
        model = round_model(training, number)
        losses = [
            row["value"] for row in sorted(values, key=lambda r: r["step"]) if row["model"] == model
        ]
        first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
        lines.append(
            f"    {number:<6} {data.num_rows:>6} {aside:>9} {first:>10.4f} {last:>10.4f}"
            f"  {data.manifest.metadata.get('policy', '-')}"
        )
    return lines
