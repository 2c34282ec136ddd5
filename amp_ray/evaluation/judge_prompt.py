"""Judge prompts from the benchmark release's own files (`evaluation.judge.prompt_file`).

The built-in prompts (evaluation/rubric.py) teach the published rubric in this project's words;
scores that must compare with the papers' need the published template itself. A user points
`prompt_file.<benchmark>` at their copy of the release:

- a judge script (`.py`, e.g. LLaVA-RLHF's `Eval/eval_gpt_mmhal.py`): the template is the string
  the script assigns to `prompt_variable` (default `template`), read with `ast` — the script is
  never run;
- any other file: its text is the template.

Placeholders are Python `str.format` fields, either positional (`{}`, as the published scripts
fill them: `template.format(image_content, question, gt_answer, answer)`) in the order of
`FIELDS`, or named with those names. The reply format stays the benchmark's (one "rating: s" for
MMHal-Bench, "Ratings: [...]" for MRHal-Bench), so the same parsers read it.
"""

from __future__ import annotations

import ast
import hashlib
import string
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from amp_ray.errors import SpecError, StorageError
from amp_ray.evaluation.judging import JudgeRequest
from amp_ray.evaluation.rubric import PROMPT_VERSION, ROUND_TEMPLATE, clean_question

# What each benchmark's template is filled with, in the published scripts' positional order.
FIELDS: dict[str, tuple[str, ...]] = {
    "mmhal": ("image_content", "question", "reference", "answer"),
    "mrhal": ("image_content", "num_rounds", "rounds"),
}
# The field that carries the model's answer: a template without it would rate nothing.
ANSWER_FIELD = {"mmhal": "answer", "mrhal": "rounds"}


@dataclass(frozen=True)
class PromptTemplate:
    """One benchmark's judge template, read from `source`."""

    benchmark: str
    text: str
    source: str  # the file it came from, for the report and error messages
    positional: bool

    @property
    def version(self) -> str:
        """File name and content digest: keys the judgment cache, names the prompt in reports."""
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:12]
        return f"{PurePosixPath(self.source).name}@{digest}"

    def render(self, request: JudgeRequest) -> str:
        values = field_values(request)
        if self.positional:
            return self.text.format(*(values[name] for name in FIELDS[self.benchmark]))
        return self.text.format(**values)


def field_values(request: JudgeRequest) -> dict[str, str]:
    """Every placeholder's value for `request` (the published section layout for rounds)."""
    rounds = "".join(
        ROUND_TEMPLATE.format(question=clean_question(q), reference=r.strip(), answer=a.strip())
        for q, r, a in zip(request.questions, request.references, request.answers, strict=True)
    )
    return {
        "image_content": ", ".join(request.image_content),
        "question": clean_question(request.questions[0]) if request.questions else "",
        "reference": request.references[0].strip() if request.references else "",
        "answer": request.answers[0].strip() if request.answers else "",
        "num_rounds": str(len(request.questions)),
        "rounds": rounds,
    }


def template_from_file(
    benchmark: str, source: str, data: bytes, variable: str = "template"
) -> PromptTemplate:
    """The template of `benchmark` in file `source` (its bytes `data`); SpecError naming the key
    and what to fix when it cannot be read or its placeholders do not fit."""
    key = f"evaluation.judge.prompt_file.{benchmark}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{key}: {source} is not UTF-8 text") from None
    if source.endswith(".py"):
        text = _assigned_string(text, variable, key, source)
    return PromptTemplate(benchmark, text, source, _check_fields(benchmark, text, key, source))


def _assigned_string(code: str, variable: str, key: str, source: str) -> str:
    """The string literal a script assigns to `variable` at module level (never executed)."""
    try:
        tree = ast.parse(code, filename=source)
    except SyntaxError as error:
        raise SpecError(f"{key}: {source} is not a Python script ({error.msg})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == variable for target in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if isinstance(value, str):
                return value
    raise SpecError(
        f"{key}: {source} assigns no string literal to {variable!r} at module level",
        hint="name the variable that holds the template in evaluation.judge.prompt_variable, "
        "or give a text file with the template",
    )


def _check_fields(benchmark: str, text: str, key: str, source: str) -> bool:
    """True for positional placeholders, False for named ones; SpecError if they do not fit."""
    expected = FIELDS[benchmark]
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as error:
        raise SpecError(f"{key}: {source} is not a format template ({error})") from None
    if names and all(name == "" for name in names):
        if len(names) != len(expected):
            raise SpecError(
                f"{key}: {source} has {len(names)} positional placeholders; a {benchmark} "
                f"template has {len(expected)}, filled in the order {', '.join(expected)}",
                hint="use named placeholders {" + "}, {".join(expected) + "} instead",
            )
        return True
    unknown = sorted({name for name in names if name not in expected})
    if unknown or ANSWER_FIELD[benchmark] not in names:
        answer = "{" + ANSWER_FIELD[benchmark] + "}"
        what = f"unknown placeholders {unknown}" if unknown else f"no {answer}"
        raise SpecError(
            f"{key}: {source} has {what}",
            hint=f"a {benchmark} template names {{" + "}, {".join(expected) + "} "
            "(or has that many positional {} in this order)",
        )
    return False


def read_prompt_files(judge: Any, storage: Any = None) -> dict[str, PromptTemplate]:
    """benchmark -> template for every `prompt_file` the judge spec names (local or s3)."""
    from amp_ray.storage.location import open_location

    templates = {}
    for benchmark, uri in judge.prompt_file.items():
        try:
            data = open_location(uri, storage).read_bytes()
        except (OSError, StorageError) as error:
            raise SpecError(
                f"evaluation.judge.prompt_file.{benchmark}: cannot read {uri} ({error})",
                hint="give the path of the benchmark release's judge script or template",
            ) from None
        templates[benchmark] = template_from_file(benchmark, uri, data, judge.prompt_variable)
    return templates


def prompt_versions(templates: dict[str, PromptTemplate]) -> dict[str, str]:
    """benchmark -> the version of the prompt its judge sends (a file's, else the built-in)."""
    return {
        benchmark: templates[benchmark].version if benchmark in templates else PROMPT_VERSION
        for benchmark in FIELDS
    }
