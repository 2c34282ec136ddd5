"""Exactly-once writes for long stages: every finished part is journaled, so a killed stage resumes.

A plain `DatasetWriter` is all or nothing: a stage killed after an hour of generation would start
again from zero. A journaled stage keeps its writers' attempt folders across runs and has each
write task record, after its Parquet parts are written, one entry naming those parts and the
keys (item ids) they hold:

    <run_dir>/<stage>/_journal/state.json          fingerprint of the work + the writers' attempts
    <run_dir>/<stage>/_journal/entries/<id>.json   {"files": {dataset: [parts]}, "keys": [...]}

On the next run with the same fingerprint the stage skips the journaled keys, processes the rest
and commits the union: every key exactly once. An entry is written after its parts, so a task
killed in between leaves only unlisted files, which the commit's cleanup removes; a task that Ray
retried after it had journaled writes a second entry with the same keys, which `collect` drops.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any

from amp_ray.errors import DataError
from amp_ray.storage.dataset import DatasetWriter, FileEntry, new_attempt_id
from amp_ray.storage.location import Location

STATE = "state.json"
ENTRIES = "entries"


class Journal:
    """The journal of one stage's run (see the module docstring)."""

    def __init__(self, location: Location, fingerprint: str) -> None:
        self.location = location
        self.fingerprint = fingerprint
        self.attempts: dict[str, str] = {}

    def open(self, datasets: list[str]) -> dict[str, str]:
        """The attempt id of each dataset: resumed when the journal holds the same work,
        fresh otherwise (an older journal of other work is discarded)."""
        state = self.location.join(STATE)
        if state.exists():
            saved = json.loads(state.read_bytes())
            if saved.get("fingerprint") == self.fingerprint and set(saved["attempts"]) == set(
                datasets
            ):
                self.attempts = saved["attempts"]
                return self.attempts
        self.location.remove()
        self.attempts = {name: new_attempt_id() for name in datasets}
        payload = {"fingerprint": self.fingerprint, "attempts": self.attempts}
        state.write_bytes_atomic(json.dumps(payload, indent=1).encode())
        return self.attempts

    @property
    def entries_dir(self) -> Location:
        return self.location.join(ENTRIES)

    def entries(self) -> list[dict[str, Any]]:
        entries = []
        for path in self.entries_dir.list_files():
            if path.endswith(".json"):
                entries.append(json.loads(Location(self.location.fs, path).read_bytes()))
        return sorted(entries, key=lambda entry: entry["id"])

    def done_keys(self) -> set[str]:
        return {key for entry in self.entries() for key in entry["keys"]}

    def collect(self, writers: dict[str, DatasetWriter]) -> int:
        """Register every journaled part with its writer, each key once; return the key count."""
        seen: set[str] = set()
        for entry in self.entries():
            keys = set(entry["keys"])
            if keys <= seen:
                continue  # a retried task journaled the same block twice
            if keys & seen:
                raise DataError(
                    f"journal {self.location.uri}: entry {entry['id']} overlaps earlier entries; "
                    "remove the journal folder and re-run the stage with --force"
                )
            seen |= keys
            for name, files in entry["files"].items():
                writers[name].add_files([FileEntry(**file) for file in files])
        return len(seen)

    def close(self) -> None:
        """After the datasets are committed, the journal is no longer needed."""
        self.location.remove()


def write_entry(entries_dir: Location, files: dict[str, list[FileEntry]], keys: list[str]) -> None:
    """Record one task's finished parts (called on the worker, after the parts are written)."""
    entry_id = f"{new_attempt_id()}-{uuid.uuid4().hex[:6]}"
    payload = {
        "id": entry_id,
        "files": {name: [asdict(file) for file in entries] for name, entries in files.items()},
        "keys": sorted(set(keys)),
    }
    entries_dir.join(f"{entry_id}.json").write_bytes_atomic(json.dumps(payload).encode())
