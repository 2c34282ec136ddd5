"""The Parquet schema of every dataset a stage writes. docs/storage.md is generated from here.

Each column carries its documentation as field metadata, so the schema and its description cannot
drift apart: `amp-ray schemas` prints them as Markdown.
"""

from __future__ import annotations

import pyarrow as pa


def _col(name: str, dtype: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={"doc": doc})


ROUND = pa.struct([("question", pa.string()), ("answer", pa.string())])

ITEMS = pa.schema(
    [
        _col("item_id", pa.string(), "unique, stable id of the item", nullable=False),
        _col("split", pa.string(), "sft, preference, eval_iid, eval_bias_probe, eval_control, ..."),
        _col(
            "task", pa.string(), "caption, existence, attribute, counting, spatial, dialogue, ..."
        ),
        _col("image", pa.binary(), "encoded image bytes (PNG/JPEG); null when image_uri is set"),
        _col("image_uri", pa.string(), "path or URI of the image; null when image is set"),
        _col(
            "rounds",
            pa.list_(ROUND),
            "the dialogue: round t's question and reference answer; the image goes with round 0",
        ),
        _col("annotations", pa.string(), "JSON ground truth: objects, labels, benchmark fields"),
    ],
    metadata={"doc": "data/items: the prompts of the run with their reference answers"},
)

CANDIDATES = pa.schema(
    [
        _col("item_id", pa.string(), "the item answered", nullable=False),
        _col("candidate_id", pa.string(), "unique within the item", nullable=False),
        _col("generator", pa.string(), "meg, ig, bdhs, or reference"),
        _col("source", pa.string(), "the model (or model@rho_th) that made it"),
        _col("initial_rank", pa.int32(), "rank before auto-check; 0 is best (the reference)"),
        _col("answers", pa.list_(pa.string()), "one answer per dialogue round"),
        _col("info", pa.string(), "JSON audit data: tries, similarity, hidden-token share, ..."),
    ],
    metadata={"doc": "generate/candidates: every candidate answer of every item"},
)

LEVEL = pa.struct(
    [
        ("candidate_id", pa.string()),
        ("generator", pa.string()),
        ("source", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("initial_rank", pa.int32()),
        ("accuracy", pa.float64()),
        ("score", pa.float64()),
    ]
)

PREFERENCES = pa.schema(
    [
        *(
            ITEMS.field(name)
            for name in ("item_id", "split", "task", "image", "image_uri", "rounds")
        ),
        _col("levels", pa.list_(LEVEL), "K responses ranked best first, with checker scores"),
        _col("order_changed", pa.bool_(), "the checked order differs from the initial one"),
    ],
    metadata={"doc": "rank/preferences: K ranked levels per item, ready to train on"},
)

REFERENCE_LOGPROBS = pa.schema(
    [
        _col("item_id", pa.string(), "the item scored", nullable=False),
        _col("ref_logps", pa.list_(pa.float64()), "summed log-prob of each level, in level order"),
        _col("ref_model", pa.string(), "the reference model that scored them"),
    ],
    metadata={"doc": "reference/logprobs: reference log-probs beside rank/preferences"},
)

ANSWERS = pa.schema(
    [
        _col("item_id", pa.string(), "the item answered", nullable=False),
        _col("model", pa.string(), "the model that answered", nullable=False),
        _col("split", pa.string(), "the item's split"),
        _col("task", pa.string(), "the item's task"),
        _col("questions", pa.list_(pa.string()), "the question of every round"),
        _col("references", pa.list_(pa.string()), "the reference answer of every round"),
        _col("answers", pa.list_(pa.string()), "the model's answer of every round (own history)"),
        _col("finished", pa.list_(pa.bool_()), "each answer ended with an end token"),
        _col("annotations", pa.string(), "the item's ground truth (JSON), for judging"),
    ],
    metadata={"doc": "<stage>/answers: model answers to evaluation items"},
)

METRICS = pa.schema(
    [
        _col("model", pa.string(), "the evaluated model", nullable=False),
        _col("benchmark", pa.string(), "chair, pope, mrhal, mmhal, world, ..."),
        _col("split", pa.string(), "the eval split"),
        _col("metric", pa.string(), "metric name, e.g. chair_i, f1, hallucination_rate"),
        _col("value", pa.float64(), "the metric's value"),
        _col("count", pa.int64(), "items it was computed over (failed items excluded)"),
    ],
    metadata={"doc": "<stage>/metrics: one value per model, benchmark, split and metric"},
)

QUARANTINE = pa.schema(
    [
        _col("stage", pa.string(), "the stage that set the row aside", nullable=False),
        _col("item_id", pa.string(), "the row's id where it has one"),
        _col("reason", pa.string(), "why the row could not be used", nullable=False),
        _col(
            "row_json", pa.string(), "the whole row as JSON (bytes as base64), to fix and re-import"
        ),
    ],
    metadata={"doc": "<stage>/quarantine: rows a stage could not use, with the reason"},
)

SCHEMAS: dict[str, pa.Schema] = {
    "items": ITEMS,
    "candidates": CANDIDATES,
    "preferences": PREFERENCES,
    "reference_logprobs": REFERENCE_LOGPROBS,
    "answers": ANSWERS,
    "metrics": METRICS,
    "quarantine": QUARANTINE,
}


def schemas_markdown() -> str:
    """The schemas as Markdown tables (the generated part of docs/storage.md)."""
    out: list[str] = []
    for name, schema in SCHEMAS.items():
        out += [f"### `{name}`", "", schema.metadata[b"doc"].decode(), ""]
        out += ["| column | type | meaning |", "| --- | --- | --- |"]
        for column in schema:
            doc = (column.metadata or {}).get(b"doc", b"").decode()
            required = "" if column.nullable else " (required)"
            out.append(f"| `{column.name}` | `{column.type}` | {doc}{required} |")
        out.append("")
    return "\n".join(out)
