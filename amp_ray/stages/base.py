"""What a stage is: a unit of the pipeline that reads committed datasets and commits new ones.

To add a stage: subclass `Stage`, set `name` (a name of `amp_ray.spec.PIPELINE`), `inputs` and
`outputs`, implement `config()` (the spec values its result depends on) and `run()`, and register
the class in `amp_ray/stages/__init__.py`. CONTRIBUTING.md walks through an example.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, ClassVar

from amp_ray.cluster.requests import SPARE_CPUS_FOR_TASKS, ResourceRequest
from amp_ray.spec import JobSpec
from amp_ray.storage import RunDir
from amp_ray.storage.journal import Journal
from amp_ray.storage.quarantine import route_quarantine
from amp_ray.storage.run import fingerprint


@dataclass(frozen=True)
class StageCounts:
    """What a stage did, for its summary line."""

    rows_in: int
    rows_out: int
    rows_quarantined: int = 0


@dataclass(frozen=True)
class StageReport:
    stage: str
    status: str  # "done", "skipped" (complete already) or "redone" (forced or inputs changed)
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float

    def line(self) -> str:
        if self.status == "skipped":
            return f"[{self.stage}] complete already ({self.rows_out} rows); --force re-runs it"
        return (
            f"[{self.stage}] rows in {self.rows_in}, out {self.rows_out}, "
            f"quarantined {self.rows_quarantined}, {self.seconds:.1f} s"
        )


class Stage(ABC):
    """A pipeline stage. The driver calls `preflight()` before Ray starts, then `run()`."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[tuple[str, str], ...]] = ()  # (stage, dataset) pairs it reads
    outputs: ClassVar[tuple[str, ...]] = ()  # datasets it commits under <run_dir>/<name>/

    def __init__(self, spec: JobSpec, run: RunDir, force: bool = False) -> None:
        self.spec = spec
        self.run_dir = run
        self.force = force  # redo from scratch: do not resume from earlier checkpoints

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The spec values this stage's output depends on (JSON-able); a change means a re-run."""

    def preflight(self) -> None:  # noqa: B027 (optional hook)
        """Checks that need no Ray: paths exist, references resolve. Raise AmpRayError to stop."""

    @abstractmethod
    def run(self) -> StageCounts:
        """Do the work and commit every dataset in `outputs`."""

    def summary(self) -> list[str]:
        """Lines printed under the stage's summary line (a table of what it made), if any."""
        return []

    def training_tracker(self, run: str, steps: int) -> Any:
        """The Ray Train callback of training run `run` (training/tracking.py): its progress
        lines, TensorBoard files under <stage>/tensorboard/<run>, MLflow, as `tracking:` says."""
        from amp_ray import runtime
        from amp_ray.training.tracking import TENSORBOARD, TrainingTracker

        tracking = self.spec.tracking
        board = self.run_dir.location.join(self.name, TENSORBOARD, run)
        mlflow = tracking.mlflow
        return TrainingTracker(
            stage=self.name,
            run=run,
            total_steps=steps,
            tensorboard_uri=board.uri if tracking.tensorboard else None,
            storage=self.spec.storage.model_dump(),
            mlflow={
                "tracking_uri": mlflow.tracking_uri,
                "experiment": mlflow.experiment or self.spec.name,
            }
            if mlflow
            else None,
            progress=runtime.progress_queue if tracking.progress else None,
        )

    def ensure_resources(self, requests: list[ResourceRequest], spare_cpus: float = 0.0) -> None:
        """Return once the cluster can run `requests` at once; on an autoscaling cluster ask for
        them and wait up to runtime.resource_wait_s (cluster/capacity.py)."""
        from amp_ray.cluster.capacity import ensure_resources

        runtime = self.spec.runtime
        ensure_resources(
            requests, self.name, runtime.resource_wait_s, runtime.cluster_config, spare_cpus
        )

    def input_versions(self) -> dict[str, str]:
        """ "stage/dataset" -> the committed attempt this stage reads."""
        return {
            f"{source}/{name}": self.run_dir.dataset(source, name).manifest.attempt
            for source, name in self.inputs
        }

    def write_journaled(
        self, rows: Callable[[set[str]], Any], good: str, schema_name: str
    ) -> JournaledCounts:
        """Write the Ray Data rows that `rows(done_keys)` makes into `good` and `quarantine`,
        exactly once per item across runs: a killed run's finished parts are kept and its items
        skipped on the next run with the same config and inputs (storage/journal.py)."""
        from amp_ray.storage.raysink import write_ray

        journal = Journal(
            self.run_dir.location.join(self.name, "_journal"),
            fingerprint(self.config(), self.input_versions()),
        )
        if self.force:
            journal.location.remove()
        attempts = journal.open([good, "quarantine"])
        writers = {
            good: self.run_dir.writer(self.name, good, schema_name, attempts[good]),
            "quarantine": self.run_dir.writer(
                self.name, "quarantine", "quarantine", attempts["quarantine"]
            ),
        }
        done = journal.done_keys()
        route = functools.partial(route_quarantine, stage=self.name, good=good, bad="quarantine")
        write_ray(rows(done), writers, route, journal)
        counts = JournaledCounts(
            writers[good].commit().num_rows, writers["quarantine"].commit().num_rows, len(done)
        )
        journal.close()
        return counts

    def encode_once(self, name: str, rows: Callable[[], Any], encoding: Encoding) -> Any:
        """<stage>/<name>: the Ray Data `rows()` through the encoder pool, unless an encoding is
        committed there with the same `encoding.version` (a resumed job does not encode tens of
        thousands of items again). The rows it set aside are kept in <stage>/<name>_quarantine
        and go to `encoding.quarantine` whether the encoding is new or reused."""
        from amp_ray.runtime import map_with_actor_pool
        from amp_ray.storage.raysink import write_ray

        done = self.run_dir.dataset(self.name, name)
        if self.force or not (
            done.exists and done.manifest.metadata.get("settings") == encoding.version
        ):
            self.ensure_resources([encoding.request], spare_cpus=SPARE_CPUS_FOR_TASKS)
            writers = {
                "encoded": self.run_dir.writer(self.name, name, encoding.schema_name),
                "quarantine": self.run_dir.writer(self.name, f"{name}_quarantine", "quarantine"),
            }
            encoded = map_with_actor_pool(rows(), encoding.encoder, encoding.pool, encoding.kwargs)
            route = functools.partial(
                route_quarantine, stage=self.name, good="encoded", bad="quarantine"
            )
            write_ray(encoded, writers, route)
            writers["quarantine"].commit()  # first: a committed encoding has its set-aside rows
            writers["encoded"].commit({"settings": encoding.version})
        set_aside = self.run_dir.dataset(self.name, f"{name}_quarantine")
        if set_aside.num_rows:
            encoding.quarantine.write_table(set_aside.read_table())
        return self.run_dir.dataset(self.name, name)


@dataclass(frozen=True)
class Encoding:
    """How `Stage.encode_once` encodes: the encoder class and its constructor kwargs, its pool
    (and the resource request that names it), the stored schema, the writer that collects the
    rows set aside, and `version`: what the encoding depends on (settings and source)."""

    encoder: type
    kwargs: dict[str, Any]
    pool: Any  # ActorPoolSpec
    request: ResourceRequest
    schema_name: str
    quarantine: Any  # DatasetWriter
    version: str

    @classmethod
    def of(cls, source_version: str, **fields: Any) -> Encoding:
        """`fields` less `version`, which is computed from the kwargs (storage options aside:
        they say how to read, not what) and `source_version`, the source's committed attempt."""
        settings: dict[str, Any] = {}
        for key, value in fields["kwargs"].items():  # an EncodeSettings' fields count as kwargs
            settings.update(asdict(value) if is_dataclass(value) else {key: value})
        settings.pop("storage", None)
        return cls(**fields, version=fingerprint(settings, {"source": source_version}))


@dataclass(frozen=True)
class JournaledCounts:
    rows_out: int
    rows_quarantined: int
    resumed_items: int  # items a killed earlier run had finished
