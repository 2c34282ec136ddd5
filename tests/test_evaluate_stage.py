"""The evaluate stage on a tiny world: answers on actor pools, the judge pool, the metrics."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import tiny_world_spec
from PIL import Image

from amp_ray.errors import SpecError
from amp_ray.evaluation.judge_pool import JudgeRater
from amp_ray.evaluation.scores import mmhal_metrics, mrhal_metrics
from amp_ray.pipeline import run_job
from amp_ray.report.document import write_report
from amp_ray.spec import validate_spec
from amp_ray.spec.alignment import JudgeSpec
from amp_ray.storage import RunDir
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import ANSWERS
from amp_ray.world.metrics import pope_metrics


def test_judge_pool_records_an_item_it_cannot_rate_with_its_reason() -> None:
    row = {
        "item_id": "x/1",
        "model": "m",
        "split": "mrhal",
        "task": "dialogue",
        "questions": ["describe the image ."],
        "references": ["a red circle ."],
        "answers": ["a red circle ."],
        "finished": [True],
        "annotations": None,
    }
    out = JudgeRater(JudgeSpec())(pa.Table.from_pylist([row], schema=ANSWERS)).to_pylist()
    assert out[0]["ratings"] == [] and out[0]["benchmark"] == "mrhal"
    assert "ground_truth judge cannot rate" in out[0][QUARANTINE_REASON]


@pytest.mark.usefixtures("ray_session")
def test_evaluate_stage_on_the_world(tmp_path: Path, tiny_dir: str) -> None:
    raw = tiny_world_spec(str(tmp_path / "run"), stages=["data", "evaluate", "report"])
    raw["models"] = {"tiny": {"path": tiny_dir}}
    raw["evaluation"] = {
        "decoding": {"max_new_tokens": 6, "num_beams": 2, "do_sample": False},
        "actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 32},
    }
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    run = RunDir.open(str(tmp_path / "run"))
    answers = run.dataset("evaluate", "answers").read_table().to_pylist()
    tasks = sorted({a["task"] for a in answers})
    assert tasks == ["caption", "dialogue", "existence", "mmhal"]
    # 12 eval images: a caption, 6 POPE questions and a dialogue each; mmhal: its 2nd question
    assert len(answers) == 12 * 9
    dialogues = {a["item_id"]: a for a in answers if a["task"] == "dialogue"}
    assert all(len(a["answers"]) == len(a["questions"]) >= 2 for a in dialogues.values())
    judgments = run.dataset("evaluate", "judgments").read_table().to_pylist()
    assert len(judgments) == 24 and {j["judge"] for j in judgments} == {"ground_truth"}
    metrics = run.dataset("evaluate", "metrics").read_table().to_pylist()
    value = {(m["benchmark"], m["split"], m["metric"]): m["value"] for m in metrics}
    for split in ("eval_iid", "eval_bias_probe", "eval_control"):
        rated = [j for j in judgments if j["split"] == split]
        expected = mrhal_metrics([j["ratings"] for j in rated if j["benchmark"] == "mrhal"])
        for name, number in expected.items():
            assert value[("mrhal", split, name)] == pytest.approx(number)
        single = [j["ratings"][0] for j in rated if j["benchmark"] == "mmhal"]
        assert value[("mmhal", split, "score")] == pytest.approx(mmhal_metrics(single)["score"])
        for benchmark in ("chair", "pope", "mrhal", "mmhal"):
            assert value[(benchmark, split, "failed")] == 0
        assert ("pope_adversarial", split, "f1") in value and ("chair", split, "recall") in value
    assert any(line.startswith("[evaluate] rows in 108, out 108, quarantined 0") for line in lines)
    # the job ends with the report stage: the headline table and where the report is
    assert lines[-1].strip().startswith("report: ") and lines[-1].strip().endswith("report.html")
    report = tmp_path / "run" / "report"
    assert (report / "report.md").exists() and list(report.rglob("*.png"))
    assert "mrhal" in (report / "report.md").read_text()


class _RubricStub(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge: rates every MRHal round 4 and every MMHal answer 5, and
    answers nonsense when the prompt holds the word "nonsense"."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        rounds = prompt.count("### Question")
        if "nonsense" in prompt:
            text = "I would rather not say."
        elif prompt.startswith("Release judge"):  # the prompt file's template
            text = "rating: 6"
        elif "Rounds of Conversations" in prompt:
            text = "Ratings: [" + ", ".join(["4"] * rounds) + "]"
        else:
            text = "Rating: 5"
        message = {"role": "assistant", "content": text}
        data = json.dumps(
            {
                "id": "stub",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RubricStub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _benchmark_files(folder: Path) -> None:
    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="PNG")
    (folder / "good.png").write_bytes(image.getvalue())
    (folder / "broken.png").write_bytes(b"not an image")
    turns = [
        {"from": "human", "value": "<image>\ndescribe the image ."},
        {"from": "gpt", "value": "a red square ."},
        {"from": "human", "value": "how many objects are there ?"},
        {"from": "gpt", "value": "there is one object ."},
    ]
    mrhal = [
        {"id": 1, "image": "good.png", "image_content": ["square"], "label": "description",
         "revised": turns},
        {"id": 2, "image": "broken.png", "image_content": ["square"], "label": "counting",
         "revised": turns},
        {"id": 3, "image": "good.png", "image_content": ["square"], "label": "counting"},
    ]  # fmt: skip
    mmhal = [
        {"question_type": "attribute", "question_topic": "t", "image_id": "good.png",
         "image_content": ["square"], "question": "what colour is the square ?",
         "gt_answer": "the square is red ."},
        {"question_type": "counting", "question_topic": "t", "image_id": "good.png",
         "image_content": ["square"], "question": "nonsense ?", "gt_answer": "one ."},
    ]  # fmt: skip
    (folder / "eval_gt.json").write_text(json.dumps(mrhal))
    (folder / "mmhal.json").write_text(json.dumps(mmhal))
    pope = folder / "pope"
    pope.mkdir()
    lines = [
        {"question_id": 1, "image": "good.png", "text": "is there a square ?", "label": "yes"},
        {"question_id": 2, "image": "good.png", "text": "is there a circle ?", "label": "no"},
    ]
    (pope / "coco_pope_random.json").write_text("\n".join(json.dumps(x) for x in lines))


@pytest.mark.usefixtures("ray_session")
def test_evaluate_stage_on_benchmark_files_records_failures(
    tmp_path: Path, tiny_dir: str, judge_url: str
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    _benchmark_files(files)
    # MMHal-Bench's judge from the release's script (its positional template), MRHal's built in
    script = 'template = """Release judge.\n{}\n{}\n{}\n{}"""\nprint("not run")\n'
    (files / "eval_gpt_mmhal.py").write_text(script)
    raw = {
        "name": "files",
        "stages": ["evaluate"],
        "storage": {"run_dir": str(tmp_path / "run")},
        "models": {"tiny": {"path": tiny_dir}},
        "evaluation": {
            "benchmarks": ["mrhal", "mmhal", "pope"],
            "files": {
                "mrhal": {"path": str(files / "eval_gt.json"), "image_root": str(files)},
                "mmhal": {"path": str(files / "mmhal.json"), "image_root": str(files)},
                "pope": {"path": str(files / "pope"), "image_root": str(files)},
            },
            "decoding": {"max_new_tokens": 4, "num_beams": 1, "do_sample": False},
            "judge": {
                "kind": "openai",
                "base_url": judge_url,
                "model": "stub",
                "max_retries": 1,
                "timeout_s": 10,
                "requests_per_minute": 6000,
                "cache_dir": str(tmp_path / "cache"),
                "prompt_file": {"mmhal": str(files / "eval_gpt_mmhal.py")},
            },
            "actors": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 8},
        },
    }
    lines: list[str] = []
    run_job(validate_spec(raw), echo=lines.append)
    run = RunDir.open(str(tmp_path / "run"))
    reasons = run.dataset("evaluate", "quarantine").read_table().to_pylist()
    why = {row["item_id"]: row["reason"] for row in reasons}
    assert set(why) == {"mrhal/2", "mrhal/3", "mmhal/1"}
    assert "image cannot be read" in why["mrhal/2"]
    assert "revised" in why["mrhal/3"]
    assert "could not parse" in why["mmhal/1"] or "no usable reply" in why["mmhal/1"]
    metrics = run.dataset("evaluate", "metrics").read_table().to_pylist()
    value = {(m["benchmark"], m["split"], m["metric"]): (m["value"], m["count"]) for m in metrics}
    # the stub rates every round 4 and every MMHal answer 5; failed items are counted apart
    assert value[("mrhal", "mrhal", "score_cumulative")] == (4.0, 1)
    assert value[("mrhal", "mrhal", "hallucination_rate_cumulative")] == (0.0, 1)
    assert value[("mrhal", "mrhal", "failed")][0] == 1
    assert value[("mmhal", "mmhal", "score")] == (6.0, 1)
    assert value[("mmhal", "mmhal", "score@attribute")] == (6.0, 1)
    assert value[("mmhal", "mmhal", "failed")][0] == 1
    answers = run.dataset("evaluate", "answers").read_table().to_pylist()
    pope = [a for a in answers if a["task"] == "existence"]
    expected = pope_metrics([a["answers"][0] for a in pope], [a["references"][0] for a in pope])
    assert value[("pope", "pope_random", "f1")] == (pytest.approx(expected["f1"]), 2)
    # every judgment and the report say which prompt rated it
    judges = set(run.dataset("evaluate", "judgments").read_table()["judge"].to_pylist())
    (judge,) = judges
    assert re.fullmatch(
        r"openai:stub \(prompts mmhal eval_gpt_mmhal\.py@[0-9a-f]{12}, mrhal amp-ray-rubric-1\)",
        judge,
    )
    report = write_report([str(tmp_path / "run")], str(tmp_path / "report"))
    assert f"judged by {judge}" in Path(report.markdown).read_text()
    # one cached judgment per judged input (failures are not cached)
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 2


def test_models_default_to_every_model_the_run_made(tmp_path: Path) -> None:
    from amp_ray.stages.evaluate import EvaluateStage

    raw = tiny_world_spec(str(tmp_path / "run"), stages=["data", "sft", "train", "evaluate"])
    raw["models"] = {"base": {"tiny": {}}}
    raw["sft"] = {"runs": {"expert": {"init": "base", "steps": 1}}}
    raw["training"] = {"policy": "expert", "name": "mdpo"}
    spec = validate_spec(raw)
    run = RunDir.open(str(tmp_path / "run"))
    runs = run.writer("train", "runs", "training_runs")
    runs.write_table(
        pa.Table.from_pylist(
            [{"model": "mdpo", "arm": "mdpo", "seed": 0}, {"model": "dpo-seed1", "arm": "dpo"}],
            schema=runs.schema,
        )
    )
    runs.commit()
    models = EvaluateStage(spec, run).models()
    assert list(models) == ["base", "expert", "mdpo", "dpo-seed1"]
    assert models["dpo-seed1"] == run.location.join("train", "models", "dpo-seed1").uri
    assert models["expert"] == run.location.join("sft", "models", "expert").uri
    chosen = validate_spec({**raw, "evaluation": {"models": ["dpo-seed1", "expert"]}})
    assert list(EvaluateStage(chosen, run).models()) == ["dpo-seed1", "expert"]
    unknown = validate_spec({**raw, "evaluation": {"models": ["dpo-seed7"]}})
    with pytest.raises(SpecError, match="dpo-seed7"):
        EvaluateStage(unknown, run).models()


def test_a_missing_judge_key_stops_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMP_RAY_TEST_JUDGE_KEY", raising=False)
    raw = tiny_world_spec(str(tmp_path / "run"), stages=["data", "evaluate"])
    raw["models"] = {"base": {"path": str(tmp_path / "model")}}
    raw["evaluation"] = {
        "judge": {
            "kind": "openai",
            "base_url": "https://judge.example.com/v1",
            "model": "m",
            "api_key_env": "AMP_RAY_TEST_JUDGE_KEY",
        }
    }
    with pytest.raises(SpecError, match="AMP_RAY_TEST_JUDGE_KEY"):
        run_job(validate_spec(raw), echo=lambda line: None)
    assert not (tmp_path / "run" / "data").exists()
