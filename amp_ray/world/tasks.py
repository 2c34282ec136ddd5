"""Questions and reference answers about a scene, for every task kind the benchmarks use.

Text is lower-case words and punctuation separated by spaces, so a word-level tokenizer covers
it exactly. Each task returns `rounds` (question, reference answer) plus annotations for judging.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from amp_ray.world.scene import Scene, SceneSampler, WorldObject

NUMBERS = ("zero", "one", "two", "three", "four", "five")
CAPTION_QUESTION = "describe the image ."
POPE_CATEGORIES = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Round:
    question: str
    answer: str
    kind: str  # the question type: description, existence, attribute, counting, spatial
    facts: dict[str, Any] = field(default_factory=dict)


def caption(scene: Scene) -> str:
    """'a red circle and a blue square .' (left to right)."""
    return " and ".join(f"a {obj.colour} {obj.kind}" for obj in scene.objects) + " ."


def describe(scene: Scene) -> Round:
    return Round(CAPTION_QUESTION, caption(scene), "description")


def existence(scene: Scene, kind: str, category: str = "positive") -> Round:
    """Is there a `kind`? `category` records how a negative was chosen (POPE's three ways)."""
    present = next((obj for obj in scene.objects if obj.kind == kind), None)
    if present is None:
        answer = f"no , there is no {kind} ."
    else:
        answer = f"yes , there is a {present.colour} {kind} ."
    label = "yes" if present else "no"
    facts = {"object": kind, "label": label, "category": category}
    return Round(f"is there a {kind} ?", answer, "existence", facts)


def attribute(obj: WorldObject) -> Round:
    return Round(
        f"what colour is the {obj.kind} ?", f"the {obj.kind} is {obj.colour} .", "attribute"
    )


def counting(scene: Scene) -> Round:
    n = len(scene.objects)
    answer = "there is one object ." if n == 1 else f"there are {NUMBERS[n]} objects ."
    return Round("how many objects are there ?", answer, "counting", {"count": n})


def spatial(scene: Scene, index: int, side: str) -> Round:
    """What is immediately left (or right) of object `index` in the left-to-right order."""
    obj = scene.objects[index]
    neighbour_index = index - 1 if side == "left" else index + 1
    question = f"what is {side} of the {obj.kind} ?"
    if 0 <= neighbour_index < len(scene.objects):
        other = scene.objects[neighbour_index]
        answer = f"the {other.colour} {other.kind} is {side} of the {obj.kind} ."
    else:
        answer = f"nothing is {side} of the {obj.kind} ."
    return Round(question, answer, "spatial")


@dataclass(frozen=True)
class PopeStatistics:
    """Object frequency and co-occurrence in the biased (training) distribution, as POPE uses."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int]

    @classmethod
    def estimate(cls, sampler: SceneSampler, seed: int, samples: int = 4000) -> PopeStatistics:
        rng = np.random.default_rng([seed, 7_777])
        frequency: Counter[str] = Counter()
        pairs: Counter[tuple[str, str]] = Counter()
        for _ in range(samples):
            kinds = sorted(sampler.sample(rng, "biased").kinds)
            frequency.update(kinds)
            pairs.update(combinations(kinds, 2))
        return cls(dict(frequency), dict(pairs))

    def negative(
        self, scene: Scene, category: str, all_kinds: tuple[str, ...], rng: np.random.Generator
    ) -> str:
        """An absent kind: uniform (random), most frequent (popular), co-occurring (adversarial)."""
        absent = [kind for kind in all_kinds if not scene.has(kind)]
        if category == "random":
            return str(rng.choice(absent))
        if category == "popular":
            return max(absent, key=lambda kind: (self.frequency.get(kind, 0), kind))

        def together(kind: str) -> int:
            return sum(self.cooccurrence.get(tuple(sorted((kind, p))), 0) for p in scene.kinds)

        return max(absent, key=lambda kind: (together(kind), kind))


def random_question(scene: Scene, rng: np.random.Generator, all_kinds: tuple[str, ...]) -> Round:
    """One non-description question about the scene, of a uniformly drawn type."""
    kind = str(rng.choice(("existence", "attribute", "counting", "spatial")))
    if kind == "existence":
        present = rng.random() < 0.5
        pool = scene.kinds if present else [k for k in all_kinds if not scene.has(k)]
        return existence(scene, str(rng.choice(pool)), "positive" if present else "random")
    if kind == "attribute":
        return attribute(scene.objects[int(rng.integers(len(scene.objects)))])
    if kind == "counting":
        return counting(scene)
    side = "left" if rng.random() < 0.5 else "right"
    return spatial(scene, int(rng.integers(len(scene.objects))), side)


def dialogue(
    scene: Scene, rng: np.random.Generator, all_kinds: tuple[str, ...], n_rounds: int
) -> list[Round]:
    """A multi-round dialogue (MRHal-style): a description first, then distinct questions."""
    rounds = [describe(scene)]
    for _ in range(50 * n_rounds):  # distinct questions; a 1-object scene has few
        if len(rounds) == n_rounds:
            break
        candidate = random_question(scene, rng, all_kinds)
        if all(candidate.question != r.question for r in rounds):
            rounds.append(candidate)
    return rounds
