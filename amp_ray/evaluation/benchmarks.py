"""Published hallucination benchmarks as ITEMS rows: the evaluate stage answers them as world items.

Layouts (as the public files and evaluation scripts have them):

- `mrhal`: MRHal-Bench's eval_gt.json, a JSON array of {id, image, image_content[], label, revised};
  `revised` alternates human/gpt turns {"from", "value"}: round i asks revised[2i] (the first
  without its "<image>\\n") and revised[2i+1] is the reference. One dialogue item per record.
- `mmhal`: MMHal-Bench's 96 records {id?, question_type, question_topic, image_id, image_src,
  image_content[], question, gt_answer, ...}; one round each. The public image_src is a Flickr
  URL, which cannot be fetched here, so a URL's file name is looked up in the image root (the
  layout of MMHal-Bench's images/ folder); a local or s3:// image_src is used as written; without
  image_src, image_id names the file (".jpg" added when it has no extension, as OpenImages names
  its files).
- `pope`: questions {question_id, image, text, category?} joined with labels {question_id, image,
  text, label: yes|no} from files named coco_pope_<category>.json (JSON lines despite the name).
  The path is a questions file (with `labels`: a labels file or folder) or a labelled file or a
  folder of coco_pope_*.json, whose records are questions and labels at once.

Rows: item_id "<benchmark>/<id>" ("pope/<category>/<question_id>"), split "mrhal" / "mmhal" /
"pope_<category>", task "dialogue" / "mmhal" / "existence", image null and image_uri the image path
(relative ones joined to the image root, default the file's folder). annotations = JSON
{"benchmark", "rounds": [{"type", ...}], "extra": the record's keys no field took, plus
image_content and label (mrhal), image_content, question_type and question_topic (mmhal), or
label, category and object in the round (pope)}: what the judge and the POPE metrics read.

Record -> row is pure and raises `BadRow` (its message is the quarantine reason); a bad record
never stops a read, a file that cannot be read at all raises DataError. Image files are not
checked here: the answering actor fails an item whose image does not decode.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pyarrow as pa

from amp_ray.data.items import image_root_for, item_problem
from amp_ray.data.records import (
    BadRow,
    Unreadable,
    dialogue,
    json_line,
    llava_turn,
    printable,
    require,
)
from amp_ray.data.records import check_signature as records_check
from amp_ray.errors import DataError
from amp_ray.storage.location import Location, guard, open_location
from amp_ray.storage.quarantine import row_to_json
from amp_ray.storage.schemas import ITEMS, QUARANTINE

BENCHMARK_FORMATS = ("mrhal", "mmhal", "pope")
STAGE = "evaluate"
POPE_LABELS = ("yes", "no")
UNKNOWN_TYPE = "unknown"
_POPE_FILE = re.compile(r"coco_pope_(.+)\.jsonl?")  # a label file, its category in the name
_POPE_OBJECT = re.compile(r"\s*is there (?:an?|any) (.+?) in the (?:image|picture)\s*\?", re.I)
_URL = re.compile(r"https?://", re.I)
SIGNATURES = {  # keys every record of the benchmark has, to refuse another benchmark's file
    "mrhal": ("revised",),
    "mmhal": ("question", "gt_answer"),
    "pope": ("question_id", "text"),
}
MRHAL_KEYS = frozenset(["id", "image", "image_content", "label", "revised"])
MMHAL_KEYS = frozenset(
    ["id", "question_type", "question_topic", "image_content", "question", "gt_answer"]
)
POPE_KEYS = frozenset(["question_id", "image", "text", "label", "category"])


class Unlabelled(Unreadable):
    """A POPE question the labels do not answer: quarantine keeps the question as it was."""


class _Source(NamedTuple):
    record: Any  # a parsed record, or a BadRow standing in for one
    label: str  # where it came from, for the quarantine reason: "record 3 of eval_gt.json"
    position: int  # its index in its file (MMHal records without an id are named by it)
    category: str | None  # POPE: the category its file name gives


# --------------------------------------------------------------------------- record -> row


def benchmark_record_to_row(
    benchmark: str,
    record: Any,
    image_root: Location | None,
    *,
    position: int = 0,
    category: str | None = None,
) -> dict[str, Any]:
    """One ITEMS row from one benchmark record; raises BadRow naming what is wrong.

    No I/O. `position` is the record's index in its file (the id of an MMHal record without
    one); `category` is POPE's category from the file name, used when the record has none. A
    POPE record is a question with its `label` already joined in.
    """
    if benchmark not in _ROWS:
        raise DataError(f"unknown benchmark {benchmark!r}: use one of {list(BENCHMARK_FORMATS)}")
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow(f"the record is a {type(record).__name__}, not an object")
    try:  # text that is not UTF-8 would fail the Arrow table, not just this row
        json.dumps(record, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        raise BadRow("text is not valid UTF-8") from None
    row = _ROWS[benchmark](record, image_root, position, category)
    problem = item_problem(row)
    if problem:
        raise BadRow(problem)
    return row


def _mrhal_row(
    record: dict[str, Any], root: Location | None, position: int, category: str | None
) -> dict[str, Any]:
    require(record, ("id", "image", "image_content", "revised"))
    content = _strings(record["image_content"], "image_content")
    questions, answers, _ = dialogue(record["revised"], "revised", ("human", "gpt"), llava_turn)
    if len(answers) < len(questions):
        turns = len(questions) + len(answers)
        raise BadRow(f"revised has an odd number of turns ({turns}): the last has no reference")
    label = record.get("label")
    notes = {
        "benchmark": "mrhal",
        "image_content": content,
        "label": label,
        "rounds": [{"type": kind} for kind in _round_types(label, len(questions))],
    }
    return _row(
        f"mrhal/{_text(record['id'])}",
        "mrhal",
        "dialogue",
        _image_uri(_path(record, "image"), root),
        list(zip(questions, answers, strict=True)),
        notes | {"extra": _extra(record, MRHAL_KEYS)},
    )


def _round_types(label: Any, rounds: int) -> list[str]:
    """MRHal's `label` is the dialogue's question type; a list gives one type per round."""
    if label is None:
        return [UNKNOWN_TYPE] * rounds
    if isinstance(label, str):
        return [label] * rounds
    if isinstance(label, list) and len(label) == rounds and all(isinstance(t, str) for t in label):
        return list(label)
    raise BadRow(f"label is neither a question type nor a list of {rounds} types")


def _mmhal_row(
    record: dict[str, Any], root: Location | None, position: int, category: str | None
) -> dict[str, Any]:
    require(record, ("question_type", "image_content", "question", "gt_answer"))
    content = _strings(record["image_content"], "image_content")
    question, answer = _text_field(record, "question"), _text_field(record, "gt_answer")
    kind = _text_field(record, "question_type")
    notes = {
        "benchmark": "mmhal",
        "image_content": content,
        "question_type": kind,
        "question_topic": record.get("question_topic"),
        "rounds": [{"type": kind}],
        "extra": _extra(record, MMHAL_KEYS),  # image_id and image_src among them
    }
    item_id = f"mmhal/{_mmhal_id(record, position)}"
    uri = _image_uri(_mmhal_image(record), root)
    return _row(item_id, "mmhal", "mmhal", uri, [(question, answer)], notes)


def _mmhal_id(record: dict[str, Any], position: int) -> str:
    value = record.get("id")
    return _text(value) if value is not None and str(value).strip() else str(position)


def _mmhal_image(record: dict[str, Any]) -> str:
    """The image's path: image_src unless it is a URL (then its file name), else image_id."""
    source = record.get("image_src")
    if isinstance(source, str) and source.strip():
        if not _URL.match(source):
            return source
        name = posixpath.basename(urlparse(source).path)
        if name:
            return name
    image_id = record.get("image_id")
    if isinstance(image_id, str) and image_id.strip():
        return image_id if posixpath.splitext(image_id)[1] else f"{image_id}.jpg"
    raise BadRow("record lacks 'image_src' and 'image_id': no image to answer about")


def _pope_row(
    record: dict[str, Any], root: Location | None, position: int, category: str | None
) -> dict[str, Any]:
    require(record, ("question_id", "image", "text"))
    if record.get("label") is None:
        raise BadRow(
            "record lacks 'label': give POPE's labels (coco_pope_<category>.json) with them"
        )
    label = str(record["label"]).strip().lower()
    if label not in POPE_LABELS:
        raise BadRow(f"label is {printable(str(record['label']))!r}, not 'yes' or 'no'")
    category = record.get("category") or category
    if not isinstance(category, str) or not category.strip():
        raise BadRow(
            "no category: the record lacks 'category' and its file is not coco_pope_<category>.json"
        )
    text = _text_field(record, "text")
    facts = {
        "type": "existence",
        "label": label,
        "category": category,
        "object": _pope_object(text),
    }
    notes = {"benchmark": "pope", "rounds": [facts], "extra": _extra(record, POPE_KEYS)}
    item_id = f"pope/{category}/{_text(record['question_id'])}"
    uri = _image_uri(_path(record, "image"), root)
    return _row(item_id, f"pope_{category}", "existence", uri, [(text, label)], notes)


def _pope_object(text: str) -> str | None:
    """The object of "Is there a X in the image?" (the first line: LLaVA appends an instruction)."""
    lines = text.strip().splitlines()
    match = _POPE_OBJECT.fullmatch(lines[0]) if lines else None
    return match.group(1).strip() if match else None


_ROWS: dict[str, Callable[[dict[str, Any], Location | None, int, str | None], dict[str, Any]]] = {
    "mrhal": _mrhal_row,
    "mmhal": _mmhal_row,
    "pope": _pope_row,
}


def _row(
    item_id: str,
    split: str,
    task: str,
    image_uri: str,
    rounds: Sequence[tuple[str, str]],
    notes: dict[str, Any],
) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "split": split,
        "task": task,
        "image": None,
        "image_uri": image_uri,
        "rounds": [{"question": q, "answer": a} for q, a in rounds],
        "annotations": json.dumps(notes, ensure_ascii=False, sort_keys=True),
    }


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRow(f"{name} is not a list of strings")
    return list(value)


def _text_field(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise BadRow(f"{key!r} is a {type(value).__name__}, not text")
    return value


def _path(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"{key!r} is empty or not a path: no image to answer about")
    return value


def _text(value: Any) -> str:
    return printable(str(value))


def _image_uri(path: str, root: Location | None) -> str:
    """Relative paths are joined to the image root (as the preference imports do)."""
    if root is None or "://" in path or path.startswith("/"):
        return path
    return root.join(path).uri


def _extra(record: dict[str, Any], used: frozenset[str]) -> dict[str, Any]:
    return json.loads(row_to_json({k: v for k, v in record.items() if k not in used}))


def known_item_id(
    benchmark: str, record: Any, position: int = 0, category: str | None = None
) -> str | None:
    """The item id a record would have, where its fields give one (for quarantine rows)."""
    if isinstance(record, Unreadable):
        record = record.raw
    if not isinstance(record, dict):
        return None
    if benchmark == "mmhal":
        return f"mmhal/{_mmhal_id(record, position)}"
    key = "id" if benchmark == "mrhal" else "question_id"
    if record.get(key) is None:
        return None
    if benchmark == "mrhal":
        return f"mrhal/{_text(record['id'])}"
    category = record.get("category") or category
    return f"pope/{category}/{_text(record[key])}" if category else None


# --------------------------------------------------------------------------- files -> tables


def read_benchmark(
    benchmark: str,
    path: str,
    image_root: str | None,
    storage: Any = None,
    labels: str | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(ITEMS of the good records, QUARANTINE of the bad ones) of a benchmark file, local or s3://.

    POPE: `path` is a questions file or a folder of coco_pope_<category>.json; `labels` (a file
    or such a folder) is joined to the questions by category and question_id. Relative image
    paths are read from `image_root`, by default the file's folder.
    """
    if benchmark not in BENCHMARK_FORMATS:
        raise DataError(f"unknown benchmark {benchmark!r}: use one of {list(BENCHMARK_FORMATS)}")
    location = _existing(path, storage, benchmark)
    root = open_location(image_root, storage) if image_root else image_root_for(location)
    if benchmark == "pope":
        sources = _pope_sources(location, labels, storage)
    else:
        if labels is not None:
            raise DataError(f"labels is for POPE only, not {benchmark}")
        if _is_dir(location):
            raise DataError(
                f"{location.uri} is a folder: {benchmark} reads one JSON file",
                hint=f"set evaluation.files.{benchmark}.path to the file itself",
            )
        sources = _sources(location)
    check_signature(benchmark, [s.record for s in sources], location.uri)
    return benchmark_tables(benchmark, sources, root)


def check_signature(benchmark: str, records: Sequence[Any], where: str) -> None:
    """Refuse a file none of whose records has the benchmark's keys (another benchmark's file)."""
    hint = "the docstring of amp_ray/evaluation/benchmarks.py gives each layout"
    other = "it looks like {other}: list it under evaluation.files.{other}"
    records_check(benchmark, SIGNATURES, records, where, hint, other)


def benchmark_tables(
    benchmark: str, sources: Sequence[_Source], root: Location | None
) -> tuple[pa.Table, pa.Table]:
    """ITEMS of the good records; bad ones (and repeated ids) go to quarantine with the reason."""
    good, bad = [], []
    seen: dict[str, str] = {}
    for source in sources:
        try:
            row = benchmark_record_to_row(
                benchmark, source.record, root, position=source.position, category=source.category
            )
            first = seen.get(row["item_id"])
            if first:
                raise BadRow(f"duplicate item_id {row['item_id']!r} (first in {first})")
        except BadRow as exc:
            raw = source.record.raw if isinstance(source.record, Unreadable) else source.record
            item_id = known_item_id(benchmark, source.record, source.position, source.category)
            reason = printable(f"{exc} ({source.label})")
            bad.append(
                {"stage": STAGE, "item_id": item_id, "reason": reason, "row_json": row_to_json(raw)}
            )
            continue
        seen[row["item_id"]] = source.label
        good.append(row)
    return pa.Table.from_pylist(good, schema=ITEMS), pa.Table.from_pylist(bad, schema=QUARANTINE)


def _existing(path: str, storage: Any, benchmark: str) -> Location:
    location = open_location(path, storage)
    if not location.exists():
        raise DataError(
            f"{location.uri} does not exist", hint=f"fix evaluation.files.{benchmark}.path"
        )
    return location


def _is_dir(location: Location) -> bool:
    return bool(guard(location, "read", location.fs.isdir, location.path))


def _sources(file: Location, category: str | None = None) -> list[_Source]:
    name = posixpath.basename(file.path)
    return [
        _Source(record, f"record {n} of {name}", n, category)
        for n, record in enumerate(load_records(file))
    ]


def load_records(file: Location) -> list[Any]:
    """The records of a JSON array or a JSON-lines file (whatever its extension: POPE's .json
    files are JSON lines). Lines that are not JSON stand in the records as `Unreadable`."""
    text = file.read_bytes().decode("utf-8", "surrogateescape")
    try:
        data, error = json.loads(text), None
    except ValueError as exc:
        data, error = None, exc
    if isinstance(data, list):
        if not data:
            raise DataError(f"{file.uri} holds no records")
        return data
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if data is not None and len(lines) > 1:  # one JSON value over several lines, not a list
        raise DataError(f"{file.uri} holds a JSON {type(data).__name__}, not a list of records")
    records = [json_line(n, line) for n, line in lines]
    if not any(not isinstance(record, Unreadable) for record in records):
        raise DataError(
            f"{file.uri} is not JSON or JSON lines ({error or 'it is empty'})",
            hint="give the benchmark's published file (layouts: amp_ray/evaluation/benchmarks.py)",
        )
    return records


# --------------------------------------------------------------------------- POPE's join


def _pope_files(location: Location) -> list[Location]:
    """The file itself, or a folder's coco_pope_<category>.json files."""
    if not _is_dir(location):
        return [location]
    names = [p for p in location.list_files() if _POPE_FILE.fullmatch(posixpath.basename(p))]
    if not names:
        raise DataError(
            f"{location.uri} holds no coco_pope_<category>.json files",
            hint="POPE's label files are named coco_pope_random.json, coco_pope_popular.json, ...",
        )
    return [Location(location.fs, p) for p in names]


def _file_category(file: Location) -> str | None:
    match = _POPE_FILE.fullmatch(posixpath.basename(file.path))
    return match.group(1) if match else None


def _pope_sources(location: Location, labels: str | None, storage: Any) -> list[_Source]:
    sources = [s for f in _pope_files(location) for s in _sources(f, _file_category(f))]
    if labels is None:  # labelled files: each record is its own question and label
        return sources
    index = _LabelIndex(_pope_files(_existing(labels, storage, "pope")))
    return [s._replace(record=index.join(s.record, s.category)) for s in sources]


def _question_key(record: dict[str, Any]) -> tuple[str, str]:
    """(image, first line of the text, lower case): what a question asks, whatever its id."""
    text = str(record.get("text") or "").strip()
    first = text.splitlines()[0] if text else ""
    image = record.get("image")
    return ("" if image is None else str(image)), " ".join(first.lower().split())


class _LabelIndex:
    """POPE's labels by (category, question_id), and by (category, image, question) for question
    files whose ids are numbered across categories while each label file starts again at 1."""

    def __init__(self, files: list[Location]) -> None:
        self.by_id: dict[tuple[str | None, str], dict[str, Any]] = {}
        self.by_key: dict[tuple[str | None, str, str], dict[str, Any]] = {}
        self.categories: list[str | None] = []
        for file in files:
            for record in load_records(file):
                if not isinstance(record, dict) or record.get("question_id") is None:
                    continue  # unusable: the questions it would answer go to quarantine unlabelled
                category = record.get("category") or _file_category(file)
                if category not in self.categories:
                    self.categories.append(category)
                self.by_id[(category, str(record["question_id"]))] = record
                self.by_key[(category, *_question_key(record))] = record

    def join(self, question: Any, category: str | None) -> Any:
        """The question with its label and category, or an Unlabelled standing in for it."""
        if not isinstance(question, dict):
            return question  # not a question: the row function says why
        category = question.get("category") or category
        # A known category also takes labels that name none (a label file of another name).
        wanted = [category, None] if category else self.categories
        found = [(c, label) for c in wanted if (label := self._label(question, c)) is not None]
        found = found[:1] if category else found
        qid = _text(question.get("question_id"))
        if not found:
            where = f" in category {category!r}" if category else ""
            return Unlabelled(f"no label for question_id {qid}{where}", question)
        if len(found) > 1:
            names = ", ".join(str(c) for c, _ in found)
            return Unlabelled(
                f"question_id {qid} matches labels of several categories ({names}): "
                "give the question its 'category'",
                question,
            )
        label_category, label = found[0]
        joined = {**question, "label": label.get("label")}
        if not joined.get("image"):  # a question without its image takes the label's
            joined["image"] = label.get("image")
        if label_category and not category:
            joined["category"] = label_category
        return joined

    def _label(self, question: dict[str, Any], category: str | None) -> dict[str, Any] | None:
        """The label of the same id, unless it is about another image or question (then the
        label of the same image and question)."""
        label = self.by_id.get((category, str(question.get("question_id"))))
        if label is not None and _same_question(label, question):
            return label
        return self.by_key.get((category, *_question_key(question)))


def _same_question(label: dict[str, Any], question: dict[str, Any]) -> bool:
    """Whether the two agree on the image and the question, where both give them."""
    pairs = zip(_question_key(label), _question_key(question), strict=True)
    return all(a == b or not (a and b) for a, b in pairs)
