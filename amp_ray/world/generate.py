"""The world's splits, made item by item, deterministically from (seed, split, index).

Any worker can make any image without coordination: image `i` of split `s` depends only on the
world spec and (seed, s, i). That is what lets Ray Data spread generation over an actor pool and
still give the same dataset on every run.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

import numpy as np

from amp_ray.spec.blocks import WorldSpec
from amp_ray.world.scene import Mode, Scene, SceneSampler, encode_png, render
from amp_ray.world.tasks import (
    POPE_CATEGORIES,
    PopeStatistics,
    Round,
    attribute,
    counting,
    describe,
    dialogue,
    existence,
    random_question,
    spatial,
)

# split -> the distribution its scenes come from. The preference split is unbiased on purpose:
# drawn from the biased distribution it holds almost no counter-examples, and every method then
# makes the hallucination worse (docs/world.md).
SPLIT_MODES: dict[str, Mode] = {
    "sft": "biased",
    "preference": "unbiased",
    "eval_iid": "unbiased",
    "eval_bias_probe": "bias_probe",
    "eval_control": "control",
    # last, so the other splits keep their codes (and scenes); empty unless a spec asks for it
    "validation": "unbiased",
}
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_MODES)}
# the splits whose images carry the benchmarks' items (a caption, POPE questions, a dialogue):
# the reported eval splits, and a validation split that chooses between recipes without being
# one of them (the report keeps it out of every headline number)
VALIDATION_SPLIT = "validation"
EVAL_SPLITS = tuple(name for name in SPLIT_MODES if name.startswith("eval"))
BENCHMARK_SPLITS = (*EVAL_SPLITS, VALIDATION_SPLIT)


def is_reported(split: str) -> bool:
    """Whether a headline number may average over `split`: all but the validation split, which
    chooses between recipes and so is no estimate of how good the chosen one is."""
    return split != VALIDATION_SPLIT


def reported(splits: Iterable[str]) -> list[str]:
    """The `splits` a headline number may average over, in their order."""
    return [split for split in splits if is_reported(split)]


class World:
    """Makes the items of every split of a world spec."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.kinds = tuple(spec.kinds)
        self.sampler = SceneSampler(
            kinds=self.kinds,
            colours=tuple(spec.colours),
            max_objects=spec.max_objects,
            trigger=spec.bias.trigger,
            partner=spec.bias.partner,
            strength=spec.bias.strength,
            image_size=spec.image_size,
        )
        self.pope = PopeStatistics.estimate(self.sampler, spec.seed)
        self.split_sizes = [(name, getattr(spec.splits, name)) for name in SPLIT_MODES]
        self._starts = [0, *accumulate(size for _, size in self.split_sizes)]

    @property
    def num_images(self) -> int:
        return self._starts[-1]

    def locate(self, global_index: int) -> tuple[str, int]:
        """(split, index within the split) of the `global_index`-th image over all splits."""
        if not 0 <= global_index < self.num_images:
            raise IndexError(f"image {global_index} is outside the world's {self.num_images}")
        position = bisect_right(self._starts, global_index) - 1
        return self.split_sizes[position][0], global_index - self._starts[position]

    def scene(self, split: str, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene of image `index` of `split`, and the generator that continues its stream."""
        rng = np.random.default_rng([self.spec.seed, SPLIT_CODES[split], index])
        return self.sampler.sample(rng, SPLIT_MODES[split]), rng

    def items(self, global_index: int) -> list[dict[str, Any]]:
        """The item rows (ITEMS schema) of one image: one task in training splits, all in eval."""
        split, index = self.locate(global_index)
        scene, rng = self.scene(split, index)
        image = encode_png(render(scene, rng, self.spec.image_size))
        if split in BENCHMARK_SPLITS:
            tasks = self._eval_tasks(scene, rng)
        else:
            mix = self.spec.sft_tasks if split == "sft" else self.spec.preference_tasks
            names = sorted(mix)
            weights = np.array([mix[name] for name in names], dtype=float)
            task = str(rng.choice(names, p=weights / weights.sum()))
            tasks = [(task, self._training_rounds(task, scene, rng))]
        return [
            {
                "item_id": f"{split}/{index:06d}/{name}",
                "split": split,
                "task": name.split("-")[0],
                "image": image,
                "image_uri": None,
                "rounds": [{"question": r.question, "answer": r.answer} for r in rounds],
                "annotations": self._annotations(scene, split, rounds),
            }
            for name, rounds in tasks
        ]

    def _training_rounds(self, task: str, scene: Scene, rng: np.random.Generator) -> list[Round]:
        if task == "caption":
            return [describe(scene)]
        if task == "dialogue":
            low, high = self.spec.dialogue_rounds
            return dialogue(scene, rng, self.kinds, int(rng.integers(low, high + 1)))
        if task == "existence":
            if rng.random() < 0.5:
                return [existence(scene, str(rng.choice(scene.kinds)))]
            category = str(rng.choice(POPE_CATEGORIES))
            negative = self.pope.negative(scene, category, self.kinds, rng)
            return [existence(scene, negative, category)]
        if task == "attribute":
            return [attribute(scene.objects[int(rng.integers(len(scene.objects)))])]
        if task == "counting":
            return [counting(scene)]
        if task == "spatial":
            side = "left" if rng.random() < 0.5 else "right"
            return [spatial(scene, int(rng.integers(len(scene.objects))), side)]
        return [random_question(scene, rng, self.kinds)]

    def _eval_tasks(self, scene: Scene, rng: np.random.Generator) -> list[tuple[str, list[Round]]]:
        """A caption (CHAIR), a positive and a negative POPE question per category, a dialogue."""
        tasks: list[tuple[str, list[Round]]] = [("caption", [describe(scene)])]
        for category in POPE_CATEGORIES:
            positive = existence(scene, str(rng.choice(scene.kinds)), category)
            absent = self.pope.negative(scene, category, self.kinds, rng)
            negative = existence(scene, absent, category)
            tasks.append((f"existence-{category}-yes", [positive]))
            tasks.append((f"existence-{category}-no", [negative]))
        low, high = self.spec.dialogue_rounds
        tasks.append(
            ("dialogue", dialogue(scene, rng, self.kinds, int(rng.integers(low, high + 1))))
        )
        return tasks

    def _annotations(self, scene: Scene, split: str, rounds: list[Round]) -> str:
        return json.dumps(
            {
                "objects": scene.to_json(),
                "mode": SPLIT_MODES[split],
                "bias": {"trigger": self.spec.bias.trigger, "partner": self.spec.bias.partner},
                "kinds": list(self.kinds),
                "rounds": [{"type": r.kind, **r.facts} for r in rounds],
            },
            sort_keys=True,
        )
