"""Atomic Parquet datasets on local disk: commit, crash safety, orphans, schema checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.errors import DataError, StorageError
from amp_ray.storage import Dataset, DatasetWriter, RunDir, open_location
from amp_ray.storage.dataset import MANIFEST
from amp_ray.storage.quarantine import QUARANTINE_REASON, route_quarantine
from amp_ray.storage.schemas import METRICS, SCHEMAS, schemas_markdown

REPO = Path(__file__).resolve().parents[1]


def metrics_rows(n: int, value: float = 0.0) -> pa.Table:
    return pa.table(
        {
            "model": ["m"] * n,
            "benchmark": ["pope"] * n,
            "split": ["eval_iid"] * n,
            "metric": [f"metric{i}" for i in range(n)],
            "value": [value + i for i in range(n)],
            "count": list(range(n)),
        }
    )


def write(location_path: Path, *tables: pa.Table) -> str:
    writer = DatasetWriter(open_location(str(location_path)), METRICS, "metrics")
    for table in tables:
        writer.write_table(table)
    return writer.commit().attempt


def test_nothing_is_visible_before_commit_and_everything_after(tmp_path: Path) -> None:
    location = open_location(str(tmp_path / "ds"))
    writer = DatasetWriter(location, METRICS, "metrics")
    writer.write_table(metrics_rows(3))
    writer.write_table(metrics_rows(2, value=10))
    assert not Dataset(location).exists
    with pytest.raises(DataError, match="no committed dataset"):
        Dataset(location).read_table()
    manifest = writer.commit({"note": "v1"})
    dataset = Dataset(location)
    assert dataset.exists and dataset.num_rows == 5 and manifest.metadata == {"note": "v1"}
    assert sorted(dataset.read_table().column("value").to_pylist()) == [0, 1, 2, 10, 11]
    assert dataset.read_table(["metric"]).column_names == ["metric"]


def test_a_new_version_replaces_the_old_and_removes_its_files(tmp_path: Path) -> None:
    first = write(tmp_path / "ds", metrics_rows(4))
    second = write(tmp_path / "ds", metrics_rows(1, value=7))
    assert first != second
    dataset = Dataset(open_location(str(tmp_path / "ds")))
    assert dataset.read_table().column("value").to_pylist() == [7]
    folders = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert folders == [f"_attempt-{second}", MANIFEST]


def test_an_empty_dataset_keeps_its_schema(tmp_path: Path) -> None:
    write(tmp_path / "ds")
    table = Dataset(open_location(str(tmp_path / "ds"))).read_table()
    assert table.num_rows == 0 and table.schema.names == METRICS.names


def test_rows_must_fit_the_schema(tmp_path: Path) -> None:
    writer = DatasetWriter(open_location(str(tmp_path / "ds")), METRICS, "metrics")
    with pytest.raises(DataError, match=r"lack the column\(s\) \['count'\]"):
        writer.write_table(metrics_rows(2).drop_columns(["count"]))
    with pytest.raises(DataError, match="do not fit its schema"):
        writer.write_table(metrics_rows(2).set_column(4, "value", pa.array(["a", "b"])))


def test_a_failed_writer_inside_with_leaves_no_files(tmp_path: Path) -> None:
    location = open_location(str(tmp_path / "ds"))
    with pytest.raises(RuntimeError), DatasetWriter(location, METRICS, "metrics") as writer:
        writer.write_table(metrics_rows(2))
        raise RuntimeError("stage failed")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from amp_ray.storage import DatasetWriter, open_location
    from amp_ray.storage.schemas import METRICS
    sys.path.insert(0, sys.argv[2])
    from test_storage import metrics_rows
    writer = DatasetWriter(open_location(sys.argv[1]), METRICS, "metrics")
    writer.write_table(metrics_rows(50, value=100))
    writer.write_table(metrics_rows(50, value=200))
    print("parts written", flush=True)
    time.sleep(120)
    writer.commit()
    """
)


@pytest.mark.parametrize("had_previous_version", [True, False])
def test_a_writer_killed_mid_write_leaves_the_previous_state(
    tmp_path: Path, had_previous_version: bool
) -> None:
    path = tmp_path / "ds"
    before = write(path, metrics_rows(3)) if had_previous_version else None
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "parts written"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    partial = list(path.glob("_attempt-*/*.parquet"))
    assert len(partial) >= 2  # the killed writer's files are on disk...
    dataset = Dataset(open_location(str(path)))
    if had_previous_version:  # ...but invisible: readers see exactly the previous version
        assert dataset.manifest.attempt == before
        assert dataset.read_table().column("value").to_pylist() == [0, 1, 2]
    else:
        assert not dataset.exists
    after = write(path, metrics_rows(1, value=9))  # the next commit drops the orphans
    assert [p.name for p in path.glob("_attempt-*")] == [f"_attempt-{after}"]


def test_manifest_lists_only_registered_parts(tmp_path: Path) -> None:
    location = open_location(str(tmp_path / "ds"))
    writer = DatasetWriter(location, METRICS, "metrics")
    writer.write_table(metrics_rows(2))
    stray = tmp_path / "ds" / writer.attempt_dir / "part-99999-retried.parquet"
    import pyarrow.parquet as pq

    pq.write_table(metrics_rows(5), stray)  # as if a failed, retried task had left its part
    writer.commit()
    assert Dataset(location).num_rows == 2


def test_missing_file_named_by_the_manifest_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "ds", metrics_rows(2))
    for part in (tmp_path / "ds").glob("_attempt-*/*.parquet"):
        part.unlink()
    with pytest.raises(StorageError, match="cannot read"):
        Dataset(open_location(str(tmp_path / "ds"))).read_table()


def test_run_dir_refuses_a_path_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write under"):
        RunDir.open(str(blocker / "run"))


def test_stage_records_round_trip(tmp_path: Path) -> None:
    from amp_ray.storage import StageRecord

    run = RunDir.open(str(tmp_path / "run"))
    assert run.record("data") is None
    record = StageRecord("data", {"a": 1}, {}, {"items": "x"}, {"rows_out": 3})
    run.commit_record(record)
    again = run.record("data")
    assert again is not None and again.fingerprint == record.fingerprint
    (tmp_path / "run" / "data" / "_stage.json").write_text("{broken")
    with pytest.raises(DataError, match="is not a stage record"):
        run.record("data")


def test_quarantine_route_keeps_every_row_with_its_reason() -> None:
    batch = metrics_rows(3).append_column(QUARANTINE_REASON, pa.array([None, "bad value", None]))
    routed = route_quarantine(batch, stage="evaluate", good="metrics", bad="quarantine")
    assert (
        routed["metrics"].num_rows == 2 and QUARANTINE_REASON not in routed["metrics"].column_names
    )
    bad = routed["quarantine"].to_pylist()
    assert [row["reason"] for row in bad] == ["bad value"] and bad[0]["stage"] == "evaluate"
    assert json.loads(bad[0]["row_json"])["metric"] == "metric1"


def test_docs_storage_md_shows_the_current_schemas() -> None:
    text = (REPO / "docs" / "storage.md").read_text()
    assert schemas_markdown().strip() in text, "regenerate docs/storage.md: amp-ray schemas"
    assert set(SCHEMAS) == {
        "items",
        "candidates",
        "preferences",
        "reference_logprobs",
        "answers",
        "metrics",
        "judgments",
        "training_log",
        "training_runs",
        "sweep_results",
        "quarantine",
        "encoded_items",
        "encoded_levels",
    }
