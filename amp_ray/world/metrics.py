"""Hallucination metrics against the synthetic world's exact ground truth.

CHAIR (Rohrbach et al. 2018) on captions: CHAIR_i = hallucinated object mentions / all object
mentions, CHAIR_s = captions with at least one hallucinated object / captions; recall (share of the
true objects mentioned) is always reported beside them, or a model that says nothing would score
perfectly. POPE (Li et al. 2023): yes/no existence questions; an answer is "no" when its first
sentence contains "no" or "not". The bias metrics: the share of captions that name the partner
object on the bias probe (trigger present, partner absent) and on the control (neither present).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def mentioned(text: str, vocabulary: Iterable[str]) -> list[str]:
    """Object words of `vocabulary` in the order the text mentions them, repeats included."""
    known = set(vocabulary)
    return [word for word in words(text) if word in known]


@dataclass(frozen=True)
class CaptionScore:
    mentions: int
    hallucinated: int
    true_objects: int
    recalled: int
    exact: bool
    duplicate: bool
    finished: bool

    @classmethod
    def of(
        cls,
        text: str,
        reference: str,
        present: Sequence[str],
        vocabulary: Iterable[str],
        finished: bool,
    ) -> CaptionScore:
        said = mentioned(text, vocabulary)
        truth = set(present)
        return cls(
            mentions=len(said),
            hallucinated=sum(kind not in truth for kind in said),
            true_objects=len(truth),
            recalled=len(truth & set(said)),
            exact=text.strip() == reference.strip(),
            duplicate=len(said) != len(set(said)),
            finished=finished,
        )


def caption_metrics(scores: Sequence[CaptionScore]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s, recall, exact match, duplicate-object and no-EOS rates."""
    n = len(scores)
    if n == 0:
        return {}
    mentions = sum(s.mentions for s in scores)
    return {
        "chair_i": sum(s.hallucinated for s in scores) / mentions if mentions else 0.0,
        "chair_s": sum(s.hallucinated > 0 for s in scores) / n,
        "recall": sum(s.recalled for s in scores) / max(1, sum(s.true_objects for s in scores)),
        "exact_match": sum(s.exact for s in scores) / n,
        "duplicate_rate": sum(s.duplicate for s in scores) / n,
        "no_eos_rate": sum(not s.finished for s in scores) / n,
    }


def mention_rate(texts: Sequence[str], kind: str) -> float:
    """Share of texts that name `kind` (the co-occurrence rate on the bias probe)."""
    return sum(kind in words(text) for text in texts) / len(texts) if texts else 0.0


def pope_answer(text: str) -> str:
    """POPE's rule: "no" when the first sentence contains "no" or "not", else "yes"."""
    first = re.split(r"[.!?]", text.strip(), maxsplit=1)[0]
    return "no" if {"no", "not"} & set(words(first)) else "yes"


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "yes", and the yes-ratio."""
    n = len(labels)
    if n == 0:
        return {}
    predicted = [pope_answer(text) for text in answers]
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predicted, labels, strict=True))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predicted, labels, strict=True))
    fn = sum(p == "no" and y == "yes" for p, y in zip(predicted, labels, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == y for p, y in zip(predicted, labels, strict=True)) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": predicted.count("yes") / n,
    }
