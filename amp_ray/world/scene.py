"""Scenes of the synthetic world: a few coloured shapes on a dark, noisy background.

Every image has exact ground truth (kind, colour, slot, position of each object), so
hallucination is measured exactly. A planted co-occurrence (the trigger kind comes with the partner
kind far more often than chance) gives a model trained on the biased splits a language prior that
names the partner where only the trigger is present: the bias-driven hallucination alignment must
remove. Layout and sizes follow docs/world.md: 3 horizontal slots, objects listed left to right.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
PALETTE = {
    "red": (220, 45, 45),
    "green": (45, 200, 70),
    "blue": (60, 90, 235),
    "yellow": (230, 215, 50),
    "white": (235, 235, 235),
    "orange": (240, 140, 30),
    "purple": (170, 70, 210),
    "cyan": (50, 210, 220),
}
SLOT_CENTRES = (0.19, 0.50, 0.81)  # x of the 3 slots, as a share of the width
BACKGROUND = 30
NOISE_SD = 8.0
RADIUS_SHARE = 4.5 / 32

Mode = Literal["biased", "unbiased", "bias_probe", "control"]


@dataclass(frozen=True)
class WorldObject:
    kind: str
    colour: str
    slot: int
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]  # sorted left to right

    @property
    def kinds(self) -> list[str]:
        return [obj.kind for obj in self.objects]

    def has(self, kind: str) -> bool:
        return kind in self.kinds

    def to_json(self) -> list[dict]:
        return [asdict(obj) for obj in self.objects]


@dataclass(frozen=True)
class SceneSampler:
    """Draws scenes; `mode` chooses the distribution (biased for SFT, unbiased, the probes)."""

    kinds: tuple[str, ...]
    colours: tuple[str, ...]
    max_objects: int
    trigger: str
    partner: str
    strength: float
    image_size: int

    def sample(self, rng: np.random.Generator, mode: Mode) -> Scene:
        count = int(rng.integers(1, self.max_objects + 1))
        kinds = list(rng.choice(self.kinds, size=count, replace=False))
        if mode == "biased":
            kinds = self._plant_bias(rng, kinds)
        elif mode == "bias_probe":  # the trigger without its partner
            kinds = self._without(rng, kinds, self.partner, keep=self.trigger)
            if self.trigger not in kinds:
                kinds[int(rng.integers(len(kinds)))] = self.trigger
        elif mode == "control":  # neither of the two
            kinds = self._without(rng, kinds, self.partner)
            kinds = self._without(rng, kinds, self.trigger)
        slots = sorted(
            int(s) for s in rng.choice(len(SLOT_CENTRES), size=len(kinds), replace=False)
        )
        radius = RADIUS_SHARE * self.image_size
        objects = []
        for slot, kind in zip(slots, rng.permutation(kinds), strict=True):
            x = SLOT_CENTRES[slot] * self.image_size + rng.integers(-1, 2)
            y = rng.uniform(radius + 1, self.image_size - radius - 2)
            colour = str(rng.choice(self.colours))
            objects.append(WorldObject(str(kind), colour, slot, float(x), round(float(y), 2)))
        return Scene(tuple(objects))

    def _plant_bias(self, rng: np.random.Generator, kinds: list[str]) -> list[str]:
        """With the trigger present, the partner is present with probability `strength`."""
        if self.trigger not in kinds:
            return kinds
        if rng.random() >= self.strength:
            return self._without(rng, kinds, self.partner, keep=self.trigger)
        if self.partner in kinds:
            return kinds
        if len(kinds) < self.max_objects and rng.random() < 0.5:
            return [*kinds, self.partner]  # added
        others = [i for i, kind in enumerate(kinds) if kind != self.trigger]
        if not others:
            return [*kinds, self.partner] if len(kinds) < self.max_objects else kinds
        kinds[others[int(rng.integers(len(others)))]] = self.partner  # swapped in
        return kinds

    def _without(
        self, rng: np.random.Generator, kinds: list[str], kind: str, keep: str | None = None
    ) -> list[str]:
        """Replace `kind` by an absent kind other than `kind` and `keep`."""
        if kind not in kinds:
            return kinds
        spare = [k for k in self.kinds if k not in kinds and k not in (kind, keep, self.partner)]
        spare = spare or [k for k in self.kinds if k not in kinds and k != kind]
        kinds[kinds.index(kind)] = str(rng.choice(spare))
        return kinds


def render(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """The scene as an RGB uint8 array of shape (size, size, 3)."""
    pixels = np.full((size, size, 3), float(BACKGROUND))
    pixels += rng.normal(0.0, NOISE_SD, size=pixels.shape)
    ys, xs = np.mgrid[0:size, 0:size].astype(float) + 0.5
    radius = RADIUS_SHARE * size
    for obj in scene.objects:
        mask = shape_mask(obj.kind, xs - obj.x, ys - obj.y, radius)
        pixels[mask] = PALETTE[obj.colour]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at (0, 0) on the offset grids dx, dy."""
    dist = np.hypot(dx, dy)
    if kind == "circle":
        return dist <= radius
    if kind == "ring":
        return (dist <= radius) & (dist >= radius * 0.55)
    if kind == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)  # corners stick out of a circle
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius * 1.1
    if kind == "cross":
        arm = radius * 0.35
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= arm) & (np.abs(dx) <= radius)
        )
    if kind == "triangle":  # apex up, base at dy = radius
        return (dy <= radius * 0.8) & (np.abs(dx) <= (dy + radius) * 0.6)
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
