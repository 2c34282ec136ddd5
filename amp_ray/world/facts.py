"""The synthetic world's facts in an answer: per dialogue round, how many facts of the ground
truth it asks for, how many the answer states falsely (hallucinated) and how many it leaves out
(missed). The ground-truth checker ranks candidates by these counts (ranking/checkers.py) and the
world's judge rates answers by them (evaluation/world_judge.py). Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from amp_ray.errors import DataError
from amp_ray.world.metrics import CaptionScore, pope_answer, words
from amp_ray.world.scene import PALETTE
from amp_ray.world.tasks import NUMBERS

NEGATIONS = frozenset({"no", "nothing", "none"})  # one fact: "nothing there", however phrased
SIDES = frozenset({"left", "right"})


@dataclass(frozen=True)
class RoundCounts:
    facts: int  # facts of the ground truth the round asks for
    hallucinated: int  # things said that are false (absent objects, wrong colours, wrong answers)
    missed: int  # facts not stated

    @property
    def accuracy(self) -> float:
        """1 − (hallucinated + missed) / (facts + hallucinated): in [0, 1], 1 only when exact."""
        total = self.facts + self.hallucinated
        return 1.0 - (self.hallucinated + self.missed) / total if total else 1.0


@dataclass(frozen=True)
class WorldTruth:
    """The ground truth of one synthetic-world item (World._annotations)."""

    colours_of: dict[str, str]  # present kind -> its colour (kinds are unique in a scene)
    kinds: tuple[str, ...]  # every kind of the world (the object vocabulary)
    colours: frozenset[str]
    rounds: list[dict[str, Any]]

    @classmethod
    def parse(cls, annotations: str | None, num_rounds: int) -> WorldTruth:
        """Raises DataError naming the missing or malformed key (the item goes to quarantine)."""
        if not annotations:
            raise DataError("the ground_truth checker needs annotations; the item has none")
        try:
            raw = json.loads(annotations)
        except ValueError as exc:
            raise DataError(f"annotations are not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise DataError("annotations are not a JSON object")
        for key in ("objects", "kinds", "rounds"):
            if key not in raw:
                raise DataError(f"annotations lack the key {key!r} the ground_truth checker needs")
            if not isinstance(raw[key], list):
                raise DataError(f"annotations: the key {key!r} is not a list")
        colours_of: dict[str, str] = {}
        for i, obj in enumerate(raw["objects"]):
            for key in ("kind", "colour"):
                if not isinstance(obj, dict) or key not in obj:
                    raise DataError(f"annotations lack the key 'objects[{i}].{key}'")
            colours_of[obj["kind"]] = obj["colour"]
        rounds = raw["rounds"]
        if len(rounds) != num_rounds:
            raise DataError(
                f"annotations describe {len(rounds)} rounds, the item has {num_rounds} "
                "(key 'rounds')"
            )
        for i, facts in enumerate(rounds):
            if not isinstance(facts, dict):
                raise DataError(f"annotations: 'rounds[{i}]' is not an object")
            needed = ["type"] + (["object", "label"] if facts.get("type") == "existence" else [])
            for key in needed:
                if key not in facts:
                    raise DataError(f"annotations lack the key 'rounds[{i}].{key}'")
        return cls(
            colours_of=colours_of,
            kinds=tuple(raw["kinds"]),
            colours=frozenset(PALETTE) | frozenset(colours_of.values()),
            rounds=rounds,
        )


def _colours_before(tokens: list[str], kind: str, colours: frozenset[str]) -> set[str]:
    """Colour words said right before a mention of `kind` ("a red circle"), as the world writes."""
    return {
        tokens[i - 1] for i, t in enumerate(tokens) if t == kind and i and tokens[i - 1] in colours
    }


def _colour_counts(tokens: list[str], kind: str, truth: WorldTruth) -> tuple[int, int]:
    """(hallucinated, missed) of the colour of present `kind`, mentioned in `tokens`."""
    said = _colours_before(tokens, kind, truth.colours)
    if not said:
        return 0, 1
    return len(said - {truth.colours_of[kind]}), 0


def description_counts(text: str, reference: str, truth: WorldTruth) -> RoundCounts:
    """CHAIR-style (CaptionScore): every mention of an absent kind and every wrong colour of a
    present kind is hallucinated; each present object has two facts (kind, colour) to miss."""
    present = list(truth.colours_of)
    caption = CaptionScore.of(text, reference, present, truth.kinds, finished=True)
    tokens = words(text)
    hallucinated, missed = caption.hallucinated, 2 * (caption.true_objects - caption.recalled)
    for kind in set(present) & set(tokens):
        wrong, unsaid = _colour_counts(tokens, kind, truth)
        hallucinated, missed = hallucinated + wrong, missed + unsaid
    return RoundCounts(2 * len(present), hallucinated, missed)


def existence_counts(text: str, facts: dict[str, Any], truth: WorldTruth) -> RoundCounts:
    """POPE's reading of the answer against the label; a present object also has its colour; any
    other absent kind named is hallucinated."""
    asked, label = facts["object"], facts["label"]
    answer = pope_answer(text)
    hallucinated = int(answer == "yes" and label == "no")
    missed = int(answer == "no" and label == "yes")
    count = 1
    tokens = words(text)
    if label == "yes" and answer == "yes" and asked in truth.colours_of:
        count += 1
        wrong, unsaid = _colour_counts(tokens, asked, truth)
        hallucinated, missed = hallucinated + wrong, missed + unsaid
    others = [t for t in tokens if t in truth.kinds and t != asked and t not in truth.colours_of]
    return RoundCounts(count, hallucinated + len(others), missed)


def content_words(text: str, truth: WorldTruth) -> Counter[str]:
    """The fact-bearing words: colours, kinds, numbers, left/right, and negation as one word."""
    vocabulary = truth.colours | set(truth.kinds) | set(NUMBERS) | SIDES
    return Counter(
        "nothing" if w in NEGATIONS else w for w in words(text) if w in vocabulary | NEGATIONS
    )


def content_counts(text: str, reference: str, truth: WorldTruth) -> RoundCounts:
    """Attribute, counting, spatial (and unknown) rounds: the reference's content words are the
    facts; those not said are missed, every extra one is hallucinated (the world's answers are
    short and exact, so anything beyond the reference is at best unasked)."""
    said, right = content_words(text, truth), content_words(reference, truth)
    return RoundCounts(
        sum(right.values()), sum((said - right).values()), sum((right - said).values())
    )


def token_f1(text: str, reference: str) -> float:
    """Word-level F1 of the answer against the reference (multiset overlap)."""
    said, right = Counter(words(text)), Counter(words(reference))
    overlap = sum((said & right).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(said.values()), overlap / sum(right.values())
    return 2 * precision * recall / (precision + recall)


def repeats(text: str) -> bool:
    """Some word trigram occurs twice: the answer loops ("a red circle and a red circle")."""
    tokens = words(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    return len(trigrams) != len(set(trigrams))
