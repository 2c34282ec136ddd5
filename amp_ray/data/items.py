"""Checks that decide whether an item row can be used, and the callable that applies them.

A row that fails a check is not dropped: it leaves with its reason in the quarantine column and
ends up in the stage's quarantine dataset (storage/quarantine.py).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import pyarrow as pa
from PIL import Image

from amp_ray.storage.location import Location, open_location
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import ITEMS

REQUIRED_COLUMNS = ("item_id", "rounds")
DEFAULTS: dict[str, Any] = {"split": "train", "task": "conversation", "annotations": None}


def item_problem(row: dict[str, Any]) -> str | None:
    """Why `row` cannot be used as an item, or None when it can (image URIs are checked apart)."""
    if not str(row.get("item_id") or "").strip():
        return "item_id is empty"
    rounds = row.get("rounds") or []
    if not rounds:
        return "no rounds: an item needs at least one question with its reference answer"
    for t, turn in enumerate(rounds):
        if not str((turn or {}).get("question") or "").strip():
            return f"round {t} has an empty question"
        if not str((turn or {}).get("answer") or "").strip():
            return f"round {t} has an empty reference answer"
    if row.get("image") is not None:
        return image_bytes_problem(row["image"])
    if not row.get("image_uri"):
        return "no image: set image (encoded bytes) or image_uri"
    return None


def resolve_image_uri(uri: str, root: Location) -> Location:
    """An image URI as a Location: relative to `root`, or absolute on root's filesystem."""
    if "://" in uri:
        protocol, path = uri.split("://", 1)
        if protocol in (root.protocol, "file"):
            return Location(root.fs, path)
        return open_location(uri)
    if posixpath.isabs(uri):
        return Location(root.fs, uri)
    return root.join(uri)


def image_bytes_problem(data: bytes) -> str | None:
    if not data:
        return "image bytes are empty"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for bad bytes
        return f"image bytes do not decode as an image ({type(exc).__name__}: {exc})"
    return None


class ItemChecker:
    """Ray Data callable: fills optional columns, resolves image URIs, marks the unusable rows."""

    def __init__(self, image_root: Location) -> None:
        self.image_root = image_root

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows, reasons = [], []
        for row in batch.to_pylist():
            row = {name: row.get(name, DEFAULTS.get(name)) for name in ITEMS.names}
            reason = item_problem(row)
            if reason is None and row["image"] is None:
                image = resolve_image_uri(row["image_uri"], self.image_root)
                row["image_uri"] = image.uri
                if not image.fs.exists(image.path):
                    reason = f"image {image.uri} does not exist"
            rows.append(row)
            reasons.append(reason)
        table = pa.Table.from_pylist(rows, schema=ITEMS)
        return table.append_column(QUARANTINE_REASON, pa.array(reasons, pa.string()))


def image_root_for(data_location: Location) -> Location:
    """Relative image URIs are read from the imported file's folder (or the folder itself)."""
    if data_location.fs.isdir(data_location.path):
        return data_location
    return Location(data_location.fs, posixpath.dirname(data_location.path))


def rows_where(
    batch: pa.Table, column: str, values: tuple[str, ...], prefix: bool = False
) -> pa.Table:
    """The rows whose `column` is one of `values` (or starts with one, with `prefix`)."""
    import pyarrow.compute as pc

    data = batch.column(column)
    if prefix:
        masks = [pc.starts_with(data, value) for value in values]
    else:
        masks = [pc.equal(data, value) for value in values]
    mask = masks[0]
    for other in masks[1:]:
        mask = pc.or_(mask, other)
    return batch.filter(pc.fill_null(mask, False))


def in_fraction(item_id: str, fraction: float) -> bool:
    """Whether an item belongs to the first `fraction` of the data, by a stable hash of its id.

    Subsets are nested: an item in the 25% subset is in the 50% one.
    """
    import hashlib

    digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction
