"""The synthetic world: deterministic, labelled exactly, with the planted bias where it belongs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from amp_ray.spec.blocks import WorldSpec
from amp_ray.world import World
from amp_ray.world.scene import PALETTE, SHAPES, Scene, WorldObject, render

SPLITS = {
    "sft": 3000,
    "preference": 1000,
    "eval_iid": 30,
    "eval_bias_probe": 30,
    "eval_control": 30,
}


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldSpec(splits=SPLITS))


def test_items_are_deterministic_per_seed(world: World) -> None:
    again = World(WorldSpec(splits=SPLITS))
    for index in (0, 17, 3500, world.num_images - 1):
        assert world.items(index) == again.items(index)
    other = World(WorldSpec(splits=SPLITS, seed=1))
    assert other.items(0)[0]["image"] != world.items(0)[0]["image"]


def test_locate_maps_global_indices_to_splits(world: World) -> None:
    assert world.locate(0) == ("sft", 0)
    assert world.locate(2999) == ("sft", 2999)
    assert world.locate(3000) == ("preference", 0)
    assert world.locate(world.num_images - 1) == ("eval_control", 29)
    with pytest.raises(IndexError):
        world.locate(world.num_images)


def test_pixels_match_the_annotations(world: World) -> None:
    for index in range(0, 4000, 97):
        for item in world.items(index):
            pixels = np.asarray(Image.open(io.BytesIO(item["image"])).convert("RGB"))
            for obj in json.loads(item["annotations"])["objects"]:
                if obj["kind"] == "ring":  # hollow centre: look at the ring itself
                    x, y = obj["x"] + 0.75 * 4.5, obj["y"]
                else:
                    x, y = obj["x"], obj["y"]
                assert tuple(pixels[int(y), int(x)]) == PALETTE[obj["colour"]], item["item_id"]


@pytest.mark.parametrize("centre", [(16.0, 16.0), (16.0, 13.37), (6.0, 20.8)])
def test_every_shape_renders_distinctly(centre: tuple[float, float]) -> None:
    masks = []
    for kind in SHAPES:
        scene = Scene((WorldObject(kind, "white", 1, *centre),))
        pixels = render(scene, np.random.default_rng(0), 32)
        masks.append((pixels == PALETTE["white"]).all(axis=-1))
    for i in range(len(SHAPES)):
        assert masks[i].sum() > 30
        for j in range(i):
            assert (masks[i] != masks[j]).sum() >= 10, (SHAPES[i], SHAPES[j])


def test_captions_list_objects_left_to_right(world: World) -> None:
    for index in range(0, 3000, 50):
        for item in world.items(index):
            if item["task"] != "caption":
                continue
            objects = json.loads(item["annotations"])["objects"]
            assert [o["slot"] for o in objects] == sorted(o["slot"] for o in objects)
            expected = " and ".join(f"a {o['colour']} {o['kind']}" for o in objects) + " ."
            assert item["rounds"] == [{"question": "describe the image .", "answer": expected}]


def test_existence_answers_follow_the_ground_truth(world: World) -> None:
    checked = 0
    for index in range(3000, world.num_images):
        for item in world.items(index):
            if item["task"] != "existence":
                continue
            facts = json.loads(item["annotations"])
            kinds = {o["kind"] for o in facts["objects"]}
            label = facts["rounds"][0]["label"]
            asked = facts["rounds"][0]["object"]
            assert (asked in kinds) == (label == "yes")
            assert item["rounds"][0]["answer"].startswith(label)
            checked += 1
    assert checked > 500


def test_eval_images_get_every_task_and_balanced_pope(world: World) -> None:
    items = world.items(world.num_images - 1)
    tasks = [item["item_id"].split("/")[-1] for item in items]
    assert tasks[0] == "caption" and tasks[-1] == "dialogue"
    for category in ("random", "popular", "adversarial"):
        assert f"existence-{category}-yes" in tasks and f"existence-{category}-no" in tasks
    dialogue = items[-1]["rounds"]
    assert 2 <= len(dialogue) <= 5 and dialogue[0]["question"] == "describe the image ."


def test_adversarial_negative_on_the_bias_probe_is_the_partner(world: World) -> None:
    start = 3000 + 1000 + 30
    for index in range(start, start + 30):
        items = {item["item_id"].split("/")[-1]: item for item in world.items(index)}
        assert items["existence-adversarial-no"]["rounds"][0]["question"] == "is there a square ?"


def scenes(world: World, split: str, n: int) -> list[set[str]]:
    return [set(world.scene(split, i)[0].kinds) for i in range(n)]


def test_the_planted_bias_is_in_the_sft_split_only(world: World) -> None:
    biased = [k for k in scenes(world, "sft", 4000) if "circle" in k]
    rate = sum("square" in k for k in biased) / len(biased)
    assert abs(rate - 0.9) < 0.03
    unbiased = [k for k in scenes(world, "preference", 4000) if "circle" in k]
    assert sum("square" in k for k in unbiased) / len(unbiased) < 0.4
    assert all("circle" in k and "square" not in k for k in scenes(world, "eval_bias_probe", 500))
    assert all(not k & {"circle", "square"} for k in scenes(world, "eval_control", 500))


def test_bias_strength_is_a_dial() -> None:
    weak = World(WorldSpec(splits=SPLITS, bias={"strength": 0.3}))
    triggered = [k for k in scenes(weak, "sft", 4000) if "circle" in k]
    assert abs(sum("square" in k for k in triggered) / len(triggered) - 0.3) < 0.04


def test_kinds_within_an_image_are_distinct_and_slots_unique(world: World) -> None:
    for index in range(500):
        scene, _ = world.scene("sft", index)
        assert len(set(scene.kinds)) == len(scene.kinds)
        assert len({o.slot for o in scene.objects}) == len(scene.objects)
        assert 1 <= len(scene.objects) <= 3
