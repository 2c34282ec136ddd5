"""The driver on a local Ray: the data stage from the world and from Parquet; skip, force."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_world_spec
from PIL import Image

from amp_ray.errors import DataError, SpecError, StorageError
from amp_ray.pipeline import run_job, select_stages
from amp_ray.spec import validate_spec
from amp_ray.storage import RunDir
from amp_ray.storage.schemas import ITEMS

pytestmark = pytest.mark.usefixtures("ray_session")


def run(raw: dict, **kwargs: object) -> list[str]:
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append, **kwargs)
    return lines


def test_world_data_stage_commits_items_and_skips_when_complete(tmp_path: Path) -> None:
    raw = tiny_world_spec(str(tmp_path / "run"))
    lines = run(raw)
    assert lines[1].startswith(
        "[data] rows in 62, out 146, quarantined 0"
    )  # 50 training items + 12 eval images x 8 items
    table = [line.split() for line in lines[2:]]
    assert table[0][:3] == ["split", "images", "items"] and table[1][:3] == ["sft", "40", "40"]
    items = RunDir.open(str(tmp_path / "run")).dataset("data", "items").read_table()
    assert items.num_rows == 146 and items.schema.names == ITEMS.names
    assert len(set(items.column("item_id").to_pylist())) == 146
    assert run(raw)[1] == "[data] complete already (146 rows); --force re-runs it"
    assert run(raw, force=True)[1].startswith("[data] rows in 62, out 146")


def test_the_world_stage_gives_the_same_rows_on_every_run(tmp_path: Path) -> None:
    tables = []
    for name in ("a", "b"):
        raw = tiny_world_spec(str(tmp_path / name))
        run(raw)
        table = RunDir.open(str(tmp_path / name)).dataset("data", "items").read_table()
        tables.append(table.sort_by("item_id"))
    assert tables[0].equals(tables[1])


def test_a_changed_spec_is_not_mixed_into_a_complete_run(tmp_path: Path) -> None:
    run(tiny_world_spec(str(tmp_path / "run")))
    changed = tiny_world_spec(str(tmp_path / "run"))
    changed["data"]["world"]["seed"] = 5
    with pytest.raises(SpecError, match=r"changed: world\.seed: 0 -> 5"):
        run(changed)
    actors_only = tiny_world_spec(str(tmp_path / "run"))
    actors_only["data"]["actors"]["batch_size"] = 8  # how it runs is not what it makes
    assert "complete already" in run(actors_only)[1]


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def import_rows(folder: Path) -> list[dict]:
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "on_disk.png")
    good = [{"question": "what is it ?", "answer": "a red square ."}]
    return [
        {"item_id": "ok-bytes", "image": png((255, 0, 0)), "image_uri": None, "rounds": good},
        {"item_id": "ok-uri", "image": None, "image_uri": "images/on_disk.png", "rounds": good},
        {"item_id": "corrupt", "image": b"\x89PNG not really", "image_uri": None, "rounds": good},
        {"item_id": "gone", "image": None, "image_uri": "images/missing.png", "rounds": good},
        {
            "item_id": "no-answer",
            "image": png((0, 0, 0)),
            "image_uri": None,
            "rounds": [{"question": "what ?", "answer": "   "}],
        },
        {"item_id": "no-rounds", "image": png((0, 0, 0)), "image_uri": None, "rounds": []},
        {"item_id": "", "image": png((0, 0, 0)), "image_uri": None, "rounds": good},
        {"item_id": "no-image", "image": None, "image_uri": None, "rounds": good},
    ]


def import_spec(run_dir: Path, path: Path) -> dict:
    return {
        "name": "import",
        "stages": ["data"],
        "storage": {"run_dir": str(run_dir)},
        "data": {
            "source": "parquet",
            "path": str(path),
            "actors": {"num_actors": 1, "batch_size": 4},
        },
    }


def test_parquet_import_quarantines_bad_rows_with_reasons(tmp_path: Path) -> None:
    rows = import_rows(tmp_path / "src")
    schema = pa.schema([ITEMS.field(n) for n in ("item_id", "image", "image_uri", "rounds")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "src" / "items.parquet")
    lines = run(import_spec(tmp_path / "run", tmp_path / "src" / "items.parquet"))
    assert lines[1].startswith("[data] rows in 8, out 2, quarantined 6")
    run_dir = RunDir.open(str(tmp_path / "run"))
    items = run_dir.dataset("data", "items").read_table().to_pylist()
    assert sorted(item["item_id"] for item in items) == ["ok-bytes", "ok-uri"]
    by_id = {item["item_id"]: item for item in items}
    assert by_id["ok-uri"]["image_uri"] == str(tmp_path / "src" / "images" / "on_disk.png")
    assert by_id["ok-bytes"]["split"] == "train" and by_id["ok-bytes"]["task"] == "conversation"
    reasons = {
        r["item_id"]: r["reason"]
        for r in run_dir.dataset("data", "quarantine").read_table().to_pylist()
    }
    assert reasons["corrupt"].startswith("image bytes do not decode as an image")
    assert reasons["gone"].endswith("images/missing.png does not exist")
    assert reasons["no-answer"] == "round 0 has an empty reference answer"
    assert reasons["no-rounds"].startswith("no rounds")
    assert reasons[""] == "item_id is empty"
    assert reasons["no-image"].startswith("no image")


def test_a_missing_data_path_stops_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"data\.path .*nowhere\.parquet does not exist"):
        run(import_spec(tmp_path / "run", tmp_path / "nowhere.parquet"))
    assert not (tmp_path / "run" / "data").exists()


def test_unreadable_or_wrongly_shaped_imports_are_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="is not readable Parquet"):
        run(import_spec(tmp_path / "run", tmp_path / "junk.parquet"))
    pq.write_table(pa.table({"item_id": ["a"], "text": ["b"]}), tmp_path / "wrong.parquet")
    with pytest.raises(
        DataError, match=r"lacks the column\(s\) \['rounds', 'image or image_uri'\]"
    ):
        run(import_spec(tmp_path / "run", tmp_path / "wrong.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.parquet files"):
        run(import_spec(tmp_path / "run", tmp_path / "empty"))


def test_stage_selection() -> None:
    spec = validate_spec(tiny_world_spec("runs/x"))
    assert select_stages(spec) == ["data"]
    with pytest.raises(SpecError, match="unknown stage 'bogus'"):
        select_stages(spec, ["bogus"])


def test_a_stage_whose_input_is_missing_is_refused(tmp_path: Path) -> None:
    from amp_ray.pipeline import _check_inputs_available
    from amp_ray.stages.base import Stage

    class Reader(Stage):
        name = "rank"
        inputs = (("data", "items"),)

        def config(self) -> dict:
            return {}

        def run(self):  # type: ignore[override]
            raise AssertionError("never runs")

    run_dir = RunDir.open(str(tmp_path / "run"))
    stage = Reader(validate_spec(tiny_world_spec(str(tmp_path / "run"))), run_dir)
    with pytest.raises(SpecError, match="reads data/items, which is neither in"):
        _check_inputs_available([stage], run_dir)
