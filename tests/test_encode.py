"""Encoding items for a model: rows it cannot take go to quarantine with the reason."""

from __future__ import annotations

import json

import pyarrow as pa

from amp_ray.data.encode import EncodeSettings, ItemEncoder, encoded_rows
from amp_ray.storage.quarantine import QUARANTINE_REASON, ROW_JSON, split_batch
from amp_ray.storage.schemas import ITEMS
from amp_ray.training.inputs import image_inputs_of


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
    encoder = ItemEncoder(EncodeSettings(tiny_dir, max_length=40))
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


def test_stored_rows_give_the_training_inputs_that_encoding_saw(
    tiny_dir: str, world_items: list[dict]
) -> None:
    """Encoded rows keep the image as imported, no pixel tensors; the workers' pipeline makes
    the pixel inputs from it, equal to those of the processor call that counted the tokens."""
    encoder = ItemEncoder(EncodeSettings(tiny_dir, max_length=512))
    table = encoder(pa.Table.from_pylist(world_items[:3], schema=ITEMS))
    assert "vision" not in table.column_names and "pixel_values" not in str(table.schema)
    usable, _ = split_batch(table, "sft")
    assert usable.column("image").to_pylist() == [item["image"] for item in world_items[:3]]
    with_pixels = image_inputs_of(usable, tiny_dir)
    assert with_pixels.column(QUARANTINE_REASON).null_count == 3
    rows = encoded_rows(with_pixels)
    direct = [encoder.encode(item) for item in world_items[:3]]
    for got, want, stored in zip(rows, direct, usable.to_pylist(), strict=True):
        assert got.input_ids == want.input_ids and got.response_weights == want.response_weights
        assert stored["length"] == len(want)
        assert got.vision.keys() == want.vision.keys()
        assert got.vision["pixel_values"].equal(want.vision["pixel_values"])


def test_the_input_actors_cache_gives_the_same_pixel_inputs_without_the_processor(
    tiny_dir: str, world_items: list[dict]
) -> None:
    """RankInputs keeps packed pixel inputs by item id: the bytes equal those made afresh, and
    a cached item does not read its image again (here: an image gone bad reads from cache)."""
    from cachetools import LRUCache

    encoder = ItemEncoder(EncodeSettings(tiny_dir, max_length=512))
    usable, _ = split_batch(encoder(pa.Table.from_pylist(world_items[:3], schema=ITEMS)), "sft")
    cache = LRUCache(maxsize=2**20, getsizeof=len)
    fresh = image_inputs_of(usable, tiny_dir).column("vision").to_pylist()
    assert image_inputs_of(usable, tiny_dir, cache=cache).column("vision").to_pylist() == fresh
    assert sorted(cache) == sorted(usable.column("item_id").to_pylist())
    broken = usable.set_column(
        usable.schema.get_field_index("image"), "image", pa.array([b"not a png"] * 3, pa.binary())
    )
    again = image_inputs_of(broken, tiny_dir, cache=cache)
    assert again.column("vision").to_pylist() == fresh
    assert image_inputs_of(broken, tiny_dir).column("vision").null_count == 3


def test_an_image_that_breaks_after_encoding_is_marked_at_training_time(
    tiny_dir: str, world_items: list[dict], tmp_path
) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(world_items[0]["image"])
    item = {**world_items[0], "image": None, "image_uri": str(image)}
    encoded = ItemEncoder(EncodeSettings(tiny_dir, max_length=512))(
        pa.Table.from_pylist([item], schema=ITEMS)
    )
    usable, _ = split_batch(encoded, "sft")
    image.write_bytes(b"truncated")  # the file changed after import
    [row] = image_inputs_of(usable, tiny_dir).to_pylist()
    assert row["vision"] is None
    assert row[QUARANTINE_REASON].startswith("at training time: image cannot be read")
    assert json.loads(row[ROW_JSON])["image_uri"] == str(image)
