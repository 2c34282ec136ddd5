"""Rows a stage cannot use are set aside with their reason, never dropped silently.

A stage's row function returns its batch with one extra column, `QUARANTINE_REASON` (null for a
good row). `split_batch` turns such a batch into the good rows and the quarantine rows; the stage
commits both datasets, and its summary counts them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp_ray.storage.schemas import QUARANTINE

QUARANTINE_REASON = "_quarantine_reason"
ROW_JSON = "_row_json"  # optional: the original row, where the batch no longer holds it


def with_reason(schema: pa.Schema) -> pa.Schema:
    """`schema` plus the columns a row function marks unusable rows with."""
    return schema.append(pa.field(QUARANTINE_REASON, pa.string())).append(
        pa.field(ROW_JSON, pa.string())
    )


def row_to_json(row: dict[str, Any]) -> str:
    """The row as JSON, losslessly: bytes become {"__bytes_b64__": ...}."""

    def encode(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"__bytes_b64__": base64.b64encode(bytes(value)).decode()}
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if hasattr(value, "tolist"):  # numpy values
            return encode(value.tolist())
        return value

    return json.dumps(encode(row), default=str)


def quarantine_rows(stage: str, rows: list[dict[str, Any]], reasons: list[str]) -> pa.Table:
    """A quarantine table for `rows`, each with its reason."""
    return pa.Table.from_pylist(
        [
            {
                "stage": stage,
                "item_id": None if row.get("item_id") is None else str(row["item_id"]),
                "reason": reason,
                "row_json": row_to_json(row),
            }
            for row, reason in zip(rows, reasons, strict=True)
        ],
        schema=QUARANTINE,
    )


def split_batch(batch: pa.Table, stage: str) -> tuple[pa.Table, pa.Table]:
    """(good rows without the reason columns, quarantine rows) of a batch with reasons."""
    good_mask = pc.is_null(batch.column(QUARANTINE_REASON))
    extra = [QUARANTINE_REASON] + ([ROW_JSON] if ROW_JSON in batch.column_names else [])
    good = batch.filter(good_mask).drop_columns(extra)
    bad = batch.filter(pc.invert(good_mask))
    reasons = bad.column(QUARANTINE_REASON).to_pylist()
    if ROW_JSON in bad.column_names:
        table = quarantine_rows(stage, bad.select(["item_id"]).to_pylist(), reasons)
        return good, table.set_column(3, "row_json", bad.column(ROW_JSON))
    return good, quarantine_rows(stage, bad.drop_columns(extra).to_pylist(), reasons)


def route_quarantine(batch: pa.Table, stage: str, good: str, bad: str) -> dict[str, pa.Table]:
    """A `write_ray` route: good rows to dataset `good`, rows with a reason to `bad`."""
    if QUARANTINE_REASON not in batch.column_names:
        return {good: batch}
    good_rows, bad_rows = split_batch(batch, stage)
    return {good: good_rows, bad: bad_rows}


def quarantine_only(batch: pa.Table, stage: str) -> dict[str, pa.Table]:
    """A `write_ray` route that keeps only the rows with a reason, for `quarantine` (the good
    rows of the batch are used elsewhere, not written)."""
    return {"quarantine": split_batch(batch, stage)[1]}
