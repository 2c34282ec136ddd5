"""Published benchmark files as items (amp_ray/evaluation/benchmarks.py).

Each layout is written by hand in the shape the public files have: the good records become exact
ITEMS rows, every bad record is quarantined with a reason that names what is wrong while the good
ones come through, and a file that cannot be read is refused by its path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from amp_ray.data.records import BadRow
from amp_ray.errors import DataError
from amp_ray.evaluation.benchmarks import benchmark_record_to_row, read_benchmark
from amp_ray.spec.blocks import StorageSpec
from amp_ray.storage.location import open_location
from amp_ray.storage.schemas import ITEMS, QUARANTINE

QUESTIONS = ["What is the dog doing?", "What colour is the frisbee?", "How many dogs are there?"]
REFERENCES = ["It is catching a frisbee.", "The frisbee is red.", "There is one dog."]


def turns(questions: list[str], answers: list[str]) -> list[dict[str, str]]:
    """MRHal's `revised`: alternating human/gpt turns, "<image>\\n" before the first question."""
    out = []
    for t, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        out.append({"from": "human", "value": f"<image>\n{question}" if t == 0 else question})
        out.append({"from": "gpt", "value": answer})
    return out


def mrhal_record(item_id: int, **changes: object) -> dict:
    record = {
        "id": item_id,
        "image": f"{item_id:012d}.jpg",
        "image_content": ["dog", "frisbee", "grass"],
        "label": "attribute",
        "revised": turns(QUESTIONS, REFERENCES),
    }
    return {**record, **changes}


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def reasons(quarantine: pa.Table) -> dict[str | None, str]:
    return dict(
        zip(quarantine["item_id"].to_pylist(), quarantine["reason"].to_pylist(), strict=True)
    )


def notes(row: dict) -> dict:
    return json.loads(row["annotations"])


# ------------------------------------------------------------------------------------ MRHal


def test_an_mrhal_dialogue_becomes_one_item_with_every_round(tmp_path: Path) -> None:
    path = write_json(tmp_path / "mrhal" / "eval_gt.json", [mrhal_record(7, source="coco")])
    items, quarantine = read_benchmark("mrhal", str(path), str(tmp_path / "images"))
    assert items.schema == ITEMS and quarantine.schema == QUARANTINE
    assert quarantine.num_rows == 0
    (row,) = items.to_pylist()
    assert {k: v for k, v in row.items() if k != "annotations"} == {
        "item_id": "mrhal/7",
        "split": "mrhal",
        "task": "dialogue",
        "image": None,
        "image_uri": f"{tmp_path}/images/000000000007.jpg",
        "rounds": [
            {"question": q, "answer": a} for q, a in zip(QUESTIONS, REFERENCES, strict=True)
        ],
    }
    assert notes(row) == {
        "benchmark": "mrhal",
        "image_content": ["dog", "frisbee", "grass"],
        "label": "attribute",
        "rounds": [{"type": "attribute"}] * 3,
        "extra": {"source": "coco"},
    }


def test_mrhal_images_default_to_the_files_folder_and_absolute_paths_stay(tmp_path: Path) -> None:
    records = [mrhal_record(1), mrhal_record(2, image="/data/coco/2.jpg")]
    path = write_json(tmp_path / "bench" / "eval_gt.json", records)
    items, _ = read_benchmark("mrhal", str(path), None)
    uris = items["image_uri"].to_pylist()
    assert uris == [f"{tmp_path}/bench/000000000001.jpg", "/data/coco/2.jpg"]


def test_bad_mrhal_records_are_quarantined_with_their_reason(tmp_path: Path) -> None:
    bad_turn = turns(QUESTIONS, REFERENCES)
    bad_turn[3] = "a string, not a turn"  # type: ignore[call-overload]
    records = [
        mrhal_record(1),
        {k: v for k, v in mrhal_record(2).items() if k != "revised"},
        mrhal_record(3, revised=turns(QUESTIONS, REFERENCES)[:5]),
        mrhal_record(4, image_content="dog, frisbee"),
        mrhal_record(5, revised=bad_turn),
        mrhal_record(6, image=""),
        mrhal_record(7, label=["attribute"]),  # one type for three rounds
        mrhal_record(1),
        "not an object",
    ]
    path = write_json(tmp_path / "eval_gt.json", records)
    items, quarantine = read_benchmark("mrhal", str(path), None)
    assert items["item_id"].to_pylist() == ["mrhal/1"]
    assert set(quarantine["stage"].to_pylist()) == {"evaluate"}
    found = reasons(quarantine)
    assert found == {
        "mrhal/2": "record lacks 'revised' (record 1 of eval_gt.json)",
        "mrhal/3": "revised has an odd number of turns (5): the last has no reference "
        "(record 2 of eval_gt.json)",
        "mrhal/4": "image_content is not a list of strings (record 3 of eval_gt.json)",
        "mrhal/5": "revised turn 3 lacks 'from' or a text 'value' (record 4 of eval_gt.json)",
        "mrhal/6": "'image' is empty or not a path: no image to answer about "
        "(record 5 of eval_gt.json)",
        "mrhal/7": "label is neither a question type nor a list of 3 types "
        "(record 6 of eval_gt.json)",
        "mrhal/1": "duplicate item_id 'mrhal/1' (first in record 0 of eval_gt.json) "
        "(record 7 of eval_gt.json)",
        None: "the record is a str, not an object (record 8 of eval_gt.json)",
    }
    first_bad = json.loads(quarantine["row_json"][0].as_py())
    assert first_bad == {k: v for k, v in mrhal_record(2).items() if k != "revised"}


def test_the_record_function_is_pure_and_names_what_is_missing() -> None:
    row = benchmark_record_to_row("mrhal", mrhal_record(3), None)
    assert row["image_uri"] == "000000000003.jpg"  # no root: kept as written
    assert row["rounds"][0]["question"] == QUESTIONS[0]  # "<image>\n" stripped
    with pytest.raises(BadRow, match="record lacks 'image_content'"):
        benchmark_record_to_row("mrhal", {"id": 1, "image": "a.jpg", "revised": []}, None)
    with pytest.raises(BadRow, match="revised is not a non-empty list of turns"):
        benchmark_record_to_row("mrhal", mrhal_record(1, revised=[]), None)
    per_round = ["attribute", "counting", "existence"]
    row = benchmark_record_to_row("mrhal", mrhal_record(4, label=per_round), None)
    assert [r["type"] for r in notes(row)["rounds"]] == per_round


# ------------------------------------------------------------------------------------ MMHal


def mmhal_record(**changes: object) -> dict:
    record = {
        "question_type": "attribute",
        "question_topic": "animal",
        "image_id": "cf6c4ac8b0da5ec0",
        "image_src": "https://c5.staticflickr.com/6/5455/8944458009_1a0a82ce07_o.jpg",
        "image_content": ["Lizard", "Wall"],
        "question": "What colour is the lizard?",
        "gt_answer": "The lizard is green.",
        "model_answer": "",
    }
    return {**record, **changes}


def test_mmhal_records_with_and_without_id(tmp_path: Path) -> None:
    records = [
        mmhal_record(),  # the public file: no id, a URL image_src
        mmhal_record(id="q-5", image_src="pics/lizard.png", question_type="counting"),
        mmhal_record(image_src=None),  # image_id names the file
        mmhal_record(image_src="s3://bench/mmhal/x.jpg"),
    ]
    path = write_json(tmp_path / "mmhal" / "response_template.json", records)
    items, quarantine = read_benchmark("mmhal", str(path), str(tmp_path / "images"))
    assert quarantine.num_rows == 0
    rows = items.to_pylist()
    assert [r["item_id"] for r in rows] == ["mmhal/0", "mmhal/q-5", "mmhal/2", "mmhal/3"]
    assert [r["image_uri"] for r in rows] == [
        f"{tmp_path}/images/8944458009_1a0a82ce07_o.jpg",
        f"{tmp_path}/images/pics/lizard.png",
        f"{tmp_path}/images/cf6c4ac8b0da5ec0.jpg",
        "s3://bench/mmhal/x.jpg",
    ]
    assert {(r["split"], r["task"]) for r in rows} == {("mmhal", "mmhal")}
    assert rows[0]["rounds"] == [
        {"question": "What colour is the lizard?", "answer": "The lizard is green."}
    ]
    assert notes(rows[0]) == {
        "benchmark": "mmhal",
        "image_content": ["Lizard", "Wall"],
        "question_type": "attribute",
        "question_topic": "animal",
        "rounds": [{"type": "attribute"}],
        "extra": {
            "image_id": "cf6c4ac8b0da5ec0",
            "image_src": "https://c5.staticflickr.com/6/5455/8944458009_1a0a82ce07_o.jpg",
            "model_answer": "",
        },
    }
    assert notes(rows[1])["rounds"] == [{"type": "counting"}]


def test_bad_mmhal_records_are_quarantined_by_position(tmp_path: Path) -> None:
    records = [
        mmhal_record(),
        {k: v for k, v in mmhal_record().items() if k != "gt_answer"},
        mmhal_record(image_src=None, image_id=None),
        mmhal_record(image_content=[1, 2]),
        mmhal_record(question=""),
    ]
    path = write_json(tmp_path / "mmhal.json", records)
    items, quarantine = read_benchmark("mmhal", str(path), None)
    assert items["item_id"].to_pylist() == ["mmhal/0"]
    assert reasons(quarantine) == {
        "mmhal/1": "record lacks 'gt_answer' (record 1 of mmhal.json)",
        "mmhal/2": "record lacks 'image_src' and 'image_id': no image to answer about "
        "(record 2 of mmhal.json)",
        "mmhal/3": "image_content is not a list of strings (record 3 of mmhal.json)",
        "mmhal/4": "round 0 has an empty question (record 4 of mmhal.json)",
    }


# ------------------------------------------------------------------------------------- POPE


def pope_label(qid: int, image: str, obj: str, label: str) -> dict:
    text = f"Is there a {obj} in the image?"
    return {"question_id": qid, "image": image, "text": text, "label": label}


RANDOM = [
    pope_label(1, "COCO_val2014_000000016631.jpg", "person", "yes"),
    pope_label(2, "COCO_val2014_000000016631.jpg", "dining table", "no"),
]
POPULAR = [
    pope_label(1, "COCO_val2014_000000016631.jpg", "person", "yes"),
    pope_label(2, "COCO_val2014_000000016631.jpg", "chair", "no"),
]


def pope_folder(folder: Path) -> Path:
    write_jsonl(folder / "coco_pope_random.json", RANDOM)
    write_jsonl(folder / "coco_pope_popular.json", POPULAR)
    (folder / "README.md").write_text("not a label file")
    return folder


def test_a_folder_of_pope_label_files_is_its_own_questions(tmp_path: Path) -> None:
    folder = pope_folder(tmp_path / "pope")
    items, quarantine = read_benchmark("pope", str(folder), str(tmp_path / "val2014"))
    assert quarantine.num_rows == 0
    rows = {r["item_id"]: r for r in items.to_pylist()}
    assert sorted(rows) == ["pope/popular/1", "pope/popular/2", "pope/random/1", "pope/random/2"]
    table = rows["pope/random/2"]
    assert {k: v for k, v in table.items() if k != "annotations"} == {
        "item_id": "pope/random/2",
        "split": "pope_random",
        "task": "existence",
        "image": None,
        "image_uri": f"{tmp_path}/val2014/COCO_val2014_000000016631.jpg",
        "rounds": [{"question": "Is there a dining table in the image?", "answer": "no"}],
    }
    assert notes(table) == {
        "benchmark": "pope",
        "rounds": [
            {"type": "existence", "label": "no", "category": "random", "object": "dining table"}
        ],
        "extra": {},
    }
    assert rows["pope/popular/1"]["split"] == "pope_popular"
    assert notes(rows["pope/popular/1"])["rounds"][0]["label"] == "yes"


def test_bad_pope_records_are_quarantined_and_the_rest_read(tmp_path: Path) -> None:
    records = [
        *RANDOM,
        {**pope_label(3, "a.jpg", "cat", "maybe")},
        {"question_id": 4, "image": "a.jpg", "text": "Does the picture show a cat?", "label": "No"},
        {"question_id": 5, "image": "a.jpg", "label": "yes"},
    ]
    path = write_jsonl(tmp_path / "coco_pope_adversarial.json", records, ("{not json",))
    items, quarantine = read_benchmark("pope", str(path), None)
    assert items["item_id"].to_pylist() == [
        "pope/adversarial/1",
        "pope/adversarial/2",
        "pope/adversarial/4",
    ]
    unparsed = items.to_pylist()[2]
    assert unparsed["rounds"][0]["answer"] == "no"  # labels are read case-blind
    assert notes(unparsed)["rounds"][0]["object"] is None  # not "Is there a X in the image?"
    found = reasons(quarantine)
    assert found["pope/adversarial/3"] == (
        "label is 'maybe', not 'yes' or 'no' (record 2 of coco_pope_adversarial.json)"
    )
    assert found["pope/adversarial/5"].startswith("record lacks 'text'")
    assert found[None].startswith("line 6 is not JSON")
    assert json.loads(quarantine["row_json"][2].as_py()) == {"line": 6, "text": "{not json"}


def test_pope_questions_are_joined_with_their_labels(tmp_path: Path) -> None:
    labels = pope_folder(tmp_path / "labels")
    suffix = "\nAnswer the question using a single word or phrase."
    questions = [
        # LLaVA's questions: the ids run across categories, the text carries an instruction
        {"question_id": 3001, "image": RANDOM[1]["image"], "text": RANDOM[1]["text"] + suffix,
         "category": "random"},
        {"question_id": 2, "image": POPULAR[1]["image"], "text": POPULAR[1]["text"],
         "category": "popular"},
        {"question_id": 2, "text": "Is there a chair in the image?"},  # category from the label
        {"question_id": 1, "image": RANDOM[0]["image"], "text": RANDOM[0]["text"]},  # in both
        {"question_id": 999, "image": "b.jpg", "text": "Is there a cow in the image?",
         "category": "random"},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "llava_pope_test.jsonl", questions)
    items, quarantine = read_benchmark("pope", str(path), None, labels=str(labels))
    rows = items.to_pylist()
    assert [r["item_id"] for r in rows] == ["pope/random/3001", "pope/popular/2"]
    assert rows[0]["rounds"] == [{"question": questions[0]["text"], "answer": "no"}]
    assert notes(rows[0])["rounds"][0]["object"] == "dining table"
    found = reasons(quarantine)
    assert found["pope/popular/2"].startswith("duplicate item_id 'pope/popular/2'")
    assert found["pope/random/999"] == (
        "no label for question_id 999 in category 'random' (record 4 of llava_pope_test.jsonl)"
    )
    assert found[None].startswith("question_id 1 matches labels of several categories")
    unlabelled = json.loads(quarantine.to_pylist()[-1]["row_json"])
    assert unlabelled == questions[4]  # the question as it was, not the failed join


def test_pope_on_s3(s3_endpoint: str, s3_bucket: str) -> None:
    storage = StorageSpec(run_dir="unused", endpoint_url=s3_endpoint)
    folder = open_location(f"s3://{s3_bucket}/pope", storage)
    folder.join("coco_pope_random.json").write_bytes_atomic(
        "".join(json.dumps(r) + "\n" for r in RANDOM).encode()
    )
    items, quarantine = read_benchmark("pope", folder.uri, None, storage)
    assert quarantine.num_rows == 0
    assert (
        items["image_uri"].to_pylist()
        == [f"s3://{s3_bucket}/pope/COCO_val2014_000000016631.jpg"] * 2
    )


# ------------------------------------------------------------------------------ whole files


def test_files_that_cannot_be_read_are_refused_by_path(tmp_path: Path) -> None:
    broken = tmp_path / "eval_gt.json"
    broken.write_text("<html>not json</html>\n")
    with pytest.raises(DataError, match=f"{re.escape(str(broken))} is not JSON or JSON lines"):
        read_benchmark("mrhal", str(broken), None)
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path}/missing.json does not exist")
    ) as missing:
        read_benchmark("mmhal", str(tmp_path / "missing.json"), None)
    assert missing.value.hint == "fix evaluation.files.mmhal.path"
    obj = tmp_path / "object.json"
    obj.write_text(json.dumps({"id": 1}, indent=2))
    with pytest.raises(DataError, match="holds a JSON dict, not a list of records"):
        read_benchmark("mrhal", str(obj), None)
    pope = write_jsonl(tmp_path / "coco_pope_random.json", RANDOM)
    with pytest.raises(DataError, match="is not mrhal: no record has the keys \\['revised'\\]"):
        read_benchmark("mrhal", str(pope), None)
    with pytest.raises(DataError, match="is a folder"):
        read_benchmark("mrhal", str(tmp_path), None)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"holds no coco_pope_<category>\.json files"):
        read_benchmark("pope", str(tmp_path / "images"), None)
    with pytest.raises(DataError, match="unknown benchmark 'chair'"):
        read_benchmark("chair", str(pope), None)
