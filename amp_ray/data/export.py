"""Preference data out: a run's PREFERENCES rows as AMP JSON, TRL DPO Parquet or pairs, the
formats data/formats.py reads (docs/formats.md has the layouts and what each loses).

The pair formats (trl_dpo, pairs) expand K ranked levels to the pairs of PAIR_MODES. A pair keeps
what differs between its two levels: its prompt is the conversation they share, up to the first
round whose answers differ, and chosen and rejected each carry the rest of their own conversation
from that answer on (later user turns included, as TRL's conversational format allows). So a
dialogue whose levels differ only in an earlier round is trained on that round, and every answer
is trained in the context its own level had. Two levels that answer every round alike make no
pair: it is skipped and counted with its reason, never written as chosen == rejected.

amp_json follows AMP's loader (data_utils_dpo.py in its code): the image path is opened as
written, so images go in as absolute paths (or URIs); output_1 is the best; every output is the
whole conversation, alternating human and gpt turns over the same human turns.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from amp_ray.data.formats import DEFAULT_TASK, FORMATS, HF_METADATA, ID_KEYS, MAX_LEVELS, TRL_TYPES
from amp_ray.data.records import BadRow
from amp_ray.errors import DataError, StorageError
from amp_ray.storage.location import Location, open_location

PAIR_MODES: dict[str, Callable[[int], list[tuple[int, int]]]] = {
    "all": lambda k: [(i, j) for i in range(k) for j in range(i + 1, k)],
    "best_vs_rest": lambda k: [(0, j) for j in range(1, k)],
    "adjacent": lambda k: [(i, i + 1) for i in range(k - 1)],
}
EXPORT_EXTENSIONS = {"amp_json": (".json",), "trl_dpo": (".parquet",), "pairs": (".json", ".jsonl")}
_MAGIC = {b"\x89PNG": "png", b"\xff\xd8": "jpg", b"GIF8": "gif", b"RIFF": "webp", b"BM": "bmp"}


class Records(NamedTuple):
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]]  # (pair id, reason): pairs that would teach nothing


def row_to_records(fmt: str, row: dict[str, Any], image: Any, pairs: str = "all") -> Records:
    """The records of `fmt` for one PREFERENCES row (`image`: the value to write as its image).

    Pair formats expand K levels to PAIR_MODES[pairs]; BadRow when the format cannot hold the row.
    """
    questions = [turn["question"] for turn in row["rounds"]]
    levels = [list(level["answers"]) for level in row["levels"]]
    if len(levels) < 2 or any(len(answers) != len(questions) for answers in levels):
        raise BadRow(f"{len(levels)} level(s), or a level without one answer per round")
    extra = annotations_extra(row.get("annotations"))
    if fmt == "amp_json":
        if len(levels) > MAX_LEVELS:
            raise BadRow(f"{len(levels)} levels: amp_json holds {MAX_LEVELS} at most")
        same = [(i, j) for i, j in PAIR_MODES["all"](len(levels)) if levels[i] == levels[j]]
        if same:
            raise BadRow(f"{_alike(*same[0])}: an MDPO pair of them would teach nothing")
        outputs = {f"output_{k + 1}": _llava(questions, a) for k, a in enumerate(levels)}
        return Records([_record(row, extra, None, {"image": image, **outputs})], [])
    if fmt == "pairs" and len(questions) != 1:
        raise BadRow(f"{len(questions)} rounds: pairs hold one; export as amp_json or trl_dpo")
    chosen_rejected = PAIR_MODES[pairs](len(levels))
    records, skipped = [], []
    for i, j in chosen_rejected:
        differs = first_difference(levels[i], levels[j])
        if differs is None:
            skipped.append((f"{row['item_id']}:{i}-{j}", _alike(i, j)))
            continue
        if fmt == "pairs":
            body = {"image": image, "question": questions[0]}
            body |= {"chosen": levels[i][0], "rejected": levels[j][0]}
        else:
            body = trl_pair(questions, levels[i], levels[j], differs) | {"images": [image]}
        suffix = f":{i}-{j}" if len(chosen_rejected) > 1 else None
        records.append(_record(row, extra, suffix, body))
    if not records:
        raise BadRow(f"no pair of its levels differs ({skipped[0][1]})")
    return Records(records, skipped)


def first_difference(chosen: list[str], rejected: list[str]) -> int | None:
    """The first round whose answers differ; None where the two answer every round alike."""
    return next((t for t, (a, b) in enumerate(zip(chosen, rejected, strict=True)) if a != b), None)


def trl_pair(
    questions: list[str], chosen: list[str], rejected: list[str], differs: int
) -> dict[str, Any]:
    """TRL conversational {prompt, chosen, rejected}: the prompt runs to round `differs`'s
    question (earlier answers are the same in both levels); each side is the rest of its level's
    conversation, from its answer to that question on."""
    prompt: list[dict[str, Any]] = []
    for t in range(differs + 1):
        prompt.append(_user(questions[t], image=t == 0))
        if t < differs:
            prompt.append(_assistant(chosen[t]))

    def rest(answers: list[str]) -> list[dict[str, Any]]:
        messages = [_assistant(answers[differs])]
        for t in range(differs + 1, len(questions)):
            messages += [_user(questions[t]), _assistant(answers[t])]
        return messages

    return {"prompt": prompt, "chosen": rest(chosen), "rejected": rest(rejected)}


def annotations_extra(annotations: str | None) -> dict[str, Any]:
    """The extra keys an import kept in annotations (none for items the run made)."""
    try:
        data = json.loads(annotations or "{}")
        extra = data.get("extra") if "format" in data else None
    except (ValueError, TypeError, AttributeError):  # not JSON, or not an object
        return {}
    return extra if isinstance(extra, dict) else {}


def _alike(i: int, j: int) -> str:
    return f"levels {i} and {j} give the same answer in every round"


def _record(row: dict, extra: dict, suffix: str | None, body: dict) -> dict[str, Any]:
    """id (unless an extra id key carries it), the format's keys, task, then the extra keys."""
    item_id = row["item_id"]
    if suffix is not None:  # one item, several pairs: each its own id
        record = {"id": f"{item_id}{suffix}", **body}
    elif any(key in extra and str(extra[key]) == item_id for key in ID_KEYS):
        record = dict(body)
    else:
        record = {"id": item_id, **body}
    if row.get("task") and row["task"] != DEFAULT_TASK:
        record["task"] = row["task"]
    for key, value in extra.items():
        record.setdefault(key, value)
    return record


def _llava(questions: list[str], answers: list[str]) -> list[dict[str, str]]:
    turns = []
    for t, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        value = f"<image>\n{question}" if t == 0 else question
        turns += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return turns


def _user(text: str, image: bool = False) -> dict[str, Any]:
    blocks = [{"text": None, "type": "image"}] if image else []
    return {"content": [*blocks, {"text": text, "type": "text"}], "role": "user"}


def _assistant(text: str) -> dict[str, Any]:
    return {"content": [{"text": text, "type": "text"}], "role": "assistant"}


@dataclass
class ExportReport:
    dest: str
    items: int = 0  # items written (as one or more records)
    records: int = 0
    images: set[str] = field(default_factory=set)  # files written under images/ (from bytes)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # items: (item_id, reason)
    skipped_pairs: list[tuple[str, str]] = field(default_factory=list)  # (pair id, reason)


def export_preferences(
    table: pa.Table, fmt: str, dest: str, pairs: str = "all", storage: Any = None
) -> ExportReport:
    """Write PREFERENCES rows as a `fmt` file at `dest`; rows the format cannot hold, and pairs
    that would teach nothing, are skipped and listed in the report."""
    if fmt not in FORMATS or pairs not in PAIR_MODES:
        raise DataError(f"unknown format {fmt!r} or pairs {pairs!r}: see docs/formats.md")
    target = open_location(dest, storage)
    if not target.path.endswith(EXPORT_EXTENSIONS[fmt]):
        raise DataError(
            f"{dest}: a {fmt} export is written to a {' or '.join(EXPORT_EXTENSIONS[fmt])} file",
            hint=f"give DEST a name ending in {EXPORT_EXTENSIONS[fmt][0]}",
        )
    folder = Location(target.fs, posixpath.dirname(target.path))
    report = ExportReport(target.uri)
    records: list[dict[str, Any]] = []
    for batch in table.to_batches():
        for row in batch.to_pylist():
            try:
                image = _export_image(fmt, row, folder, report, storage)
                written, skipped = row_to_records(fmt, row, image, pairs)
            except BadRow as exc:
                report.skipped.append((row["item_id"], str(exc)))
                continue
            records += written
            report.skipped_pairs += skipped
            report.items += 1
    if fmt == "trl_dpo":
        buffer = pa.BufferOutputStream()
        pq.write_table(trl_table(records), buffer)
        data = buffer.getvalue().to_pybytes()
    elif target.path.endswith(".jsonl"):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    else:
        data = (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode()
    target.write_bytes_atomic(data)
    report.records = len(records)
    return report


def _export_image(fmt: str, row: dict, folder: Location, report: ExportReport, storage: Any) -> Any:
    """trl_dpo: a {bytes, path} struct. amp_json: an absolute path or URI (AMP opens it as
    written). pairs: a path, relative where the image is under DEST's folder. Bytes the run holds
    go to images/ beside the file for the JSON formats."""
    data, uri = row.get("image"), row.get("image_uri")
    if data is None and not uri:
        raise BadRow("the item has no image")
    if fmt == "trl_dpo":
        if data is None:
            absolute = "://" in uri or posixpath.isabs(uri)
            try:
                data = (open_location(uri, storage) if absolute else folder.join(uri)).read_bytes()
            except StorageError as exc:
                raise BadRow(f"image {uri} cannot be read ({exc.message})") from None
        return {"bytes": data, "path": image_file_name(data)}
    if data is not None:
        name = image_file_name(data)
        if name not in report.images:
            folder.join("images", name).write_bytes_atomic(data)
            report.images.add(name)
        uri = folder.join("images", name).uri
    elif not ("://" in uri or posixpath.isabs(uri)):
        uri = folder.join(uri).uri
    prefix = folder.uri.rstrip("/") + "/"
    if fmt == "pairs" and uri.startswith(prefix):
        return uri[len(prefix) :]
    return uri


def image_file_name(data: bytes) -> str:
    """A name by content (sha256): equal images share one file, and names are stable."""
    kind = next((ext for magic, ext in _MAGIC.items() if data.startswith(magic)), "bin")
    return f"{hashlib.sha256(data).hexdigest()[:16]}.{kind}"


def trl_table(records: list[dict[str, Any]]) -> pa.Table:
    """TRL records as an Arrow table in HF datasets' layout (images as a list of Image)."""
    required = ("prompt", "chosen", "rejected", "images")
    names = list(dict.fromkeys([*(key for r in records for key in r), *required]))
    try:
        columns = {n: pa.array([r.get(n) for r in records], type=TRL_TYPES.get(n)) for n in names}
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(
            f"a column of the export mixes types ({exc})",
            hint="the extra keys kept from an import must have one type per key",
        ) from None
    return pa.table(columns).replace_schema_metadata({"huggingface": HF_METADATA})
