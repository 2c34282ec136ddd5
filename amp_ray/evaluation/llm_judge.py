"""The LLM judge: MRHal-Bench / MMHal-Bench ratings from any OpenAI-compatible chat endpoint.

`OpenAIJudge` sends the published judge prompt (evaluation/rubric.py) with temperature 0 and
parses the reply. Three layers keep a long evaluation cheap and robust:

- retries: the openai client's own for HTTP errors and timeouts (`max_retries`, with its
  backoff); for a reply that cannot be parsed, the judge asks again up to `max_retries` times;
- a rate limit of `requests_per_minute` per judge instance (a minimum interval between requests,
  shared by its threads);
- a cache of judgments, one JSON file per input under `cache_dir`, keyed by the judge model, the
  prompt version and the request, so a rerun or a resumed stage asks nothing twice.

The API key is read from the environment variable the spec names and goes only into the client:
never into a log line, an error message or the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import openai

from amp_ray.errors import SpecError
from amp_ray.evaluation.judge_prompt import PromptTemplate, prompt_versions
from amp_ray.evaluation.judging import JudgeFailure, JudgeRequest, Judgment, check_ratings
from amp_ray.evaluation.rubric import PROMPT_VERSION, build_messages, parse_reply
from amp_ray.spec.alignment import JudgeSpec

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOCAL_DUMMY_KEY = "local-endpoint-needs-no-key"  # local servers (vLLM, llama.cpp) ignore the key


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/amp_ray/judge, else ~/.cache/amp_ray/judge."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amp_ray" / "judge"


def is_local(base_url: str) -> bool:
    return urlparse(base_url).hostname in LOCAL_HOSTS


def read_api_key(spec: JudgeSpec) -> str:
    """The key from the spec's environment variable; a dummy one for a local endpoint."""
    key = os.environ.get(spec.api_key_env, "")
    if key:
        return key
    if spec.base_url and is_local(spec.base_url):
        return LOCAL_DUMMY_KEY
    raise SpecError(
        f"the judge's API key is not set: environment variable {spec.api_key_env} is empty or "
        f"missing (judge endpoint {spec.base_url})",
        hint=f"export {spec.api_key_env}=..., or name another variable in "
        "evaluation.judge.api_key_env",
    )


class MinInterval:
    """At most one request per `interval` seconds, across the threads that share it."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None

    def wait(self) -> None:
        # Sleeping under the lock is the point: waiting threads take their turns in order.
        with self._lock:
            now = self._clock()
            if self._next is not None and now < self._next:
                self._sleep(self._next - now)
                now = self._next
            self._next = now + self.interval


class JudgmentCache:
    """Judgments as `<key>.json` files, written atomically so a killed run leaves none half-done."""

    def __init__(self, directory: Path, model: str, prompts: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.model = model
        self.prompts = prompts or {}  # benchmark -> prompt version; missing: the built-in

    def prompt_version(self, request: JudgeRequest) -> str:
        return self.prompts.get(request.benchmark, PROMPT_VERSION)

    def key(self, request: JudgeRequest) -> str:
        payload = json.dumps([self.model, self.prompt_version(request), request.key()])
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, request: JudgeRequest) -> Path:
        return self.directory / f"{self.key(request)}.json"

    def get(self, request: JudgeRequest, judge: str) -> Judgment | None:
        path = self.path(request)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            ratings = tuple(int(r) for r in record["ratings"])
            judgment = Judgment(ratings=ratings, response=str(record["response"]))
            check_ratings(judgment.ratings, len(request.questions), judge)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, JudgeFailure) as error:
            # A damaged entry is only a lost shortcut: judge the item again and overwrite it.
            log.warning("ignoring unreadable judge cache entry %s: %s", path, error)
            return None
        return judgment

    def put(self, request: JudgeRequest, judgment: Judgment) -> None:
        record = {
            "model": self.model,
            "prompt_version": self.prompt_version(request),
            "benchmark": request.benchmark,
            "request_key": request.key(),
            "ratings": list(judgment.ratings),
            "response": judgment.response,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(record, out, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path(request))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class OpenAIJudge:
    """A `Judge` over an OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, ...)."""

    def __init__(
        self,
        spec: JudgeSpec,
        cache_dir: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        templates: dict[str, PromptTemplate] | None = None,
    ) -> None:
        if not (spec.base_url and spec.model):
            raise SpecError("an openai judge needs evaluation.judge.base_url and .model")
        self.spec = spec
        self.base_url = spec.base_url
        self.model = spec.model
        self.templates = templates or {}
        self.name = f"openai:{spec.model}"
        # with the name in every judgment row and in the report: which prompt rated the item
        self.versions = prompt_versions(self.templates)
        self.prompt = "prompts " + ", ".join(f"{b} {v}" for b, v in self.versions.items())
        self._key = read_api_key(spec)
        self._client = openai.OpenAI(
            base_url=spec.base_url,
            api_key=self._key,
            max_retries=spec.max_retries,
            timeout=spec.timeout_s,
        )
        self._limit = MinInterval(60.0 / spec.requests_per_minute, clock, sleep)
        directory = cache_dir or spec.cache_dir
        root = Path(directory).expanduser() if directory else default_cache_dir()
        self.cache = JudgmentCache(root, spec.model, self.versions)

    def __repr__(self) -> str:  # never the client's repr: it would hold the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def judge(self, request: JudgeRequest) -> Judgment:
        messages = build_messages(request, self.templates)
        cached = self.cache.get(request, self.name)
        if cached is not None:
            return cached
        judgment = self._ask(request, messages)
        self.cache.put(request, judgment)
        return judgment

    def _ask(self, request: JudgeRequest, messages: list[dict[str, str]]) -> Judgment:
        """Ask until a reply parses: once, plus up to `max_retries` re-asks."""
        attempts = self.spec.max_retries + 1
        reason = ""
        for attempt in range(1, attempts + 1):
            text = self._complete(messages)
            try:
                ratings = parse_reply(request, text, judge=self.name)
            except JudgeFailure as error:
                reason = str(error)
                log.info("judge %s reply %d/%d unusable: %s", self.name, attempt, attempts, reason)
                continue
            return Judgment(ratings=ratings, response=text)
        failure = f"judge {self.name}: no usable reply in {attempts} tries; last: {reason}"
        raise JudgeFailure(redact(failure, self._key))

    def _complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text; JudgeFailure naming the endpoint when the client gives up."""
        self._limit.wait()
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=0
            )
        except openai.APITimeoutError:
            raise self._failure(f"timed out after {self.spec.timeout_s:g} s") from None
        except openai.APIConnectionError as error:
            raise self._failure(f"could not connect ({error})") from None
        except openai.APIStatusError as error:
            raise self._failure(f"answered HTTP {error.status_code}: {error.message}") from None
        except openai.OpenAIError as error:
            raise self._failure(f"failed: {type(error).__name__}: {error}") from None
        if not response.choices:
            return ""  # parsed as unusable, so asked again
        return response.choices[0].message.content or ""

    def _failure(self, what: str) -> JudgeFailure:
        tries = self.spec.max_retries + 1
        message = f"judge {self.name} at {self.base_url} {what} ({tries} tries)"
        # A server may echo what it was sent; the key must not reach a log or a results file.
        return JudgeFailure(redact(message, self._key))


def redact(message: str, secret: str) -> str:
    """`message` with `secret` blanked out."""
    return message.replace(secret, "***") if secret else message
