"""Reading the records of JSON and JSONL files: preference imports (data/formats.py) and
benchmark files (evaluation/benchmarks.py). A record that cannot be used raises `BadRow`, whose
message is its quarantine reason: a bad record never stops a read. A whole file of another
format is refused up front (`check_signature`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from amp_ray.errors import DataError

Reader = Callable[[Any, str], tuple[Any, str, int]]  # a turn -> (role, text, image placeholders)
_IMAGE_TOKEN = re.compile(r"\n*<image>\n*")


class BadRow(ValueError):
    """A record that cannot become a row; the message is its quarantine reason."""


class Unreadable(BadRow):
    """A JSONL line that is not JSON: it stands in the records, and quarantine keeps its text."""

    def __init__(self, reason: str, raw: dict[str, Any]) -> None:
        super().__init__(reason)
        self.raw = raw


def json_line(n: int, line: str) -> Any:
    """Line `n` of a JSONL file, or an Unreadable in its place."""
    try:
        return json.loads(line)
    except ValueError as exc:
        return Unreadable(f"line {n} is not JSON ({exc})", {"line": n, "text": line})


def require(record: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if record.get(key) is None:
            raise BadRow(f"record lacks {key!r}")


def printable(text: str) -> str:
    """The text with any lone surrogate escaped, so that it can be written as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def strip_image_token(question: str) -> str:
    """The question without "<image>" and the newlines around it (export puts it back in front)."""
    return _IMAGE_TOKEN.sub("", question)


def dialogue(
    turns: Any, where: str, roles: tuple[str, str], read: Reader
) -> tuple[list[str], list[str], int]:
    """(questions, answers, image placeholders) of alternating turns; `read` reads one turn."""
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"{where} is not a non-empty list of turns")
    texts: tuple[list[str], list[str]] = ([], [])
    images = 0
    for i, turn in enumerate(turns):
        role, text, count = read(turn, f"{where} turn {i}")
        if role != roles[i % 2]:
            raise BadRow(
                f"{where} turn {i} is from {role!r}, expected {roles[i % 2]!r} (alternation)"
            )
        texts[i % 2].append(text)
        images += count
    texts[0][0] = strip_image_token(texts[0][0])
    return texts[0], texts[1], images


def llava_turn(turn: Any, where: str) -> tuple[Any, str, int]:
    """A LLaVA-style turn, {"from": ..., "value": text}."""
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise BadRow(f"{where} lacks 'from' or a text 'value'")
    return turn.get("from"), turn["value"], 0


def check_signature(
    name: str,
    signatures: Mapping[str, Sequence[str]],
    records: Sequence[Any],
    where: str,
    hint: str,
    other_hint: str = "it looks like {other}",
) -> None:
    """Refuse a file none of whose records has the keys of `name` (`signatures[name]`): a file
    of another format, named by `other_hint` where its records have that format's keys. A file
    with no JSON object at all is left to the per-record checks (each line is quarantined)."""
    objects = [set(record) for record in records if isinstance(record, dict)]
    needed = set(signatures[name])
    if not objects or any(needed <= keys for keys in objects):
        return
    guess = [other for other, keys in signatures.items() if any(set(keys) <= k for k in objects)]
    raise DataError(
        f"{where} is not {name}: no record has the keys {sorted(needed)} "
        f"(the first has {sorted(objects[0])})",
        hint=other_hint.format(other=guess[0]) if guess else hint,
    )
