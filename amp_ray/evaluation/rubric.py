"""The LLM judge's prompts for MRHal-Bench and MMHal-Bench, and the parsing of its replies.

Sources, both public judge scripts that send one user message to a text-only GPT-4 judge:

- MRHal-Bench: AMP's `eval/eval/eval_gpt_mrhal.py` (github.com/takomc/amp). The prompt gives the
  image's object categories, the number of rounds, then for every round the question, the
  "Standard Human-Generated Answer" and the "LMM Response to Evaluate"; the judge explains, then
  ends with "Ratings: [r1, ..., rn]". The script takes the bracketed list of the reply (where two
  appear, the one without Yes/No, since the examples teach a "Hallucination: [Yes, No]" list) and
  counts "N/A" as 0.
- MMHal-Bench: LLaVA-RLHF's `Eval/eval_gpt_mmhal.py` (github.com/llava-rlhf/LLaVA-RLHF), the
  same layout for one question; the reply holds one "rating: s".

The rating options (0-6), the reply formats and the section layout are the benchmarks' own
wording, kept as published because the scores depend on them. The framing and worked examples
teach the same points as the published ones (a miscount or an absent object is hallucination;
uncertainty or omitted detail is not; general reasoning that follows from the image is a strength)
in this module's own words, so a judge's scores can differ slightly from published numbers.
Changing any text here changes `PROMPT_VERSION`, which keys the judgment cache.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from amp_ray.evaluation.judging import JudgeFailure, JudgeRequest, check_ratings

PROMPT_VERSION = "amp-ray-rubric-1"  # bump on any change to the prompts below: it keys the cache

# The benchmarks' rating options, as the public scripts word them.
RATING_OPTIONS = """\
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination"""

PREAMBLE = """\
You are an impartial and objective judge. Evaluate the quality of the responses that a Large \
Multimodal Model (LMM) gave to a user's questions about an image. Base your evaluation mainly on \
two things: whether each response is informative, and whether it contains hallucination. Here, \
hallucination means that the LMM states information that is neither present in nor implied by \
the image or the previous conversation: a false claim about an object, its number, attributes or \
position, an action, an emotion, or any other detail that is not grounded in the image."""

GUIDANCE = """\
Please note that the standard human-generated answer states facts but may not analyse them, and \
it may not describe every object in the image or all of their attributes, so be careful when you \
evaluate. Detailed analysis or reasoning by the LMM should be encouraged."""

# Worked examples: (image contents, rounds of (question, reference, response, analysis, hal.)).
EXAMPLES: tuple[tuple[str, tuple[tuple[str, str, str, str, bool], ...]], ...] = (
    (
        "Dog, Flying disc, Grass",
        (
            (
                "How many dogs are in the picture?",
                "There are two dogs on the grass.",
                "There is one dog in the picture.",
                "The response is false: it reports one dog where the image has two.",
                True,
            ),
            (
                "What is the dog on the left catching?",
                "The dog on the left is catching a red flying disc.",
                "It is jumping to catch a red frisbee.",
                "The response is correct: it names the object and its colour.",
                False,
            ),
        ),
    ),
    (
        "Person, Bicycle, Building, Street",
        (
            (
                "In which city was this photo taken?",
                'The sign reads "Amsterdam Centraal", so the photo was taken in Amsterdam.',
                "It is a street in a European city, but the exact city cannot be told from the"
                " image.",
                "The response does not name the city, yet it makes no false claim. Failing to"
                " answer directly, expressing uncertainty or leaving out objects or details of"
                " the human-generated answer is not hallucination.",
                False,
            ),
            (
                "Is there a car in the image?",
                "No, there is no car in the image.",
                "Yes, a car is parked next to the building.",
                "The response claims a car that does not exist.",
                True,
            ),
            (
                "Where is the bicycle?",
                "The bicycle leans against the building, to the left of the door.",
                "The bicycle stands in the middle of the street.",
                "The response gets the bicycle right but places it wrongly.",
                True,
            ),
        ),
    ),
    (
        "Factory, Chimney, Smoke",
        (
            (
                "What environmental problem does this photo show?",
                "A chimney is emitting smoke, which pollutes the air and harms health.",
                "The chimney releases thick smoke. Industrial smoke carries particulate matter"
                " and gases such as sulfur dioxide and nitrogen oxides, which pollute the air,"
                " cause respiratory and heart disease and add to climate change. Filters and"
                " cleaner production would reduce these emissions.",
                "The response is much longer than the human-generated answer, but it makes no"
                " false claim about the image: it adds general knowledge that follows from the"
                " smoke shown. Such analysis or reasoning counts in the response's favour.",
                False,
            ),
        ),
    ),
)

ROUND_TEMPLATE = """
### Question
{question}

### Standard Human-Generated Answer
{reference}

### LMM Response to Evaluate
{answer}
"""

MRHAL_TASK = """\
With these examples in mind, please evaluate whether each response of the LMM below is \
informative and whether it contains hallucination, by comparing it with the factual information \
in the image contents, the question and the standard human-generated answer.

{guidance}

To evaluate the LMM responses, first give a short explanation. Then, after your explanation, rate \
the response of every round of conversation by choosing from the following options:
{options}

Note that the ratings must follow the list format. For example, if the conversation has four \
rounds and the responses are rated 6, 3, 0 and 1, the ratings you output are \
"Ratings: [6, 3, 0, 1]".

### Image Contents
{content}

### Rounds of Conversations
{rounds}
"""

MMHAL_TASK = """\
With these examples in mind, please evaluate whether the response of the LMM below is \
informative and whether it contains hallucination, by comparing it with the factual information \
in the image contents, the question and the standard human-generated answer.

{guidance}

To evaluate the LMM response, first give a short explanation. Then, after your explanation, rate \
the response by choosing from the following options, and end your reply with the option you \
chose (for example "Rating: 4"):
{options}

### Image Contents
{content}

### Question
{question}

### Standard Human-Generated Answer
{reference}

### LMM Response to Evaluate
{answer}
"""


def clean_question(question: str) -> str:
    # The judge is text-only: the image placeholder of the first round means nothing to it.
    return question.replace("<image>", "").strip()


def _mrhal_examples() -> str:
    parts = ["For clarity, consider these examples:"]
    for number, (content, rounds) in enumerate(EXAMPLES, start=1):
        lines = [f"### Example {number}:", f"- Image Contents: {content}"]
        lines.append(f"- Rounds of Conversations: {len(rounds)}")
        for question, reference, answer, _, _ in rounds:
            lines.append(f"- Question: {question}")
            lines.append(f"- Standard Human-Generated Answer: {reference}")
            lines.append(f"- LMM Response to Evaluate: {answer}")
        analysis = " ".join(f"Round {i}: {r[3]}" for i, r in enumerate(rounds, start=1))
        lines.append(f"- Analysis: {analysis}")
        verdicts = ", ".join("Yes" if r[4] else "No" for r in rounds)
        lines.append(f"- Hallucination: [{verdicts}]")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _mmhal_examples() -> str:
    parts = ["For clarity, consider these examples:"]
    singles = [(content, r) for content, rounds in EXAMPLES for r in rounds]
    for number, (content, (question, reference, answer, analysis, hal)) in enumerate(singles, 1):
        lines = [
            f"### Example {number}:",
            f"- Image Contents: {content}",
            f"- Question: {question}",
            f"- Standard Human-Generated Answer: {reference}",
            f"- LMM Response to Evaluate: {answer}",
            f"- Analysis: {analysis}",
            f"- Hallucination: {'Yes' if hal else 'No'}.",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _rounds(request: JudgeRequest) -> int:
    """The number of rounds, once questions, references and answers agree on it."""
    counts = {len(request.questions), len(request.references), len(request.answers)}
    if len(counts) != 1 or not request.questions:
        raise JudgeFailure(
            f"a judge request needs one question, reference and answer per round; got "
            f"{len(request.questions)} questions, {len(request.references)} references and "
            f"{len(request.answers)} answers"
        )
    return len(request.questions)


def mrhal_prompt(request: JudgeRequest) -> str:
    _rounds(request)
    rounds = "".join(
        ROUND_TEMPLATE.format(question=clean_question(q), reference=ref.strip(), answer=ans.strip())
        for q, ref, ans in zip(request.questions, request.references, request.answers, strict=True)
    )
    task = MRHAL_TASK.format(
        guidance=GUIDANCE,
        options=RATING_OPTIONS,
        content=", ".join(request.image_content),
        rounds=f"{len(request.questions)}\n{rounds}",
    )
    return f"{PREAMBLE}\n\n{_mrhal_examples()}\n\n{task}"


def mmhal_prompt(request: JudgeRequest) -> str:
    if _rounds(request) != 1:
        raise JudgeFailure(f"an MMHal-Bench item has one question, not {len(request.questions)}")
    task = MMHAL_TASK.format(
        guidance=GUIDANCE,
        options=RATING_OPTIONS,
        content=", ".join(request.image_content),
        question=clean_question(request.questions[0]),
        reference=request.references[0].strip(),
        answer=request.answers[0].strip(),
    )
    return f"{PREAMBLE}\n\n{_mmhal_examples()}\n\n{task}"


PROMPTS = {"mrhal": mrhal_prompt, "mmhal": mmhal_prompt}


def build_messages(
    request: JudgeRequest, templates: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """The OpenAI chat messages that ask the judge to rate `request` (one user turn, as published):
    the benchmark's template from `templates` (evaluation/judge_prompt.py) where there is one,
    else the built-in prompt.

    Raises ValueError for a benchmark without a prompt (a caller's bug) and JudgeFailure for a
    request whose rounds do not line up (a bad item).
    """
    prompt = PROMPTS.get(request.benchmark)
    if prompt is None:
        raise ValueError(
            f"no judge prompt for benchmark {request.benchmark!r}; known: {[*PROMPTS]}"
        )
    content = prompt(request)  # also checks the request's rounds
    if templates and request.benchmark in templates:
        content = templates[request.benchmark].render(request)
    return [{"role": "user", "content": content}]


# --- replies ------------------------------------------------------------------------------------

LABELLED_LIST = re.compile(r"ratings?\s*:\s*\[([^\]]*)\]", re.IGNORECASE)
ANY_LIST = re.compile(r"\[([^\]]*)\]")
YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
NOT_APPLICABLE = re.compile(r"^n\s*/?\s*a$", re.IGNORECASE)
NUMBER = re.compile(r"^(\d+)(?:\.0*)?$")
SINGLE_RATING = re.compile(r"\brating\s*:\s*(\d+(?:\.\d*)?)", re.IGNORECASE)


def quote(text: str, limit: int = 160) -> str:
    """The start of a reply on one line, for error messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _unmark(text: str) -> str:
    # Markdown emphasis ("**Ratings:** [5, 4]") sits between the label and the list.
    return text.replace("*", "").replace("`", "")


def _rating_list(text: str) -> str | None:
    """The body of the ratings list: the labelled one, else the public script's rule."""
    labelled = LABELLED_LIST.findall(text)
    if labelled:
        return labelled[-1]  # the last: a judge may restate the format's example before its own
    candidates = [body for body in ANY_LIST.findall(text) if not YES_NO.search(body)]
    return candidates[-1] if candidates else None


def _whole_number(value: str, text: str) -> int:
    number = NUMBER.match(value)
    if number is None:
        raise JudgeFailure(f"could not parse rating {value!r} in the judge's reply {quote(text)}")
    return int(number.group(1))


def _rating_value(item: str, text: str) -> int:
    value = item.strip().strip("'\"").strip()
    if NOT_APPLICABLE.match(value):
        return 0  # the public script counts "N/A" as 0
    return _whole_number(value, text)


def parse_mrhal_ratings(text: str, rounds: int, *, judge: str = "llm") -> tuple[int, ...]:
    """One rating in 0..6 per round from an MRHal-Bench judge's reply; JudgeFailure otherwise."""
    body = _rating_list(_unmark(text))
    if body is None:
        raise JudgeFailure(f"could not parse a ratings list from the judge's reply {quote(text)}")
    items = [item for item in body.split(",") if item.strip()]
    ratings = tuple(_rating_value(item, text) for item in items)
    try:
        return check_ratings(ratings, rounds, judge)
    except JudgeFailure as error:
        raise JudgeFailure(f"{error}; reply {quote(text)}") from None


def parse_mmhal_rating(text: str, *, judge: str = "llm") -> int:
    """The one "rating: s" of an MMHal-Bench judge's reply; JudgeFailure if none or several."""
    found = {_whole_number(value, text) for value in SINGLE_RATING.findall(_unmark(text))}
    if len(found) != 1:
        what = "no rating" if not found else f"several ratings {sorted(found)}"
        raise JudgeFailure(f"could not parse one rating: {what} in the judge's reply {quote(text)}")
    (rating,) = found
    try:
        return check_ratings((rating,), 1, judge)[0]
    except JudgeFailure as error:
        raise JudgeFailure(f"{error}; reply {quote(text)}") from None


def parse_reply(request: JudgeRequest, text: str, *, judge: str = "llm") -> tuple[int, ...]:
    """The ratings of `request`'s rounds from the judge's reply, by the benchmark's format."""
    if request.benchmark == "mmhal":
        return (parse_mmhal_rating(text, judge=judge),)
    return parse_mrhal_ratings(text, len(request.questions), judge=judge)
