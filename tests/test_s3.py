"""The same storage code against a real S3-protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_world_spec
from test_storage import KILLED_WRITER, metrics_rows

from amp_ray.errors import StorageError
from amp_ray.pipeline import run_job
from amp_ray.spec import validate_spec
from amp_ray.spec.blocks import StorageSpec
from amp_ray.storage import Dataset, DatasetWriter, RunDir, open_location
from amp_ray.storage.schemas import ITEMS, METRICS


def storage(endpoint: str, run_dir: str = "unused") -> StorageSpec:
    return StorageSpec(run_dir=run_dir, endpoint_url=endpoint)


def test_dataset_round_trip_and_replacement_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    location = open_location(f"s3://{s3_bucket}/run/metrics", storage(s3_endpoint))
    writer = DatasetWriter(location, METRICS, "metrics")
    writer.write_table(metrics_rows(3))
    writer.write_table(metrics_rows(2, value=10))
    assert not Dataset(location).exists
    first = writer.commit()
    assert Dataset(location).read_table().num_rows == 5 and first.num_rows == 5
    second = DatasetWriter(location, METRICS, "metrics")
    second.write_table(metrics_rows(1, value=42))
    second.commit()
    dataset = Dataset(location)
    assert dataset.read_table().column("value").to_pylist() == [42]
    keys = location.list_files()
    assert all(second.attempt_dir in key or key.endswith("_manifest.json") for key in keys)


def test_a_writer_killed_mid_write_on_s3_leaves_the_previous_state(
    s3_endpoint: str, s3_bucket: str
) -> None:
    uri = f"s3://{s3_bucket}/run/metrics"
    location = open_location(uri, storage(s3_endpoint))
    before = DatasetWriter(location, METRICS, "metrics")
    before.write_table(metrics_rows(3))
    before.commit()
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint}  # botocore reads it: the child's s3fs
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, uri, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "parts written"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len([k for k in location.list_files() if "_attempt-" in k]) >= 3  # old parts + orphans
    dataset = Dataset(location)
    assert dataset.manifest.attempt == before.attempt
    assert dataset.read_table().column("value").to_pylist() == [0, 1, 2]


@pytest.mark.usefixtures("ray_session")
def test_ray_data_writes_and_reads_s3_datasets(s3_endpoint: str, s3_bucket: str) -> None:
    import ray.data

    location = open_location(f"s3://{s3_bucket}/run/metrics", storage(s3_endpoint))
    writer = DatasetWriter(location, METRICS, "metrics")
    writer.write_ray(ray.data.from_arrow(metrics_rows(40)).repartition(4))
    writer.commit()
    dataset = Dataset(location)
    assert dataset.num_rows == 40 and len(dataset.manifest.files) == 4
    assert dataset.read_ray().sum("count") == sum(range(40))


@pytest.mark.usefixtures("ray_session")
def test_the_data_stage_runs_with_its_run_dir_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    raw = tiny_world_spec(f"s3://{s3_bucket}/runs/tiny")
    raw["storage"]["endpoint_url"] = s3_endpoint
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    assert lines[1].startswith("[data] rows in 62, out 146, quarantined 0")
    run = RunDir.open(f"s3://{s3_bucket}/runs/tiny", storage(s3_endpoint))
    assert run.dataset("data", "items").read_table().num_rows == 146
    assert run.record("data") is not None
    lines.clear()
    run_job(validate_spec(raw), echo=lines.append)
    assert "complete already" in lines[1]


@pytest.mark.usefixtures("ray_session")
def test_parquet_import_from_s3(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    from test_pipeline import png

    rows = [
        {"item_id": "a", "image": png((9, 9, 9)), "rounds": [{"question": "q ?", "answer": "a ."}]},
        {"item_id": "b", "image": b"junk", "rounds": [{"question": "q ?", "answer": "a ."}]},
    ]
    schema = pa.schema([ITEMS.field(n) for n in ("item_id", "image", "rounds")])
    source = open_location(f"s3://{s3_bucket}/src/items.parquet", storage(s3_endpoint))
    with source.fs.open(source.path, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)
    raw = {
        "name": "s3import",
        "stages": ["data"],
        "storage": {"run_dir": str(tmp_path / "run"), "endpoint_url": s3_endpoint},
        "data": {"source": "parquet", "path": source.uri, "actors": {"num_actors": 1}},
    }
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    assert lines[1].startswith("[data] rows in 2, out 1, quarantined 1")


def test_a_missing_bucket_is_named(s3_endpoint: str) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        RunDir.open("s3://no-such-bucket/run", storage(s3_endpoint))


def test_missing_credentials_are_explained(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no credentials to write under s3://") as info:
        RunDir.open(f"s3://{s3_bucket}/run", storage(s3_endpoint))
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_an_unreachable_endpoint_is_explained() -> None:
    from conftest import free_port

    spec = storage(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError, match="cannot reach the object store"):
        RunDir.open("s3://bucket/run", spec)


def test_a_model_directory_on_s3_commits_and_loads(
    s3_endpoint: str, s3_bucket: str, tiny_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amp_ray.models import store
    from amp_ray.models.loading import load_model, load_processor

    monkeypatch.setattr(store, "CACHE", tmp_path / "cache")
    location = open_location(f"s3://{s3_bucket}/run/sft/models/m", storage(s3_endpoint))
    attempt = store.new_model_attempt()
    store.upload_model_dir(tiny_dir, location, attempt)
    with pytest.raises(StorageError, match="does not exist"):
        store.local_model_path(location.uri + "-missing", storage(s3_endpoint))
    store.commit_model(location, attempt, {"note": "test"})
    path = store.local_model_path(location.uri, storage(s3_endpoint))
    assert path.startswith(str(tmp_path / "cache"))
    assert type(load_model(path)).__name__ == "LlavaForConditionalGeneration"
    assert load_processor(path).tokenizer.pad_token == "<pad>"
    assert store.local_model_path(location.uri, storage(s3_endpoint)) == path  # cached
    assert store.local_model_path("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
