"""What `amp-ray export` writes (amp_ray/data/export.py), read back by our import and by a reader
written from AMP's loader as docs/formats.md describes it.

Dialogue pairs keep what differs between their two levels; no record has chosen == rejected;
every format round-trips the items, levels, turns and images it can hold.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from amp_ray.cli import main
from amp_ray.data.export import PAIR_MODES, export_preferences, row_to_records
from amp_ray.data.formats import import_preferences, level_struct
from amp_ray.data.records import BadRow
from amp_ray.storage.schemas import PREFERENCES

QUESTIONS = ["describe the image .", "what colour is the square ?", "is there a circle ?"]


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def preference_row(
    item_id: str, levels: list[list[str]], image: bytes | None = None, uri: str | None = None
) -> dict:
    """A PREFERENCES row as a run makes it: the reference answers in `rounds`, K levels."""
    questions = QUESTIONS[: len(levels[0])]
    structs = [level_struct(f"c{k}", "test", k, answers) for k, answers in enumerate(levels)]
    return {
        "item_id": item_id,
        "split": "preference",
        "task": "dialogue" if len(questions) > 1 else "caption",
        "image": image,
        "image_uri": uri,
        "rounds": [{"question": q, "answer": a} for q, a in zip(questions, levels[0], strict=True)],
        "annotations": json.dumps({"objects": ["square"]}),
        "levels": structs,
        "candidates": structs,
        "order_changed": False,
        "checker": "test",
    }


def world_rows(folder: Path) -> list[dict]:
    """Captions and dialogues, images as bytes and as a path; `early` differs only in round 0."""
    (folder / "pics").mkdir(parents=True)
    (folder / "pics" / "blue.png").write_bytes(png((0, 0, 255)))
    return [
        preference_row(
            "cap", [["a red square ."], ["a square ."], ["a circle ."]], png((255, 0, 0))
        ),
        preference_row(
            "early",
            [["a square .", "red .", "no ."], ["a circle .", "red .", "no ."]],
            uri=str(folder / "pics" / "blue.png"),
        ),
        preference_row(
            "mixed",
            [
                ["a square .", "red .", "no ."],
                ["a square .", "red .", "yes ."],
                ["a circle .", "blue .", "yes ."],
                ["a square .", "red .", "no ."],  # the same as level 0: no pair of the two
            ],
            png((0, 255, 0)),
        ),
    ]


def image_bytes(row: dict) -> bytes:
    return row["image"] if row["image"] is not None else Path(row["image_uri"]).read_bytes()


def expected_pairs(rows: list[dict], mode: str, rounds: int | None = None) -> dict[str, tuple]:
    """What the pair formats must hold, from the rule alone: every pair of `mode` whose levels
    differ, as (questions, [chosen answers, rejected answers], image bytes), by record id."""
    expected = {}
    for row in rows:
        levels = [level["answers"] for level in row["levels"]]
        questions = [turn["question"] for turn in row["rounds"]]
        if rounds is not None and len(questions) != rounds:
            continue
        pairs = PAIR_MODES[mode](len(levels))
        for i, j in pairs:
            if levels[i] != levels[j]:
                record_id = row["item_id"] + (f":{i}-{j}" if len(pairs) > 1 else "")
                expected[record_id] = (questions, [levels[i], levels[j]], image_bytes(row))
    return expected


def imported(path: Path, fmt: str) -> dict[str, tuple]:
    result = import_preferences(fmt, str(path))
    assert result.quarantine.num_rows == 0, result.quarantine.to_pylist()
    return {
        row["item_id"]: (
            [turn["question"] for turn in row["rounds"]],
            [level["answers"] for level in row["levels"]],
            image_bytes(row),
        )
        for row in result.preferences.to_pylist()
    }


def test_dialogue_pairs_keep_what_differs(tmp_path: Path) -> None:
    row = world_rows(tmp_path)[2]
    records, skipped = row_to_records("trl_dpo", row, {"bytes": b"x", "path": "x.png"})
    texts = lambda messages: [(m["role"], m["content"][-1]["text"]) for m in messages]  # noqa: E731
    by_id = {r["id"]: r for r in records}
    assert skipped == [("mixed:0-3", "levels 0 and 3 give the same answer in every round")]
    assert sorted(by_id) == ["mixed:0-1", "mixed:0-2", "mixed:1-2", "mixed:1-3", "mixed:2-3"]
    late = by_id["mixed:0-1"]  # the levels part in the last round: the rest is shared context
    assert texts(late["prompt"]) == [
        ("user", QUESTIONS[0]),
        ("assistant", "a square ."),
        ("user", QUESTIONS[1]),
        ("assistant", "red ."),
        ("user", QUESTIONS[2]),
    ]
    assert late["prompt"][0]["content"][0] == {"text": None, "type": "image"}
    assert (texts(late["chosen"]), texts(late["rejected"])) == (
        [("assistant", "no .")],
        [("assistant", "yes .")],
    )
    early = by_id["mixed:0-2"]  # they part in round 0: each side is its own whole conversation
    assert texts(early["prompt"]) == [("user", QUESTIONS[0])]
    assert texts(early["chosen"]) == [
        ("assistant", "a square ."),
        ("user", QUESTIONS[1]),
        ("assistant", "red ."),
        ("user", QUESTIONS[2]),
        ("assistant", "no ."),
    ]
    assert texts(early["rejected"])[::2] == [
        ("assistant", "a circle ."),
        ("assistant", "blue ."),
        ("assistant", "yes ."),
    ]
    assert all(r["chosen"] != r["rejected"] for r in records)
    with pytest.raises(BadRow, match="no pair of its levels differs"):
        row_to_records("pairs", preference_row("same", [["a ."], ["a ."]]), "/i.png")


@pytest.mark.parametrize("mode", ["all", "best_vs_rest", "adjacent"])
@pytest.mark.parametrize("fmt", ["trl_dpo", "pairs"])
def test_pair_formats_round_trip_exactly(tmp_path: Path, fmt: str, mode: str) -> None:
    rows = world_rows(tmp_path)
    table = pa.Table.from_pylist(rows, schema=PREFERENCES)
    dest = tmp_path / "out" / ("pairs.parquet" if fmt == "trl_dpo" else "pairs.jsonl")
    report = export_preferences(table, fmt, str(dest), mode)
    one_round = 1 if fmt == "pairs" else None  # pairs hold one round: dialogues are skipped
    want = expected_pairs(rows, mode, one_round)
    assert imported(dest, fmt) == want
    assert report.records == len(want)
    if fmt == "pairs":
        assert [item for item, _ in report.skipped] == ["early", "mixed"]
    skipped = [pair for pair, _ in report.skipped_pairs]
    equal_levels_paired = fmt == "trl_dpo" and (0, 3) in PAIR_MODES[mode](4)
    assert skipped == (["mixed:0-3"] if equal_levels_paired else [])
    if fmt == "trl_dpo":
        exported = pq.read_table(dest).to_pylist()
        assert all(r["chosen"] != r["rejected"] for r in exported)


def test_amp_json_round_trips_exactly(tmp_path: Path) -> None:
    rows = world_rows(tmp_path)[:2]  # the third has two equal levels: amp_json skips it
    dest = tmp_path / "out" / "amp.json"
    report = export_preferences(
        pa.Table.from_pylist(rows, schema=PREFERENCES), "amp_json", str(dest)
    )
    assert (report.items, report.records, report.skipped) == (2, 2, [])
    back = imported(dest, "amp_json")
    for row in rows:
        questions = [turn["question"] for turn in row["rounds"]]
        levels = [level["answers"] for level in row["levels"]]
        assert back[row["item_id"]] == (questions, levels, image_bytes(row))
    mixed = pa.Table.from_pylist(world_rows(tmp_path / "again")[2:], schema=PREFERENCES)
    report = export_preferences(mixed, "amp_json", str(tmp_path / "mixed.json"))
    assert report.records == 0 and report.skipped[0][1].startswith("levels 0 and 3 give the same")


def read_like_amp(path: Path, num_levels: int) -> list[dict]:
    """A reader written from docs/formats.md's description of AMP's loader, not from our import:
    a JSON array; `image` opened as written; output_1 .. output_K, best first, each alternating
    human / gpt turns from human, `<image>\\n` in front of the first human turn, the same human
    turns in every output."""
    items = []
    for record in json.loads(path.read_text()):
        image = Image.open(record["image"]).convert("RGB")
        outputs = [record[f"output_{k}"] for k in range(1, num_levels + 1)]
        assert f"output_{num_levels + 1}" not in record
        humans = None
        for output in outputs:
            assert [turn["from"] for turn in output] == ["human", "gpt"] * (len(output) // 2)
            assert output[0]["value"].startswith("<image>\n")
            asked = [turn["value"] for turn in output[::2]]
            assert humans is None or asked == humans
            humans = asked
        answers = [[turn["value"] for turn in output[1::2]] for output in outputs]
        items.append({"id": record["id"], "image": image, "questions": humans, "levels": answers})
    return items


def test_amp_json_exports_follow_amps_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [world_rows(tmp_path)[1], world_rows(tmp_path / "b")[0]]
    rows[1]["levels"] = rows[1]["levels"][:2]  # AMP trains one K per file
    dest = tmp_path / "out" / "amp.json"
    export_preferences(pa.Table.from_pylist(rows, schema=PREFERENCES), "amp_json", str(dest))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # AMP opens the path as written, from wherever it runs
    items = read_like_amp(dest, num_levels=2)
    for item, row in zip(items, rows, strict=True):
        assert item["id"] == row["item_id"]
        assert item["image"].tobytes() == Image.open(io.BytesIO(image_bytes(row))).tobytes()
        assert item["questions"][0] == "<image>\n" + row["rounds"][0]["question"]
        assert item["questions"][1:] == [turn["question"] for turn in row["rounds"][1:]]
        assert item["levels"] == [level["answers"] for level in row["levels"]]  # output_1 best


def test_the_export_command_counts_the_pairs_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from amp_ray.storage import RunDir

    run = RunDir.open(str(tmp_path / "run"), check=False)
    writer = run.writer("rank", "preferences", "preferences")
    writer.write_table(pa.Table.from_pylist(world_rows(tmp_path), schema=PREFERENCES))
    writer.commit()
    dest = tmp_path / "out.parquet"
    assert main(["export", "--format", "trl_dpo", str(tmp_path / "run"), str(dest)]) == 0
    out, err = capsys.readouterr()
    assert "exported 3 items of rank/preferences as 9 trl_dpo records" in out
    assert "skipped 1 pairs of levels that would teach nothing" in err
    assert "mixed:0-3: levels 0 and 3 give the same answer in every round" in err
