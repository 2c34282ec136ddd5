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

CANDIDATE = pa.struct(
    [
        ("candidate_id", pa.string()),  # unique within the item
        ("generator", pa.string()),  # reference, meg, ig, bdhs, sampled (online), or import
        ("source", pa.string()),  # the model (or model@rho_th) that made it
        ("initial_rank", pa.int32()),  # rank before auto-check; 0 is the reference
        ("answers", pa.list_(pa.string())),  # one answer per dialogue round
        ("info", pa.string()),  # JSON audit data: tries, similarity, hiding threshold, ...
    ]
)
SCORED_CANDIDATE = pa.struct(
    [
        *CANDIDATE,
        ("accuracy", pa.float64()),  # the checker's accuracy (null for imported levels)
        ("score", pa.float64()),  # the checker's tie-breaking score
        ("checked_rank", pa.int32()),  # rank after auto-check; 0 is the reference
    ]
)
ITEM_FIELDS = ("item_id", "split", "task", "image", "image_uri", "rounds", "annotations")

CANDIDATES = pa.schema(
    [
        *(ITEMS.field(name) for name in ITEM_FIELDS),
        _col(
            "candidates",
            pa.list_(CANDIDATE),
            "every generated answer of the item (the reference is in rounds), initial order",
        ),
    ],
    metadata={"doc": "generate/candidates: the items with every candidate answer, one row each"},
)

PREFERENCES = pa.schema(
    [
        *(ITEMS.field(name) for name in ITEM_FIELDS),
        _col(
            "levels",
            pa.list_(SCORED_CANDIDATE),
            "K responses ranked best first (level 0 is the reference where there is one)",
        ),
        _col(
            "candidates",
            pa.list_(SCORED_CANDIDATE),
            "every candidate with its checker scores, initial order, for audit",
        ),
        _col(
            "order_changed", pa.bool_(), "the checked order of the levels differs from the initial"
        ),
        _col("checker", pa.string(), "embedding, ground_truth, or the import format"),
    ],
    metadata={"doc": "rank/preferences (or data/preferences, imported): K ranked levels per item"},
)

REFERENCE_LOGPROBS = pa.schema(
    [
        *PREFERENCES,
        _col(
            "ref_logps",
            pa.list_(pa.list_(pa.float64())),
            "the reference model's log-prob of each level's answer in each round (summed over "
            "the round's tokens), level order",
        ),
        _col("ref_model", pa.string(), "the reference model that scored them"),
        _col("ref_dtype", pa.string(), "the dtype the reference model scored in (float32, ...)"),
    ],
    metadata={"doc": "reference/preferences: the preferences with reference log-probs beside them"},
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

JUDGMENTS = pa.schema(
    [
        _col("item_id", pa.string(), "the item judged", nullable=False),
        _col("model", pa.string(), "the model whose answers were judged", nullable=False),
        _col("split", pa.string(), "the item's split (an eval split, mrhal, mmhal)"),
        _col("benchmark", pa.string(), "mrhal or mmhal"),
        _col("question_types", pa.list_(pa.string()), "the question type of every round"),
        _col("ratings", pa.list_(pa.int64()), "the judge's 0-6 rating of every round"),
        _col("judge", pa.string(), "ground_truth, or openai:<model> with the prompts it was sent"),
        _col("response", pa.string(), "what the judge said (the world judge: its fact counts)"),
    ],
    metadata={"doc": "evaluate/judgments: the judge's ratings of every answered dialogue"},
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

TRAINING_LOG = pa.schema(
    [
        _col("model", pa.string(), "the model being trained", nullable=False),
        _col("step", pa.int64(), "the optimizer step the window ends at", nullable=False),
        _col("metric", pa.string(), "loss, accuracy/0-1, margin/0-1, grad_norm, lr, ..."),
        _col("value", pa.float64(), "the metric, averaged over the window and the workers"),
    ],
    metadata={"doc": "train/log: every logged training window's metrics, one value per row"},
)

TRAINING_RUNS = pa.schema(
    [
        _col("model", pa.string(), "the trained model (train/models/<model>)", nullable=False),
        _col(
            "arm",
            pa.string(),
            "its recipe: training.name, an arm of training.compare, or <training.name>-online",
        ),
        _col("seed", pa.int64(), "the seed of its data order and initialisation"),
        _col(
            "steps",
            pa.int64(),
            "optimizer steps it trained for (an online round's model: every round up to it)",
        ),
        _col("budget", pa.string(), "steps (the recipe's max_steps) or time (equal wall time)"),
        _col("step_seconds", pa.float64(), "median wall time of one optimizer step"),
        _col("final_loss", pa.float64(), "the loss of the last logged window"),
    ],
    metadata={"doc": "train/runs: what each model of the train stage is, and what it cost"},
)

SWEEP_RESULTS = pa.schema(
    [
        _col("trial", pa.string(), "the trial (sweep/trials/<trial>)", nullable=False),
        _col(
            "setting", pa.string(), "its swept values without the seed, e.g. beta=0.1 levels=[0, 3]"
        ),
        _col("parameters", pa.string(), "its overrides as JSON: dotted spec path -> value"),
        _col("seed", pa.int64(), "the training seed of the trial"),
        _col("status", pa.string(), "ok, or the error that ended the trial"),
        _col("model", pa.string(), "a model the trial trained and evaluated"),
        _col("arm", pa.string(), "the model's recipe (training.name or a compare arm)"),
        _col("benchmark", pa.string(), "as in evaluate/metrics"),
        _col("split", pa.string(), "as in evaluate/metrics"),
        _col("metric", pa.string(), "as in evaluate/metrics"),
        _col("value", pa.float64(), "as in evaluate/metrics"),
        _col("count", pa.int64(), "as in evaluate/metrics"),
    ],
    metadata={
        "doc": "sweep/results: every evaluate metric of every trial's models, with the trial's "
        "swept values (a failed trial: one row with its error in status)"
    },
)

_STORED_IMAGE = [
    _col("image", pa.binary(), "the item's image file bytes as imported (or null: image_uri)"),
    _col("image_uri", pa.string(), "where the image is, when it is not stored inline"),
    _col("length", pa.int32(), "tokens of the longest sequence, for planning batches"),
]
ENCODED_ITEMS = pa.schema(
    [
        _col("item_id", pa.string(), "the item", nullable=False),
        _col("input_ids", pa.list_(pa.int32()), "the dialogue's token ids"),
        _col("response_weights", pa.list_(pa.float32()), "per token: 0 outside the answers"),
        *_STORED_IMAGE,
    ],
    metadata={
        "doc": "sft/encoded-<processor>: items as token ids beside their stored image; the pixel "
        "inputs are made in the training workers' input pipeline. One row per row group: each "
        "worker reads only the rows of its own micro-batches"
    },
)
ENCODED_LEVELS = pa.schema(
    [
        _col("item_id", pa.string(), "the item", nullable=False),
        _col("input_ids", pa.list_(pa.list_(pa.int32())), "one token list per level, best first"),
        _col("response_weights", pa.list_(pa.list_(pa.float32())), "per level, per token"),
        _col(
            "ref_logps",
            pa.list_(pa.list_(pa.float64())),
            "per level, per round; empty if the reference runs in-loop",
        ),
        _col(
            "answer_ids",
            pa.list_(pa.list_(pa.int32())),
            "per level, per round: the first level with the same answer text in that round",
        ),
        *_STORED_IMAGE,
    ],
    metadata={
        "doc": "train/encoded: the K levels of each preference item as token ids beside the "
        "stored image (one row per row group, as sft/encoded-<processor>)"
    },
)
# datasets read a row at a time (training/inputs.py): one row per Parquet row group
ONE_ROW_GROUPS = ("encoded_items", "encoded_levels")

SCHEMAS: dict[str, pa.Schema] = {
    "items": ITEMS,
    "candidates": CANDIDATES,
    "preferences": PREFERENCES,
    "reference_logprobs": REFERENCE_LOGPROBS,
    "answers": ANSWERS,
    "metrics": METRICS,
    "judgments": JUDGMENTS,
    "training_log": TRAINING_LOG,
    "training_runs": TRAINING_RUNS,
    "sweep_results": SWEEP_RESULTS,
    "quarantine": QUARANTINE,
    "encoded_items": ENCODED_ITEMS,
    "encoded_levels": ENCODED_LEVELS,
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
