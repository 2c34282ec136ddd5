"""Preference formats in and out: AMP JSON, TRL DPO, pairs (amp_ray/data/formats.py).

Round trips hold for what each format can carry; every kind of bad row is quarantined with a
reason that names it while the good rows pass; the data stage imports, `amp-ray export` gives back.
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
from amp_ray.data import formats
from amp_ray.data.export import export_preferences, row_to_records
from amp_ray.data.formats import import_preferences, record_to_row
from amp_ray.data.records import BadRow
from amp_ray.errors import DataError, StorageError
from amp_ray.storage.location import open_location
from amp_ray.storage.schemas import ITEMS, PREFERENCES


def png(colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, *names: str) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        (folder / "images" / name).write_bytes(png((40 * n, 0, 0)))


def llava(questions: list[str], answers: list[str]) -> list[dict[str, str]]:
    turns = []
    for t, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        turns += [
            {"from": "human", "value": f"<image>\n{question}" if t == 0 else question},
            {"from": "gpt", "value": answer},
        ]
    return turns


def amp_record(item_id: str, image: str, levels: list[list[str]], **extra: object) -> dict:
    questions = ["describe the image .", "what colour is it ?"][: len(levels[0])]
    outputs = {f"output_{k + 1}": llava(questions, a) for k, a in enumerate(levels)}
    return {"id": item_id, "image": image, **outputs, **extra}


def dump(path: Path, records: list[dict]) -> Path:
    """Written as the exporter writes JSON, so that a faithful round trip is byte-identical."""
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n")
    return path


def user(text: str, image: bool = False) -> dict:
    content = [{"text": None, "type": "image"}] if image else []
    return {"content": [*content, {"text": text, "type": "text"}], "role": "user"}


def assistant(text: str) -> dict:
    return {"content": [{"text": text, "type": "text"}], "role": "assistant"}


# --- the mapping ---------------------------------------------------------------------------------


def test_an_amp_record_becomes_a_preference_row(tmp_path: Path) -> None:
    levels = [["a red square .", "red ."], ["a red circle .", "blue ."], ["a dog .", "green ."]]
    record = amp_record("a1", "images/x.png", levels, source_model="llava-7b")
    row = record_to_row("amp_json", record, open_location(str(tmp_path)))
    assert row["item_id"] == "a1" and row["split"] == "preference" and row["task"] == "imported"
    assert row["image"] is None and row["image_uri"] == str(tmp_path / "images" / "x.png")
    assert row["rounds"] == [
        {"question": "describe the image .", "answer": "a red square ."},
        {"question": "what colour is it ?", "answer": "red ."},
    ]
    assert [level["candidate_id"] for level in row["levels"]] == [
        "output_1",
        "output_2",
        "output_3",
    ]
    assert [level["answers"] for level in row["levels"]] == levels
    assert [(lv["initial_rank"], lv["checked_rank"]) for lv in row["levels"]] == [
        (0, 0),
        (1, 1),
        (2, 2),
    ]
    first = row["levels"][0]
    assert (first["generator"], first["source"], first["info"]) == ("import", "amp_json", "{}")
    assert first["accuracy"] is None and first["score"] is None
    assert row["candidates"] == row["levels"] and row["order_changed"] is False
    assert row["checker"] == "amp_json"
    assert json.loads(row["annotations"]) == {
        "format": "amp_json",
        "extra": {"source_model": "llava-7b"},
    }
    assert pa.Table.from_pylist([row], schema=PREFERENCES).num_rows == 1


def test_ids_come_from_id_keys_or_a_content_hash_and_paths_stay_absolute() -> None:
    base = {"question": "q ?", "chosen": "yes .", "rejected": "no ."}
    hashed = record_to_row("pairs", {"image": "/data/a.png", **base})
    again = record_to_row("pairs", {**base, "image": "/data/a.png"})  # key order does not matter
    assert hashed["item_id"].startswith("pairs-") and hashed["item_id"] == again["item_id"]
    assert hashed["image_uri"] == "/data/a.png"
    by_idx = record_to_row("pairs", {"image": "s3://bucket/a.png", "idx": 7, **base})
    assert by_idx["item_id"] == "7" and by_idx["image_uri"] == "s3://bucket/a.png"
    assert json.loads(by_idx["annotations"])["extra"] == {"idx": 7}  # its type survives
    tasked = record_to_row("pairs", {"image": "a.png", "question_id": "q9", "task": "vqa", **base})
    assert (tasked["item_id"], tasked["task"], tasked["image_uri"]) == ("q9", "vqa", "a.png")


def test_a_multi_turn_trl_prompt_becomes_earlier_rounds() -> None:
    record = {
        "prompt": [
            user("<image>what is it ?", image=True),
            assistant("a square ."),
            user("colour ?"),
        ],
        "chosen": [assistant("red .")],
        "rejected": [assistant("blue .")],
        "images": [{"bytes": png(), "path": "x.png"}],
    }
    row = record_to_row("trl_dpo", record)
    assert row["image"] == png() and row["image_uri"] is None
    assert [r["question"] for r in row["rounds"]] == ["what is it ?", "colour ?"]
    assert [level["answers"] for level in row["levels"]] == [
        ["a square .", "red ."],
        ["a square .", "blue ."],
    ]
    assert [level["candidate_id"] for level in row["levels"]] == ["chosen", "rejected"]
    plain = {"prompt": "<image>\nwhat ?", "chosen": "x .", "rejected": "y .", "images": ["a.png"]}
    assert record_to_row("trl_dpo", plain)["rounds"] == [{"question": "what ?", "answer": "x ."}]


def test_k_levels_expand_to_pairs_in_each_mode() -> None:
    levels = [["best ."], ["good ."], ["bad ."], ["worst ."]]
    row = record_to_row("amp_json", amp_record("k4", "/i.png", levels))
    for mode, expected in {
        "all": [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)],
        "best_vs_rest": [(0, 1), (0, 2), (0, 3)],
        "adjacent": [(0, 1), (1, 2), (2, 3)],
    }.items():
        pairs = row_to_records("pairs", row, "/i.png", mode).records
        assert [(r["chosen"], r["rejected"]) for r in pairs] == [
            (levels[i][0], levels[j][0]) for i, j in expected
        ]
        assert [r["id"] for r in pairs] == [f"k4:{i}-{j}" for i, j in expected]
        trl = row_to_records("trl_dpo", row, {"bytes": b"", "path": "i.png"}, mode).records
        assert [r["rejected"][0]["content"][0]["text"] for r in trl] == [
            levels[j][0] for _, j in expected
        ]
    two_rounds = record_to_row(
        "amp_json", amp_record("d", "/i.png", [["a .", "b ."], ["c .", "d ."]])
    )
    with pytest.raises(BadRow, match="2 rounds: pairs hold one"):
        row_to_records("pairs", two_rounds, "/i.png")


# --- round trips ---------------------------------------------------------------------------------


def with_absolute_images(records: list[dict], folder: Path) -> list[dict]:
    """The records as amp_json export writes them: image paths absolute (AMP opens as written)."""
    return [{**r, "image": str(folder / r["image"])} for r in records]


def test_amp_json_round_trips(tmp_path: Path) -> None:
    write_images(tmp_path, "a.png", "b.png")
    records = [
        amp_record("a", "images/a.png", [["one .", "red ."], ["two .", "blue ."], ["3 .", "x ."]]),
        amp_record("b", "images/b.png", [["yes ."], ["no ."]], task="caption", note={"k": [1]}),
    ]
    source = dump(tmp_path / "amp.json", records)
    first = import_preferences("amp_json", str(source))
    assert first.quarantine.num_rows == 0 and first.rows_in == 2
    assert first.items.schema == ITEMS and first.preferences.schema == PREFERENCES
    report = export_preferences(first.preferences, "amp_json", str(tmp_path / "out.json"))
    assert (report.items, report.records, report.skipped) == (2, 2, [])
    exported = json.loads((tmp_path / "out.json").read_text())
    assert exported == with_absolute_images(records, tmp_path)
    second = import_preferences("amp_json", str(tmp_path / "out.json"))
    assert second.preferences.equals(first.preferences)
    export_preferences(second.preferences, "amp_json", str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "out.json").read_bytes()


def test_images_held_as_bytes_are_written_beside_the_export(tmp_path: Path) -> None:
    record = {
        "prompt": [user("what is it ?", image=True)],
        "chosen": [assistant("a square .")],
        "rejected": [assistant("a circle .")],
        "images": [{"bytes": png(), "path": "orig.png"}],
    }
    pq.write_table(pa.Table.from_pylist([record]), tmp_path / "trl.parquet")
    first = import_preferences("trl_dpo", str(tmp_path / "trl.parquet"))
    report = export_preferences(first.preferences, "amp_json", str(tmp_path / "out" / "amp.json"))
    [name] = report.images
    assert (tmp_path / "out" / "images" / name).read_bytes() == png()
    exported = json.loads((tmp_path / "out" / "amp.json").read_text())
    assert exported[0]["image"] == str(tmp_path / "out" / "images" / name)
    again = import_preferences("amp_json", str(tmp_path / "out" / "amp.json"))
    assert again.items.select(["item_id", "rounds"]).equals(
        first.items.select(["item_id", "rounds"])
    )
    assert again.items.column("image_uri")[0].as_py() == str(tmp_path / "out" / "images" / name)


def trl_parquet(path: Path, with_extra: bool = True) -> list[dict]:
    """A TRL DPO Parquet as HF datasets writes it: messages with typed blocks, images as structs."""
    rows = [
        {
            "prompt": [user("what is it ?", image=True)],
            "chosen": [assistant("a red square .")],
            "rejected": [assistant("a red circle .")],
            "images": [{"bytes": png((255, 0, 0)), "path": "a.png"}],
        },
        {
            "prompt": [user("describe .", image=True), assistant("a ring ."), user("colour ?")],
            "chosen": [assistant("green .")],
            "rejected": [assistant("blue .")],
            "images": [{"bytes": png((0, 255, 0)), "path": "b.png"}],
        },
    ]
    if with_extra:
        for n, row in enumerate(rows):
            row["origin"] = f"set-{n}"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def test_trl_dpo_parquet_round_trips(tmp_path: Path) -> None:
    trl_parquet(tmp_path / "trl.parquet")
    first = import_preferences("trl_dpo", str(tmp_path / "trl.parquet"))
    assert first.quarantine.num_rows == 0 and first.preferences.num_rows == 2
    export_preferences(first.preferences, "trl_dpo", str(tmp_path / "one.parquet"))
    second = import_preferences("trl_dpo", str(tmp_path / "one.parquet"))
    assert second.preferences.equals(first.preferences)
    export_preferences(second.preferences, "trl_dpo", str(tmp_path / "two.parquet"))
    one, two = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "two.parquet")
    assert one.equals(two) and one.schema.metadata == two.schema.metadata
    assert one.column_names == ["id", "prompt", "chosen", "rejected", "images", "origin"]
    assert one.schema.field("images").type == formats.IMAGES
    assert b"Image" in one.schema.metadata[b"huggingface"]  # HF datasets decodes the images
    row = one.to_pylist()[1]
    assert row["images"][0]["bytes"] == png((0, 255, 0)) and row["origin"] == "set-1"


def test_trl_dpo_jsonl_with_image_paths(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", "a.png")
    row = {
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q ?"}]}
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "yes ."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "no ."}]}],
        "images": ["a.png"],
    }
    (tmp_path / "trl.jsonl").write_text(json.dumps(row) + "\n")
    result = formats.import_preferences(
        "trl_dpo", str(tmp_path / "trl.jsonl"), image_root=str(tmp_path / "pics" / "images")
    )
    [item] = result.items.to_pylist()
    assert item["image_uri"] == str(tmp_path / "pics" / "images" / "a.png") and not item["image"]
    export_preferences(result.preferences, "trl_dpo", str(tmp_path / "out.parquet"))
    [exported] = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert exported["images"][0]["bytes"] == (tmp_path / "pics" / "images" / "a.png").read_bytes()


def rlaif_records() -> list[dict]:
    return [
        {
            "ds_name": "RLAIF-V",
            "image": "images/a.png",
            "question": "what is in the image ?",
            "chosen": "a red square .",
            "rejected": "a red circle and a dog .",
            "origin_dataset": "coco",
            "origin_split": "train",
            "idx": n,
            "image_path": f"coco/{n}.jpg",
        }
        for n in range(3)
    ]


def test_pairs_keep_their_extra_keys_through_a_round_trip(tmp_path: Path) -> None:
    write_images(tmp_path, "a.png")
    records = rlaif_records()
    source = tmp_path / "rlaif.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    first = import_preferences("pairs", str(source))
    assert first.items.column("item_id").to_pylist() == ["0", "1", "2"]
    report = export_preferences(first.preferences, "pairs", str(tmp_path / "out.jsonl"))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert report.records == 3 and [json.loads(line) for line in lines] == records
    second = import_preferences("pairs", str(tmp_path / "out.jsonl"))
    assert second.preferences.equals(first.preferences)
    export_preferences(second.preferences, "pairs", str(tmp_path / "again.jsonl"))
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()


def test_rlaif_parquet_images_are_imported_as_bytes(tmp_path: Path) -> None:
    rows = rlaif_records()[:1]
    rows[0]["image"] = {"bytes": png(), "path": "0.jpg"}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rlaif.parquet")
    result = import_preferences("pairs", str(tmp_path / "rlaif.parquet"))
    [item] = result.items.to_pylist()
    assert item["image"] == png() and item["image_uri"] is None and item["item_id"] == "0"


# --- bad rows ------------------------------------------------------------------------------------


def test_bad_amp_rows_go_to_quarantine_with_their_reason(tmp_path: Path) -> None:
    write_images(tmp_path, "a.png")
    good = [["a square ."], ["a circle ."]]
    swapped = amp_record("swapped", "images/a.png", good)
    swapped["output_2"] = list(reversed(swapped["output_2"]))
    other_question = amp_record("other-question", "images/a.png", good)
    other_question["output_2"][0]["value"] = "<image>\nsomething else ?"
    no_answer = amp_record("no-answer", "images/a.png", good)
    no_answer["output_1"] = no_answer["output_1"][:1]
    gap = amp_record("gap", "images/a.png", good)
    gap["output_3"] = gap.pop("output_2")
    records = [
        amp_record("good", "images/a.png", good),
        {k: v for k, v in amp_record("no-image", "x", good).items() if k != "image"},
        amp_record("one-output", "images/a.png", good[:1]),
        swapped,
        amp_record("empty", "images/a.png", [["a square ."], [""]]),
        amp_record("blank", "images/a.png", [["  \n "], ["a circle ."]]),
        other_question,
        no_answer,
        gap,
        amp_record("missing-file", "images/nowhere.png", good),
        amp_record("good", "images/a.png", good),  # the same id again
        amp_record("bad-text", "images/a.png", [["BADBYTES"], ["a circle ."]]),
        ["not", "an", "object"],
    ]
    data = (json.dumps(records, indent=1)).encode().replace(b"BADBYTES", b"caf\xe9")
    (tmp_path / "amp.json").write_bytes(data)
    result = import_preferences("amp_json", str(tmp_path / "amp.json"))
    assert result.items.column("item_id").to_pylist() == ["good"] and result.rows_in == 13
    reasons = {row["item_id"]: row["reason"] for row in result.quarantine.to_pylist()}
    assert reasons["no-image"].startswith("record lacks 'image' (record 1 of amp.json)")
    assert reasons["one-output"].startswith("1 output(s): a preference needs output_1 and output_2")
    assert reasons["swapped"].startswith("output_2 turn 0 is from 'gpt', expected 'human'")
    assert reasons["empty"].startswith("the answer of output_2 is empty in round 0")
    assert reasons["blank"].startswith("the answer of output_1 is empty in round 0")
    assert reasons["other-question"].startswith("human turns differ across outputs: output_2")
    assert reasons["no-answer"].startswith("output_1 ends with a human turn that has no gpt answer")
    assert reasons["gap"].startswith("record lacks 'output_2'")
    assert reasons["missing-file"].startswith(f"image {tmp_path}/images/nowhere.png does not exist")
    assert reasons["good"].startswith("duplicate item_id 'good' (first in record 0 of amp.json)")
    assert reasons["bad-text"].startswith("text is not valid UTF-8 (in key 'output_1')")
    assert reasons[None].startswith("the record is a list, not an object (record 12")
    bad_text = next(r for r in result.quarantine.to_pylist() if r["item_id"] == "bad-text")
    assert "caf\\udce9" in bad_text["row_json"]  # kept, escaped, to be fixed and re-imported
    assert set(result.quarantine.column("stage").to_pylist()) == {"data"}


def test_bad_trl_and_pairs_rows_go_to_quarantine(tmp_path: Path) -> None:
    ok = {
        "prompt": [user("q ?", image=True)],
        "chosen": [assistant("yes .")],
        "rejected": [assistant("no .")],
        "images": [{"bytes": png(), "path": None}],
    }
    rows = [
        ("good", ok),
        ("two-images", {**ok, "images": [{"bytes": png(), "path": None}] * 2}),
        ("no-placeholder", {**ok, "prompt": [user("q ?")]}),
        ("ends-with-answer", {**ok, "prompt": [user("q ?", image=True), assistant("a .")]}),
        ("two-chosen", {**ok, "chosen": [assistant("a ."), assistant("b .")]}),
        ("chosen-ends-asking", {**ok, "chosen": [assistant("a ."), user("and ?")]}),
        (
            "asks-apart",
            {
                **ok,
                "chosen": [assistant("a ."), user("colour ?"), assistant("red .")],
                "rejected": [assistant("b ."), user("size ?"), assistant("big .")],
            },
        ),
        ("alike", {**ok, "rejected": [assistant("yes .")]}),
        ("corrupt", {**ok, "images": [{"bytes": b"\x89PNG not really", "path": None}]}),
        ("empty-rejected", {**ok, "rejected": [assistant(" ")]}),
    ]
    lines = [json.dumps({"id": i, **r}, default=lambda b: None) for i, r in rows[2:]]
    (tmp_path / "trl.jsonl").write_text("\n".join(["{not json", *lines]) + "\n")
    pq.write_table(pa.Table.from_pylist([{"id": i, **r} for i, r in rows]), tmp_path / "t.parquet")
    result = import_preferences("trl_dpo", str(tmp_path / "t.parquet"))
    assert result.items.column("item_id").to_pylist() == ["good"]
    reasons = {row["item_id"]: row["reason"] for row in result.quarantine.to_pylist()}
    assert reasons["two-images"].startswith("images must be a list of one image")
    assert reasons["no-placeholder"].startswith("the prompt has 0 image placeholders for 1 image")
    assert reasons["ends-with-answer"].startswith("the prompt ends with an assistant turn")
    assert reasons["two-chosen"].startswith("chosen message 1 is from 'assistant', expected 'user'")
    assert reasons["chosen-ends-asking"].startswith("chosen ends with a user turn that has no")
    assert reasons["asks-apart"].startswith("chosen and rejected ask different questions")
    assert reasons["alike"].startswith("chosen and rejected give the same answer in every round")
    assert reasons["corrupt"].startswith("image bytes do not decode as an image")
    assert reasons["empty-rejected"].startswith("the answer of rejected is empty in round 0")
    jsonl = import_preferences("trl_dpo", str(tmp_path / "trl.jsonl"), str(tmp_path))
    unreadable = [r for r in jsonl.quarantine.to_pylist() if r["item_id"] is None]
    assert unreadable[0]["reason"].startswith("line 1 is not JSON")
    assert json.loads(unreadable[0]["row_json"]) == {"line": 1, "text": "{not json"}
    pairs = [{"image": "/a.png", "question": "q ?", "chosen": "yes .", "idx": 1}]
    with pytest.raises(BadRow, match="record lacks 'rejected'"):
        record_to_row("pairs", pairs[0])


def test_wrong_formats_and_paths_are_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        import_preferences("amp_json", str(tmp_path / "nowhere.json"))
    source = dump(tmp_path / "amp.json", [amp_record("a", "/a.png", [["x ."], ["y ."]])])
    with pytest.raises(DataError, match=r"is not trl_dpo: no record has the keys") as caught:
        import_preferences("trl_dpo", str(source))
    assert "it looks like amp_json" in str(caught.value)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="is not JSON"):
        import_preferences("amp_json", str(tmp_path / "broken.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.json, \.jsonl, \.parquet files"):
        import_preferences("pairs", str(tmp_path / "empty"))
    table = import_preferences("amp_json", str(source)).preferences
    with pytest.raises(DataError, match=r"a trl_dpo export is written to a \.parquet file"):
        export_preferences(table, "trl_dpo", str(tmp_path / "out.json"))


# --- the data stage and the command --------------------------------------------------------------


def amp_spec(run_dir: Path, path: Path) -> dict:
    return {
        "name": "amp-import",
        "stages": ["data"],
        "storage": {"run_dir": str(run_dir)},
        "data": {"source": "amp_json", "path": str(path)},
    }


def test_the_data_stage_imports_amp_json_and_export_gives_it_back(
    tmp_path: Path, ray_session: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from amp_ray.pipeline import run_job
    from amp_ray.spec import validate_spec
    from amp_ray.stages.data import DataStage
    from amp_ray.storage import RunDir

    write_images(tmp_path / "src", "a.png", "b.png")
    good = [
        amp_record("a", "images/a.png", [["one .", "red ."], ["two .", "blue ."]]),
        amp_record("b", "images/b.png", [["yes ."], ["no ."], ["maybe ."]]),
    ]
    dump(tmp_path / "src" / "amp.json", good)
    dump(tmp_path / "src" / "more.json", [amp_record("c", "images/a.png", [["only ."]])])
    lines: list[str] = []
    spec = validate_spec(amp_spec(tmp_path / "run", tmp_path / "src"))
    run_job(spec, echo=lines.append)
    assert lines[1].startswith("[data] rows in 3, out 2, quarantined 1")
    assert lines[2] == "    amp_json: 2 preference items (1 with K=2, 1 with K=3)"
    run = RunDir.open(str(tmp_path / "run"))
    assert DataStage(spec, run).outputs == ("items", "preferences", "quarantine")
    items = run.dataset("data", "items").read_table()
    preferences = run.dataset("data", "preferences").read_table()
    assert items.schema == ITEMS and preferences.schema == PREFERENCES
    assert items.column("item_id").to_pylist() == ["a", "b"]
    assert items.column("split").to_pylist() == ["preference", "preference"]
    [bad] = run.dataset("data", "quarantine").read_table().to_pylist()
    assert bad["item_id"] == "c" and bad["reason"].startswith("1 output(s)")

    dest = tmp_path / "src" / "exported.json"
    assert main(["export", "--format", "amp_json", str(tmp_path / "run"), str(dest)]) == 0
    assert "exported 2 items of data/preferences as 2 amp_json records" in capsys.readouterr().out
    assert json.loads(dest.read_text()) == with_absolute_images(good, tmp_path / "src")
    trl = tmp_path / "trl.parquet"
    args = ["export", "--format", "trl_dpo", "--pairs", "adjacent", str(tmp_path / "run")]
    assert main([*args, str(trl)]) == 0
    assert pq.read_table(trl).column("id").to_pylist() == ["a", "b:0-1", "b:1-2"]

    wrong = amp_spec(tmp_path / "run2", tmp_path / "src" / "amp.json")
    wrong["data"]["source"] = "pairs"
    with pytest.raises(DataError, match="is not pairs"):
        run_job(validate_spec(wrong), echo=lines.append)
    assert not (tmp_path / "run2" / "data").exists()


def test_export_names_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    assert main(["export", "--format", "pairs", str(tmp_path / "run"), "x.json"]) == 1
    assert "holds no committed preferences" in capsys.readouterr().err
    assert main(["export", "--format", "pairs", str(tmp_path / "nothing"), "x.json"]) == 1
    assert "run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--format", "csv", str(tmp_path / "run"), "x.json"])


def test_import_and_export_through_s3(s3_endpoint: str, s3_bucket: str) -> None:
    from amp_ray.spec.blocks import StorageSpec

    storage = StorageSpec(run_dir="unused", endpoint_url=s3_endpoint)
    folder = open_location(f"s3://{s3_bucket}/src", storage)
    folder.join("images", "a.png").write_bytes_atomic(png())
    records = [amp_record("s", "images/a.png", [["yes ."], ["no ."]])]
    source = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    folder.join("amp.json").write_bytes_atomic(source.encode())
    result = import_preferences("amp_json", f"s3://{s3_bucket}/src/amp.json", storage=storage)
    assert result.items.column("image_uri").to_pylist() == [f"s3://{s3_bucket}/src/images/a.png"]
    dest = f"s3://{s3_bucket}/src/back.json"
    export_preferences(result.preferences, "amp_json", dest, storage=storage)
    [back] = json.loads(folder.join("back.json").read_bytes())
    assert back == {**records[0], "image": f"s3://{s3_bucket}/src/images/a.png"}
    export_preferences(
        result.preferences, "trl_dpo", f"s3://{s3_bucket}/out/t.parquet", "all", storage
    )
    table = pq.read_table(
        io.BytesIO(open_location(f"s3://{s3_bucket}/out/t.parquet", storage).read_bytes())
    )
    assert table.column("images").to_pylist()[0][0]["bytes"] == png()
