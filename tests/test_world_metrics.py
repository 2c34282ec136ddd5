"""CHAIR, POPE and the bias metrics on small cases worked out by hand."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from amp_ray.evaluation.world_eval import world_metric_rows
from amp_ray.storage.schemas import ANSWERS
from amp_ray.world.metrics import (
    CaptionScore,
    caption_metrics,
    mention_rate,
    mentioned,
    pope_answer,
    pope_metrics,
)

KINDS = ["circle", "square", "triangle", "cross", "ring", "diamond"]


def test_mentions_keep_order_and_repeats() -> None:
    assert mentioned("a red circle and a blue square and a red circle .", KINDS) == [
        "circle",
        "square",
        "circle",
    ]
    assert mentioned("A Ring, then a diamond.", KINDS) == ["ring", "diamond"]


def test_caption_metrics_by_hand() -> None:
    """Three captions of images holding {circle, ring}, {square}, {triangle, cross}:

    1. "a red circle and a blue square ."  mentions circle, square; square is hallucinated.
    2. "a green square ."                   mentions square; correct, exact.
    3. "a triangle and a triangle"          mentions triangle twice; none hallucinated; no EOS.
    CHAIR_i = hallucinated mentions / mentions = 1 / (2 + 1 + 2) = 0.2
    CHAIR_s = captions with a hallucination / captions = 1/3
    recall  = true objects mentioned / true objects = (1 + 1 + 1) / (2 + 1 + 2) = 0.6
    exact = 1/3, duplicate = 1/3 (caption 3), no-EOS = 1/3.
    """
    scores = [
        CaptionScore.of(
            "a red circle and a blue square .",
            "a red circle and a blue ring .",
            ["circle", "ring"],
            KINDS,
            True,
        ),
        CaptionScore.of("a green square .", "a green square .", ["square"], KINDS, True),
        CaptionScore.of(
            "a triangle and a triangle",
            "a red triangle and a red cross .",
            ["triangle", "cross"],
            KINDS,
            False,
        ),
    ]
    metrics = caption_metrics(scores)
    assert metrics["chair_i"] == pytest.approx(0.2)
    assert metrics["chair_s"] == pytest.approx(1 / 3)
    assert metrics["recall"] == pytest.approx(0.6)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["duplicate_rate"] == pytest.approx(1 / 3)
    assert metrics["no_eos_rate"] == pytest.approx(1 / 3)


def test_saying_nothing_scores_zero_chair_but_zero_recall() -> None:
    metrics = caption_metrics([CaptionScore.of("", "a red circle .", ["circle"], KINDS, True)])
    assert metrics["chair_i"] == 0.0 and metrics["recall"] == 0.0


def test_pope_answer_rule() -> None:
    assert pope_answer("no , there is no square .") == "no"
    assert pope_answer("yes , there is a red square .") == "yes"
    assert pope_answer("There is not a square here. Yes.") == "no"
    assert pope_answer("yes . no square though") == "yes"  # only the first sentence counts
    assert pope_answer("") == "yes"


def test_pope_metrics_by_hand() -> None:
    """labels  yes yes no no no ; answers yes no yes no no
    TP = 1, FN = 1, FP = 1, TN = 2: accuracy 3/5, precision 1/2, recall 1/2, F1 1/2,
    yes-ratio 2/5."""
    answers = ["yes .", "no .", "yes .", "no .", "no ."]
    metrics = pope_metrics(answers, ["yes", "yes", "no", "no", "no"])
    assert metrics == pytest.approx(
        {"accuracy": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.4}
    )


def test_mention_rate() -> None:
    assert mention_rate(
        ["a red circle and a blue square .", "a red circle .", "squares"], "square"
    ) == pytest.approx(1 / 3)


def answer_row(
    model: str, split: str, task: str, answer: str, objects: list[str], facts: dict | None = None
) -> dict:
    annotations = {
        "objects": [{"kind": kind} for kind in objects],
        "bias": {"trigger": "circle", "partner": "square"},
        "kinds": KINDS,
        "rounds": [facts or {"type": "description"}],
    }
    return {
        "item_id": f"{split}/{task}/{answer}",
        "model": model,
        "split": split,
        "task": task,
        "questions": ["q"],
        "references": ["a red circle ."],
        "answers": [answer],
        "finished": [True],
        "annotations": json.dumps(annotations),
    }


def yes_to(kind: str, label: str) -> dict:
    """A "yes ." answer to an adversarial existence question about `kind`."""
    facts = {"type": "existence", "label": label, "object": kind, "category": "adversarial"}
    return answer_row("m", "eval_bias_probe", "existence", "yes .", ["circle"], facts)


def test_world_metric_rows_group_by_model_and_split() -> None:
    rows = [
        answer_row(
            "m", "eval_bias_probe", "caption", "a red circle and a blue square .", ["circle"]
        ),
        answer_row("m", "eval_bias_probe", "caption", "a red circle .", ["circle"]),
        yes_to("square", label="no"),
        yes_to("circle", label="yes"),
    ]
    metrics = world_metric_rows(pa.Table.from_pylist(rows, schema=ANSWERS))
    values = {(r["benchmark"], r["metric"]): (r["value"], r["count"]) for r in metrics}
    assert values[("bias", "partner_rate")] == (0.5, 2)
    assert values[("chair", "chair_i")] == (pytest.approx(1 / 3), 2)
    assert values[("pope", "yes_ratio")] == (1.0, 2)
    assert values[("pope_adversarial", "accuracy")] == (0.5, 2)
    assert {r["model"] for r in metrics} == {"m"} and {r["split"] for r in metrics} == {
        "eval_bias_probe"
    }
