"""Preference data in: AMP's training JSON, TRL's DPO rows, and plain chosen/rejected pairs.

Importing published data lets a run train on it (data/preferences stands in for generate + rank);
data/export.py writes the same formats so that other trainers read ours. docs/formats.md shows
what each direction loses.

- `amp_json`: a JSON array of {image, output_1 ... output_K} (K = 2..8, output_1 best); each output
  a LLaVA conversation [{"from": "human"|"gpt", "value"}] from human, "<image>" in its first turn.
- `trl_dpo`: TRL's DPO vision rows {prompt, chosen, rejected, images} (JSONL, or Parquet with HF
  {bytes, path} image structs); messages {role, content: [{"type": "image"} | {"type": "text",
  "text"}]}. The prompt's earlier turns are earlier rounds, the same in both levels; chosen and
  rejected each go on from the answer to the prompt's last user turn (later turns included).
- `pairs`: RLHF-V / RLAIF-V / POVID rows {image, question, chosen, rejected, ...}: one round, K = 2.

Mapping, one record per item of split "preference": item_id = the record's `id`, `idx` or
`question_id`, else "<format>-" + a sha256 of it; task = its `task`, else "imported"; `image` =
bytes where the record holds bytes, else `image_uri` = the path (relative ones joined to the
image root); rounds = the questions with the best level's answers; levels (best first) and
candidates = one SCORED_CANDIDATE per output (output_k / chosen / rejected, generator "import",
source and checker = the format, initial_rank = checked_rank = the level); annotations =
{"format", "extra": the keys the format does not use}, which export writes back.

Record -> row functions are pure; `import_preferences` goes through `open_location` (local and
s3://). A record that cannot become a row (two of its levels alike in every round included)
raises `BadRow`, whose message is its quarantine reason: a bad row never stops an import.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.data.items import image_bytes_problem, image_root_for, resolve_image_uri
from amp_ray.data.records import (
    BadRow,
    Unreadable,
    dialogue,
    json_line,
    llava_turn,
    printable,
    require,
    strip_image_token,
)
from amp_ray.data.records import check_signature as records_check
from amp_ray.errors import DataError, StorageError
from amp_ray.storage.location import Location, guard, open_location
from amp_ray.storage.quarantine import row_to_json
from amp_ray.storage.schemas import ITEM_FIELDS, ITEMS, PREFERENCES, QUARANTINE, SCORED_CANDIDATE

FORMATS = ("amp_json", "trl_dpo", "pairs")
EXTENSIONS = (".json", ".jsonl", ".parquet")
SIGNATURES = {  # the keys that tell the formats apart, for the up-front check of a file
    "amp_json": ("image", "output_1"),
    "trl_dpo": ("prompt", "chosen", "rejected"),
    "pairs": ("question", "chosen", "rejected"),
}
ID_KEYS = ("id", "idx", "question_id")
MAX_LEVELS = 8
DEFAULT_TASK = "imported"
_OUTPUT_KEY = re.compile(r"output_([1-9][0-9]*)")

TEXT_BLOCK = pa.struct([("text", pa.string()), ("type", pa.string())])
MESSAGES = pa.list_(pa.struct([("content", pa.list_(TEXT_BLOCK)), ("role", pa.string())]))
IMAGES = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
TRL_TYPES = {"id": pa.string(), "task": pa.string(), "images": IMAGES}
TRL_TYPES.update(dict.fromkeys(("prompt", "chosen", "rejected"), MESSAGES))
# HF datasets reads this schema metadata and decodes `images` as a list of Image features.
HF_METADATA = json.dumps({"info": {"features": {"images": [{"_type": "Image"}]}}})


class _Parsed(NamedTuple):
    image: Any  # as the record holds it: a path, bytes, or a {bytes, path} struct
    questions: list[str]
    levels: list[list[str]]  # per level, best first: the answer of every round
    level_ids: list[str]
    used: frozenset[str]  # the record keys the format consumed


def record_to_row(fmt: str, record: Any, image_root: Location | None = None) -> dict[str, Any]:
    """One PREFERENCES row from one record of `fmt`; raises BadRow naming what is wrong.

    No I/O: relative image paths are joined to `image_root` (kept as they are without one).
    """
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow(f"the record is a {type(record).__name__}, not an object")
    for key, value in record.items():
        try:
            json.dumps([key, value], ensure_ascii=False, default=lambda _: None).encode()
        except UnicodeEncodeError:
            raise BadRow(f"text is not valid UTF-8 (in key {printable(str(key))!r})") from None
    parsed = _PARSERS[fmt](record)
    names = ["the question", *(f"the answer of {cid}" for cid in parsed.level_ids)]
    for name, texts in zip(names, [parsed.questions, *parsed.levels], strict=True):
        empty = [t for t, text in enumerate(texts) if not text.strip()]
        if empty:
            raise BadRow(f"{name} is empty in round {empty[0]}")
    for i, j in combinations(range(len(parsed.levels)), 2):
        if parsed.levels[i] == parsed.levels[j]:
            raise BadRow(
                f"{parsed.level_ids[i]} and {parsed.level_ids[j]} give the same answer in every "
                "round: a preference between them teaches nothing"
            )
    item_id, used = record_item_id(fmt, record)
    used |= parsed.used
    task = record.get("task")
    if isinstance(task, str) and task.strip():
        used |= {"task"}
    image, path = _image_value(parsed.image)
    if path is not None and image_root is not None and not ("://" in path or path[:1] == "/"):
        path = image_root.join(path).uri
    levels = [
        level_struct(cid, fmt, k, answers)
        for k, (cid, answers) in enumerate(zip(parsed.level_ids, parsed.levels, strict=True))
    ]
    extra = json.loads(row_to_json({k: v for k, v in record.items() if k not in used}))
    rounds = zip(parsed.questions, parsed.levels[0], strict=True)
    return {
        "item_id": item_id,
        "split": "preference",
        "task": task if "task" in used else DEFAULT_TASK,
        "image": image,
        "image_uri": path,
        "rounds": [{"question": q, "answer": a} for q, a in rounds],
        "annotations": json.dumps({"format": fmt, "extra": extra}, ensure_ascii=False),
        "levels": levels,
        "candidates": [dict(level) for level in levels],
        "order_changed": False,
        "checker": fmt,
    }


def level_struct(candidate_id: str, fmt: str, rank: int, answers: list[str]) -> dict[str, Any]:
    """A SCORED_CANDIDATE of an imported level: ranked by the file's order, never checked."""
    values = [candidate_id, "import", fmt, rank, list(answers), "{}", None, None, rank]
    return dict(zip(SCORED_CANDIDATE.names, values, strict=True))


def record_item_id(fmt: str, record: dict[str, Any]) -> tuple[str, set[str]]:
    """The item id (from an id key, else a content hash), and {"id"} when it used that key up.

    A string `id` is the item id itself (export writes it back); other id keys and ids that are
    not strings stay among the extra keys, so that their name and type survive a round trip.
    """
    for key in ID_KEYS:
        value = record.get(key)
        if value is not None and str(value).strip():
            used = {"id"} if key == "id" and isinstance(value, str) else set()
            return printable(str(value)), used
    canonical = json.dumps(json.loads(row_to_json(record)), sort_keys=True)
    return f"{fmt}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}", set()


def _parse_amp_json(record: dict[str, Any]) -> _Parsed:
    require(record, ("image",))
    numbers = sorted(int(m.group(1)) for key in record if (m := _OUTPUT_KEY.fullmatch(key)))
    if len(numbers) < 2:
        raise BadRow(f"{len(numbers)} output(s): a preference needs output_1 and output_2 at least")
    if numbers != list(range(1, len(numbers) + 1)):
        gap = min(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise BadRow(f"record lacks 'output_{gap}': outputs are numbered output_1 ... output_K")
    if len(numbers) > MAX_LEVELS:
        raise BadRow(f"{len(numbers)} outputs: at most {MAX_LEVELS} levels are supported")
    keys = [f"output_{n}" for n in numbers]
    questions, levels = [], []
    for key in keys:
        asked, answers, _ = dialogue(record[key], key, ("human", "gpt"), llava_turn)
        if len(answers) < len(asked):
            raise BadRow(f"{key} ends with a human turn that has no gpt answer")
        if levels and asked != questions:
            raise BadRow(
                f"human turns differ across outputs: {key} does not ask what output_1 does"
            )
        questions = asked
        levels.append(answers)
    return _Parsed(record["image"], questions, levels, keys, frozenset(["image", *keys]))


def _trl_message(message: Any, where: str) -> tuple[Any, str, int]:
    """(role, text, image placeholders) of one message; text blocks are joined by newlines."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise BadRow(f"{where} lacks 'role' or 'content'")
    content = message["content"]
    if isinstance(content, str):
        return message["role"], content, 0
    blocks = content if isinstance(content, list) else [None]
    kinds = [block.get("type") if isinstance(block, dict) else None for block in blocks]
    texts = [b["text"] for b, kind in zip(blocks, kinds, strict=True) if kind == "text"]
    if not set(kinds) <= {"image", "text"} or not all(isinstance(t, str) for t in texts):
        raise BadRow(f"{where} has content that is neither text nor image and text blocks")
    return message["role"], "\n".join(texts), kinds.count("image")


def _parse_trl(record: dict[str, Any]) -> _Parsed:
    require(record, ("prompt", "chosen", "rejected", "images"))
    images = record["images"]
    if not isinstance(images, list) or len(images) != 1:
        raise BadRow("images must be a list of one image: an amp-ray item holds exactly one")
    prompt = record["prompt"]
    if isinstance(prompt, str):  # TRL's plain (not conversational) rows
        questions, history, placeholders = [strip_image_token(prompt)], [], 1
    else:
        roles = ("user", "assistant")
        questions, history, placeholders = dialogue(prompt, "prompt", roles, _trl_message)
        if len(history) == len(questions):
            raise BadRow("the prompt ends with an assistant turn instead of the user's question")
    if placeholders != 1:
        raise BadRow(f"the prompt has {placeholders} image placeholders for 1 image")
    later, levels = None, []
    for key in ("chosen", "rejected"):
        asked, answers = _trl_completion(record[key], key)
        if later is not None and asked != later:
            raise BadRow("chosen and rejected ask different questions after the prompt")
        later = asked
        levels.append([*history, *answers])
    keys = frozenset(["prompt", "chosen", "rejected", "images"])
    return _Parsed(images[0], questions + later, levels, ["chosen", "rejected"], keys)


def _trl_completion(value: Any, key: str) -> tuple[list[str], list[str]]:
    """(user turns, assistant turns) of a chosen / rejected value: text, or messages that
    alternate from an assistant turn and end with one (the rest of the conversation)."""
    if isinstance(value, str):
        return [], [value]
    if not isinstance(value, list) or not value:
        raise BadRow(f"{key} must be text or a non-empty list of messages")
    answers, asked = [], []
    for i, message in enumerate(value):
        role, text, count = _trl_message(message, f"{key} message {i}")
        expected = ("assistant", "user")[i % 2]
        if role != expected or count:
            raise BadRow(
                f"{key} message {i} is from {role!r}, expected {expected!r} without an image "
                "(alternation, from the answer to the prompt's last question)"
            )
        (answers, asked)[i % 2].append(text)
    if len(asked) == len(answers):
        raise BadRow(f"{key} ends with a user turn that has no answer")
    return asked, answers


def _parse_pairs(record: dict[str, Any]) -> _Parsed:
    keys = ("image", "question", "chosen", "rejected")
    require(record, keys)
    if not all(isinstance(record[key], str) for key in keys[1:]):
        raise BadRow("question, chosen and rejected must be text")
    levels = [[record["chosen"]], [record["rejected"]]]
    question = strip_image_token(record["question"])
    return _Parsed(record["image"], [question], levels, ["chosen", "rejected"], frozenset(keys))


_PARSERS: dict[str, Callable[[dict[str, Any]], _Parsed]] = {
    "amp_json": _parse_amp_json,
    "trl_dpo": _parse_trl,
    "pairs": _parse_pairs,
}


def _image_value(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, None) when the record holds the image's bytes, else (None, its path)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if isinstance(data, (bytes, bytearray)) and data else path
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), None
    if isinstance(value, str) and value.strip():
        return None, value
    raise BadRow("the image is empty, or neither a path nor a {bytes, path} struct")


class ImportResult(NamedTuple):
    items: pa.Table  # ITEMS
    preferences: pa.Table  # PREFERENCES
    quarantine: pa.Table  # QUARANTINE: the bad records, each with its reason
    rows_in: int  # records read


def records_to_tables(
    fmt: str,
    records: Sequence[Any],
    image_root: Location | None = None,
    *,
    labels: Sequence[str] | None = None,
    stage: str = "data",
    image_exists: Callable[[str], bool] | None = None,
) -> ImportResult:
    """Rows of the good records; bad ones (and repeated ids) go to quarantine with the reason."""
    good, bad = [], []
    seen: dict[str, str] = {}
    for n, record in enumerate(records):
        label = labels[n] if labels is not None else f"record {n}"
        try:
            row = record_to_row(fmt, record, image_root)
            problem = image_bytes_problem(row["image"]) if row["image"] is not None else None
            if row["image"] is None and image_exists and not image_exists(row["image_uri"]):
                problem = f"image {row['image_uri']} does not exist"
            first = seen.get(row["item_id"])
            if problem or first:
                raise BadRow(problem or f"duplicate item_id {row['item_id']!r} (first in {first})")
        except BadRow as exc:
            item_id = record_item_id(fmt, record)[0] if isinstance(record, dict) else None
            raw = record.raw if isinstance(record, Unreadable) else record
            reason, row_json = printable(f"{exc} ({label})"), row_to_json(raw)
            bad.append({"stage": stage, "item_id": item_id, "reason": reason, "row_json": row_json})
            continue
        seen[row["item_id"]] = label
        good.append(row)
    preferences = pa.Table.from_pylist(good, schema=PREFERENCES)
    items = preferences.select(list(ITEM_FIELDS)).cast(ITEMS)
    quarantine = pa.Table.from_pylist(bad, schema=QUARANTINE)
    return ImportResult(items, preferences, quarantine, len(records))


def source_files(uri: str, storage: Any = None, label: str = "") -> tuple[Location, list[Location]]:
    """The location of `uri` and the files to import: itself, or a folder's data files."""
    location = open_location(uri, storage)
    if not location.exists():
        raise StorageError(f"{label}{uri} does not exist", hint="fix data.path in the spec")
    if not guard(location, "read", location.fs.isdir, location.path):
        return location, [location]
    paths = [path for path in location.list_files() if path.endswith(EXTENSIONS)]
    files = [Location(location.fs, p) for p in paths if posixpath.basename(p)[0] not in "._"]
    if not files:
        raise DataError(f"{label}{uri} holds no {', '.join(EXTENSIONS)} files")
    return location, files


def read_records(fmt: str, file: Location) -> list[Any]:
    """The records of a .json (array), .jsonl or .parquet file; refuses a file not of `fmt`.

    Text is decoded with surrogateescape, so bytes that are not UTF-8 reach the row checks (and
    quarantine) instead of failing the file; so do JSONL lines that are not JSON (Unreadable).
    """
    if file.path.endswith(".parquet"):
        try:
            records = pq.read_table(file.path, filesystem=file.fs).to_pylist()
        except Exception as exc:
            raise DataError(f"{file.uri} is not readable Parquet ({exc})") from None
    else:
        text = file.read_bytes().decode("utf-8", "surrogateescape")
        if file.path.endswith(".jsonl"):
            lines = enumerate(text.split("\n"), 1)
            records = [json_line(n, line) for n, line in lines if line.strip()]
        else:
            try:
                records = json.loads(text)
            except ValueError as exc:
                raise DataError(
                    f"{file.uri} is not JSON (use .jsonl for JSON lines): {exc}"
                ) from None
    if not isinstance(records, list):
        raise DataError(f"{file.uri} holds a JSON {type(records).__name__}, not records")
    check_signature(fmt, records, file.uri)
    return records


def check_signature(fmt: str, records: Sequence[Any], where: str) -> None:
    """Refuse a file none of whose records has the format's keys (the wrong data.source)."""
    hint = "docs/formats.md describes amp_json, trl_dpo and pairs"
    if not records:
        raise DataError(f"{where} holds no records")
    other = "it looks like {other}: set data.source: {other}"
    records_check(fmt, SIGNATURES, records, where, hint, other)
    if not any(isinstance(record, dict) for record in records):
        raise DataError(f"{where} holds no JSON records of {fmt}", hint=hint)


def import_preferences(
    fmt: str, uri: str, image_root: str | None = None, storage: Any = None
) -> ImportResult:
    """Import a file, or a folder of files, of `fmt`: (items, preferences, quarantine, rows_in).

    Image files are only checked to exist (one stat each), never read into memory.
    """
    location, files = source_files(uri, storage)
    root = open_location(image_root, storage) if image_root else image_root_for(location)
    records, labels = [], []
    for file in files:
        found = read_records(fmt, file)
        records += found
        labels += [f"record {n} of {posixpath.basename(file.path)}" for n in range(len(found))]
    exists = lambda uri: resolve_image_uri(uri, root).exists()  # noqa: E731
    return records_to_tables(fmt, records, root, labels=labels, image_exists=exists)
