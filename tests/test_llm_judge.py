"""The LLM judge against a scripted OpenAI-compatible server on loopback, and its reply parsing."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from amp_ray.errors import SpecError
from amp_ray.evaluation.judge_prompt import read_prompt_files
from amp_ray.evaluation.judging import Judge, JudgeFailure, JudgeRequest
from amp_ray.evaluation.llm_judge import MinInterval, OpenAIJudge, default_cache_dir
from amp_ray.evaluation.rubric import (
    PROMPT_VERSION,
    build_messages,
    parse_mmhal_rating,
    parse_mrhal_ratings,
)
from amp_ray.spec.alignment import JudgeSpec

KEY_ENV = "AMP_RAY_TEST_JUDGE_KEY"
SECRET = "sk-test-SECRET-4711"
GOOD = "Round 1 is accurate; round 2 invents a car.\nHallucination: [No, Yes]\nRatings: [5, 1]"
MALFORMED = "I think both answers are fine."
MMHAL_GOOD = "The answer is correct but brief.\nRating: 4, somewhat informative, no hallucination"


# --- a scripted /v1/chat/completions server ----------------------------------------------------


@dataclass
class Stub:
    """Answers each request with the next scripted step; the last step repeats."""

    url: str = ""
    script: list[tuple[str, object]] = field(default_factory=list)
    seen: list[dict] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self, record: dict) -> tuple[str, object]:
        with self.lock:
            self.seen.append(record)
            index = min(len(self.seen), len(self.script)) - 1
            return self.script[index]


def completion(text: str, model: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def handler_for(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output quiet
            pass

        def send_json(self, status: int, body: dict, headers: dict[str, str] = {}) -> None:  # noqa: B006
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization", "")
            kind, value = stub.next_step({"path": self.path, "auth": auth, "body": body})
            try:
                if kind == "sleep":  # longer than the client's timeout; woken at teardown
                    stub.stop.wait(float(value))  # type: ignore[arg-type]
                    kind, value = "reply", GOOD
                if kind == "status":
                    error = {"error": {"message": "stub failure", "type": "server_error"}}
                    self.send_json(int(value), error, {"retry-after-ms": "10"})  # type: ignore[call-overload]
                else:
                    self.send_json(200, completion(str(value), body["model"]))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    server_stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(server_stub))
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server_stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server_stub
    server_stub.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)  # loopback must not go through a proxy


def judge_spec(url: str, **overrides: object) -> JudgeSpec:
    values = {
        "kind": "openai",
        "base_url": url,
        "model": "stub-judge",
        "api_key_env": KEY_ENV,
        "max_retries": 1,
        "requests_per_minute": 60_000,
        "timeout_s": 5.0,
    }
    return JudgeSpec(**{**values, **overrides})


def mrhal_request(answer: str = "Yes, a car is parked by the house.") -> JudgeRequest:
    return JudgeRequest(
        benchmark="mrhal",
        image_content=("House", "Tree", "Person"),
        questions=("<image>\nWhat is the person doing?", "Is there a car?"),
        references=("The person is watering the tree.", "No, there is no car."),
        answers=("The person is watering a tree.", answer),
    )


def mmhal_request() -> JudgeRequest:
    return JudgeRequest(
        benchmark="mmhal",
        image_content=("Cat",),
        questions=("What color is the cat?",),
        references=("The cat is black.",),
        answers=("It is black.",),
        question_types=("attribute",),
    )


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.exists() else []


# --- the judge over HTTP ----------------------------------------------------------------------


def test_good_reply_is_parsed_and_the_key_sent_only_to_the_server(
    stub: Stub, tmp_path: Path
) -> None:
    stub.script = [("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path / "cache"))
    assert isinstance(judge, Judge) and judge.name == "openai:stub-judge"
    judgment = judge.judge(mrhal_request())
    assert judgment.ratings == (5, 1) and judgment.response == GOOD
    (seen,) = stub.seen
    assert seen["path"] == "/v1/chat/completions"
    assert seen["auth"] == f"Bearer {SECRET}"
    assert seen["body"]["model"] == "stub-judge" and seen["body"]["temperature"] == 0
    prompt = seen["body"]["messages"][0]["content"]
    assert "What is the person doing?" in prompt and "<image>" not in prompt
    assert SECRET not in repr(judge)
    for path in cache_files(tmp_path / "cache"):
        assert SECRET not in path.read_text()


def test_a_malformed_reply_is_asked_again(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", MALFORMED), ("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    assert judge.judge(mrhal_request()).ratings == (5, 1)
    assert len(stub.seen) == 2


def test_always_malformed_fails_saying_it_could_not_parse(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", MALFORMED)]
    judge = OpenAIJudge(judge_spec(stub.url, max_retries=2), cache_dir=str(tmp_path))
    with pytest.raises(JudgeFailure, match="could not parse") as failure:
        judge.judge(mrhal_request())
    assert len(stub.seen) == 3  # one ask and two re-asks
    assert "3 tries" in str(failure.value) and "both answers are fine" in str(failure.value)
    assert SECRET not in str(failure.value)
    assert cache_files(tmp_path) == []  # a failure is not cached: it may be transient


def test_http_500_is_retried_by_the_client(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("status", 500), ("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    assert judge.judge(mrhal_request()).ratings == (5, 1)
    assert len(stub.seen) == 2


def test_http_errors_after_retries_name_the_endpoint(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("status", 503)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    with pytest.raises(JudgeFailure, match="HTTP 503") as failure:
        judge.judge(mrhal_request())
    assert stub.url in str(failure.value) and SECRET not in str(failure.value)
    assert len(stub.seen) == 2


def test_a_timeout_fails_naming_the_endpoint(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("sleep", 10.0)]
    judge = OpenAIJudge(judge_spec(stub.url, timeout_s=0.3), cache_dir=str(tmp_path))
    with pytest.raises(JudgeFailure, match="timed out") as failure:
        judge.judge(mrhal_request())
    assert stub.url in str(failure.value) and SECRET not in str(failure.value)
    assert len(stub.seen) == 2  # the client retried the timeout once


def test_cache_hits_send_no_request_across_instances(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", GOOD)]
    cache = tmp_path / "cache"
    first = OpenAIJudge(judge_spec(stub.url), cache_dir=str(cache))
    assert first.judge(mrhal_request()).ratings == (5, 1)
    assert first.judge(mrhal_request()).ratings == (5, 1)
    assert len(stub.seen) == 1
    again = OpenAIJudge(judge_spec(stub.url), cache_dir=str(cache)).judge(mrhal_request())
    assert again.ratings == (5, 1) and again.response == GOOD
    assert len(stub.seen) == 1
    (entry,) = cache_files(cache)
    assert entry.name == f"{first.cache.key(mrhal_request())}.json" and len(entry.stem) == 64
    record = json.loads(entry.read_text())
    assert record["prompt_version"] == PROMPT_VERSION and SECRET not in entry.read_text()
    first.judge(mrhal_request(answer="No car."))  # a different input is a miss
    assert len(stub.seen) == 2 and len(cache_files(cache)) == 2
    other_model = OpenAIJudge(judge_spec(stub.url, model="other"), cache_dir=str(cache))
    other_model.judge(mrhal_request())  # the judge model is part of the key
    assert len(stub.seen) == 3


def test_a_damaged_cache_entry_is_judged_again(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    tmp_path.mkdir(exist_ok=True)
    judge.cache.path(mrhal_request()).write_text("{not json")
    assert judge.judge(mrhal_request()).ratings == (5, 1)
    assert len(stub.seen) == 1
    assert json.loads(judge.cache.path(mrhal_request()).read_text())["ratings"] == [5, 1]


def test_the_cache_defaults_under_xdg_cache_home(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url))
    assert judge.cache.directory == tmp_path / "xdg" / "amp_ray" / "judge" == default_cache_dir()
    judge.judge(mrhal_request())
    assert len(cache_files(judge.cache.directory)) == 1
    spec_dir = tmp_path / "from_spec"
    assert OpenAIJudge(judge_spec(stub.url, cache_dir=str(spec_dir))).cache.directory == spec_dir


def test_an_mmhal_reply_gives_one_rating(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", MMHAL_GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    assert judge.judge(mmhal_request()).ratings == (4,)
    prompt = stub.seen[0]["body"]["messages"][0]["content"]
    assert "### Standard Human-Generated Answer\nThe cat is black." in prompt
    assert "Rating: 6, very informative with good analysis or reasoning" in prompt


def test_requests_keep_the_rate_limit(stub: Stub, tmp_path: Path) -> None:
    stub.script = [("reply", GOOD)]
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    spec = judge_spec(stub.url, requests_per_minute=120)  # one request per 0.5 s
    judge = OpenAIJudge(spec, cache_dir=str(tmp_path), clock=lambda: now[0], sleep=sleep)
    for index in range(4):
        judge.judge(mrhal_request(answer=f"answer {index}"))
    assert len(stub.seen) == 4
    assert sum(slept) == pytest.approx(3 * 0.5)


def test_min_interval_lets_time_already_passed_count() -> None:
    now = [0.0]
    slept: list[float] = []
    limit = MinInterval(1.0, clock=lambda: now[0], sleep=slept.append)
    limit.wait()
    now[0] = 0.25
    limit.wait()  # 0.75 s left of the interval
    now[0] = 5.0
    limit.wait()  # long past: no wait
    assert slept == [0.75]


def test_a_missing_key_for_a_remote_endpoint_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(SpecError, match=KEY_ENV):
        OpenAIJudge(judge_spec("https://api.example.com/v1"))


def test_a_local_endpoint_needs_no_key(
    stub: Stub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(KEY_ENV)
    stub.script = [("reply", GOOD)]
    judge = OpenAIJudge(judge_spec(stub.url), cache_dir=str(tmp_path))
    assert judge.judge(mrhal_request()).ratings == (5, 1)
    assert stub.seen[0]["auth"].startswith("Bearer ")


# --- prompts ------------------------------------------------------------------------------------


def test_the_mrhal_prompt_holds_every_round_in_order() -> None:
    (message,) = build_messages(mrhal_request())
    text = message["content"]
    assert message["role"] == "user"
    assert "### Image Contents\nHouse, Tree, Person" in text
    assert "### Rounds of Conversations\n2\n" in text
    first = text.index("What is the person doing?")
    second = text.index("Is there a car?")
    assert first < text.index("The person is watering the tree.") < second
    assert text.index("Yes, a car is parked by the house.") > second
    assert '"Ratings: [6, 3, 0, 1]"' in text


def test_bad_requests_are_refused() -> None:
    two_rounds = JudgeRequest("mmhal", ("Cat",), ("q1", "q2"), ("r1", "r2"), ("a1", "a2"))
    with pytest.raises(JudgeFailure, match="one question"):
        build_messages(two_rounds)
    uneven = JudgeRequest("mrhal", ("Cat",), ("q1", "q2"), ("r1",), ("a1", "a2"))
    with pytest.raises(JudgeFailure, match="1 references"):
        build_messages(uneven)
    with pytest.raises(ValueError, match="pope"):
        build_messages(JudgeRequest("pope", (), ("q",), ("r",), ("a",)))


# --- reply parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "rounds", "expected"),
    [
        ("Explanation...\nRatings: [6, 3, 0, 1]", 4, (6, 3, 0, 1)),
        ("Hallucination: [No, Yes]\nRatings: [5, 2]", 2, (5, 2)),
        ("Hallucination: [No, Yes, No]\nFinal: [4, 1, 6]", 3, (4, 1, 6)),  # the public rule
        ("[Yes, No]\n[3, 5]", 2, (3, 5)),
        ("**Ratings:** [5, 4]", 2, (5, 4)),
        ("**Ratings: [5,4,3]**", 3, (5, 4, 3)),
        ("ratings :\n[\n  4,\n  N/A\n]", 2, (4, 0)),
        ("RATINGS: [4.0, 5.0]", 2, (4, 5)),
        ('Ratings: ["6", "2"]', 2, (6, 2)),
        ('Output like "Ratings: [6, 3, 0, 1]". My ratings: Ratings: [2, 2, 2]', 3, (2, 2, 2)),
        ("Rating: [3]", 1, (3,)),
    ],
)
def test_parse_mrhal_ratings(reply: str, rounds: int, expected: tuple[int, ...]) -> None:
    assert parse_mrhal_ratings(reply, rounds) == expected


@pytest.mark.parametrize(
    ("reply", "rounds", "message"),
    [
        ("Ratings: [5, 4]", 3, "2 ratings for 3 rounds"),
        ("Both responses are good. Overall 5/6.", 2, "could not parse a ratings list"),
        ("Hallucination: [No, Yes]", 2, "could not parse a ratings list"),
        ("Ratings: [5, 9]", 2, "outside 0..6"),
        ("Ratings: [5, 4.5]", 2, "could not parse rating '4.5'"),
        ("Ratings: [good, bad]", 2, "could not parse rating 'good'"),
    ],
)
def test_parse_mrhal_ratings_failures(reply: str, rounds: int, message: str) -> None:
    with pytest.raises(JudgeFailure, match=message) as failure:
        parse_mrhal_ratings(reply, rounds)
    assert repr(" ".join(reply.split()))[:20] in str(failure.value)  # quotes the reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The response is right.\nRating: 4, somewhat informative, no hallucination", 4),
        ("**Rating:** 6", 6),
        ("rating:0", 0),
        ("Rating: 5\n\nTo restate: Rating: 5", 5),
        ("RATING : 3.0", 3),
    ],
)
def test_parse_mmhal_rating(reply: str, expected: int) -> None:
    assert parse_mmhal_rating(reply) == expected


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("It is a good answer.", "no rating"),
        ("Rating: 6 or maybe Rating: 5", r"several ratings \[5, 6\]"),
        ("Rating: 8", "outside 0..6"),
        ("Ratings: [4]", "no rating"),
    ],
)
def test_parse_mmhal_rating_failures(reply: str, message: str) -> None:
    with pytest.raises(JudgeFailure, match=message):
        parse_mmhal_rating(reply)


# --- prompts from the benchmark release's files ------------------------------------------------

# The layout of a published judge script: a module-level `template` filled positionally.
RELEASE_SCRIPT = '''import openai
template = """Judge this answer. Rate 0-6 and end with "rating: s".

### Image Contents
{}

### Question
{}

### Standard Human-Generated Answer
{}

### LMM Response to Evaluate
{}
"""

if __name__ == "__main__":
    raise SystemExit("never run by amp-ray")
'''


def test_a_release_script_template_is_what_the_judge_sends(stub: Stub, tmp_path: Path) -> None:
    script = tmp_path / "eval_gpt_mmhal.py"
    script.write_text(RELEASE_SCRIPT)
    spec = judge_spec(stub.url, prompt_file={"mmhal": str(script)})
    templates = read_prompt_files(spec)
    stub.script = [("reply", MMHAL_GOOD)]
    cache = tmp_path / "cache"
    judge = OpenAIJudge(spec, cache_dir=str(cache), templates=templates)
    assert judge.judge(mmhal_request()).ratings == (4,)
    sent = stub.seen[0]["body"]["messages"][0]["content"]
    assert sent == (
        'Judge this answer. Rate 0-6 and end with "rating: s".\n\n### Image Contents\nCat\n\n'
        "### Question\nWhat color is the cat?\n\n### Standard Human-Generated Answer\n"
        "The cat is black.\n\n### LMM Response to Evaluate\nIt is black.\n"
    )
    version = templates["mmhal"].version
    assert re.fullmatch(r"eval_gpt_mmhal\.py@[0-9a-f]{12}", version)
    assert judge.prompt == f"prompts mmhal {version}, mrhal {PROMPT_VERSION}"
    (entry,) = cache_files(cache)
    assert json.loads(entry.read_text())["prompt_version"] == version
    # the built-in prompt's judgment of the same item is another cache entry, not a hit
    OpenAIJudge(judge_spec(stub.url), cache_dir=str(cache)).judge(mmhal_request())
    assert len(stub.seen) == 2 and len(cache_files(cache)) == 2
    # an MRHal item still gets the built-in prompt
    stub.script = [("reply", GOOD)]
    judge.judge(mrhal_request())
    assert "Rounds of Conversations" in stub.seen[-1]["body"]["messages"][0]["content"]


def test_a_named_template_file_fills_every_round(tmp_path: Path) -> None:
    text = tmp_path / "mrhal.txt"
    text.write_text("Objects: {image_content}\nRounds: {num_rounds}\n{rounds}\nRatings: [...]")
    template = read_prompt_files(JudgeSpec(**{**SPEC_OPENAI, "prompt_file": {"mrhal": str(text)}}))
    (message,) = build_messages(mrhal_request(), template)
    content = message["content"]
    assert content.startswith("Objects: House, Tree, Person\nRounds: 2\n")
    first, second = content.index("What is the person doing?"), content.index("Is there a car?")
    assert 0 < first < second and "<image>" not in content


SPEC_OPENAI = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.txt", "only {} {}", "has 2 positional placeholders; a mmhal template has 4"),
        ("t.txt", "{image_content} {question}", "has no {answer}"),
        ("t.txt", "{answer} {gt_answer}", "unknown placeholders ['gt_answer']"),
        ("t.txt", "{answer", "is not a format template"),
        ("s.py", "prompt = 'x {answer}'\n", "assigns no string literal to 'template'"),
        ("s.py", "template = (\n", "is not a Python script"),
    ],
)
def test_a_prompt_file_that_does_not_fit_names_the_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    spec = JudgeSpec(**{**SPEC_OPENAI, "prompt_file": {"mmhal": str(path)}})
    with pytest.raises(SpecError, match=re.escape(message)) as raised:
        read_prompt_files(spec)
    assert "evaluation.judge.prompt_file.mmhal" in str(raised.value)


def test_a_missing_prompt_file_and_a_ground_truth_prompt_are_refused(tmp_path: Path) -> None:
    spec = JudgeSpec(**{**SPEC_OPENAI, "prompt_file": {"mrhal": str(tmp_path / "absent.py")}})
    with pytest.raises(SpecError, match=r"prompt_file\.mrhal: cannot read"):
        read_prompt_files(spec)
    with pytest.raises(ValueError, match="prompt_file is for an openai judge"):
        JudgeSpec(kind="ground_truth", prompt_file={"mrhal": "x.py"})
