"""The run directory: one folder per stage, each with its datasets and a record of how it was made.

    <run_dir>/<stage>/<dataset>/_manifest.json    a committed dataset (storage/dataset.py)
    <run_dir>/<stage>/_stage.json                 the stage's record, written after its datasets

A stage is complete when its record exists. The record keeps the spec values the stage read and
the versions of the datasets it read, so a re-run can tell "already done" from "done differently".
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from amp_ray.errors import DataError
from amp_ray.storage.dataset import Dataset, DatasetWriter
from amp_ray.storage.location import Location, check_writable, open_location
from amp_ray.storage.schemas import SCHEMAS

RECORD = "_stage.json"


@dataclass(frozen=True)
class StageRecord:
    stage: str
    config: dict[str, Any]
    inputs: dict[str, str]  # "stage/dataset" -> attempt id of the version read
    outputs: dict[str, str]  # dataset -> attempt id committed
    report: dict[str, Any]
    finished_at: float = field(default_factory=time.time)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.config, self.inputs)


def fingerprint(config: dict[str, Any], inputs: dict[str, str]) -> str:
    payload = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class RunDir:
    """Typed access to a run directory on local disk or object storage."""

    def __init__(self, location: Location) -> None:
        self.location = location

    @classmethod
    def open(cls, run_dir: str, storage: Any = None, *, check: bool = True) -> RunDir:
        """Resolve the run directory; with `check`, prove it is writable before anything runs."""
        location = open_location(run_dir, storage)
        if check:
            check_writable(location)
        return cls(location)

    @property
    def uri(self) -> str:
        return self.location.uri

    def dataset(self, stage: str, name: str) -> Dataset:
        return Dataset(self.location.join(stage, name))

    def writer(
        self, stage: str, name: str, schema_name: str, attempt: str | None = None
    ) -> DatasetWriter:
        return DatasetWriter(
            self.location.join(stage, name), SCHEMAS[schema_name], schema_name, attempt
        )

    def record(self, stage: str) -> StageRecord | None:
        where = self.location.join(stage, RECORD)
        if not where.exists():
            return None
        try:
            return StageRecord(**json.loads(where.read_bytes()))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where.uri} is not a stage record: {exc}") from None

    def commit_record(self, record: StageRecord) -> None:
        data = json.dumps(asdict(record), indent=1, sort_keys=True, default=str).encode()
        self.location.join(record.stage, RECORD).write_bytes_atomic(data)
