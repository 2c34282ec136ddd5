"""Encoding items for a model: rows it cannot take go to quarantine with the reason."""

from __future__ import annotations

import json

import pyarrow as pa

from amp_ray.data.encode import ItemEncoder, encoded_rows
from amp_ray.storage.quarantine import QUARANTINE_REASON, split_batch
from amp_ray.storage.schemas import ITEMS


def test_unusable_rows_are_quarantined_with_their_reason_and_row(
    tiny_dir: str, world_items: list[dict]
) -> None:
    good = world_items[0]
    long = next(item for item in world_items if item["task"] == "dialogue")
    rows = [
        good,
        {**good, "item_id": "corrupt", "image": b"not an image"},
        {**good, "item_id": "nowhere", "image": None, "image_uri": "/nonexistent/image.png"},
        {**long, "item_id": "too-long"},
    ]
    encoder = ItemEncoder(tiny_dir, max_length=40)
    table = encoder(pa.Table.from_pylist(rows, schema=ITEMS))
    reasons = dict(
        zip(
            table.column("item_id").to_pylist(),
            table.column(QUARANTINE_REASON).to_pylist(),
            strict=True,
        )
    )
    assert reasons[good["item_id"]] is None
    assert reasons["corrupt"].startswith("image cannot be read")
    assert reasons["nowhere"].startswith("image cannot be read")
    assert (
        "exceed the model's limit of 40" in reasons["too-long"]
        and "never truncated" in reasons["too-long"]
    )
    usable, quarantine = split_batch(table, "sft")
    assert usable.column("item_id").to_pylist() == [good["item_id"]]
    assert QUARANTINE_REASON not in usable.column_names
    bad = {r["item_id"]: r for r in quarantine.to_pylist()}
    assert set(bad) == {"corrupt", "nowhere", "too-long"}
    assert json.loads(bad["too-long"]["row_json"])["rounds"] == long["rounds"]  # nothing is lost


def test_encoded_rows_round_trip_the_vision_inputs(tiny_dir: str, world_items: list[dict]) -> None:
    encoder = ItemEncoder(tiny_dir, max_length=512)
    table = encoder(pa.Table.from_pylist(world_items[:3], schema=ITEMS))
    usable, _ = split_batch(table, "sft")
    rows = encoded_rows(usable)
    direct = [encoder.encode(item) for item in world_items[:3]]
    for got, want in zip(rows, direct, strict=True):
        assert got.input_ids == want.input_ids and got.response_weights == want.response_weights
        assert got.vision["pixel_values"].equal(want.vision["pixel_values"])
