"""One forward for the K levels of an item: the shared-prefix path equals K full sequences."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from amp_ray.errors import DataError
from amp_ray.models.conversation import Encoded, encode_conversation
from amp_ray.models.level_scoring import LevelScorer, collate_levels, shared_prefix_length
from amp_ray.models.loading import load_model, load_processor
from amp_ray.models.registry import LoadOptions


@pytest.fixture(scope="module")
def tiny64(tiny_dir: str) -> tuple:
    torch.manual_seed(0)
    model = load_model(tiny_dir, LoadOptions("float32")).double()
    return model, load_processor(tiny_dir)


def item_levels(processor, item: dict, num_levels: int) -> list[Encoded]:
    """K answers to the item's dialogue: the reference, then ones with words dropped or swapped."""
    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    questions = [turn["question"] for turn in item["rounds"]]
    answers = [turn["answer"] for turn in item["rounds"]]
    levels = []
    for k in range(num_levels):
        varied = [" ".join(answer.split()[k:]) or "no ." for answer in answers]
        levels.append(encode_conversation(processor, image, questions, varied))
    return levels


def batch_of(processor, world_items: list[dict], num_levels: int) -> list[list[Encoded]]:
    caption = next(i for i in world_items if i["task"] == "caption")
    dialogue = next(i for i in world_items if i["task"] == "dialogue" and len(i["rounds"]) >= 3)
    return [item_levels(processor, item, num_levels) for item in (caption, dialogue)]


@pytest.mark.parametrize("num_levels", [2, 4])
def test_shared_prefix_equals_full_sequences(tiny64, world_items, num_levels: int) -> None:
    model, processor = tiny64
    items = batch_of(processor, world_items, num_levels)
    pad = processor.tokenizer.pad_token_id
    results = {}
    for mode in ("shared", "full"):
        model.zero_grad()
        logps = LevelScorer(model, mode)(collate_levels(items, pad, mode))
        (logps * torch.linspace(1, 2, logps.numel()).view_as(logps)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[mode] = (logps.detach(), grads)
    shared, full = results["shared"], results["full"]
    # per round: the caption's one, the dialogue's each (the caption's later rounds are 0)
    dialogue = next(i for i in world_items if i["task"] == "dialogue" and len(i["rounds"]) >= 3)
    assert shared[0].shape == (2, num_levels, len(dialogue["rounds"]))
    assert not shared[0][0, :, 1:].any() and (shared[0][1] < 0).all()
    torch.testing.assert_close(shared[0], full[0], rtol=1e-10, atol=1e-10)
    assert shared[1].keys() == full[1].keys()
    # the gradient reaches the vision tower through the repeated cache
    assert any("vision_tower" in name for name in shared[1])
    for name, grad in full[1].items():
        # float64 model; the processor's pixel values stay float32, hence 1e-6 and not 1e-12
        error = (shared[1][name] - grad).abs().max().item()
        assert error <= 1e-6 * grad.abs().max().item() + 1e-12, name


def test_prefix_stops_before_the_first_response_token(tiny64, world_items) -> None:
    _, processor = tiny64
    levels = batch_of(processor, world_items, 3)[1]
    cut = shared_prefix_length(levels)
    first_response = min(
        next(t for t, w in enumerate(level.response_weights) if w) for level in levels
    )
    assert cut <= first_response
    assert all(level.input_ids[:cut] == levels[0].input_ids[:cut] for level in levels)
    # identical levels still leave every response token outside the prefix
    assert shared_prefix_length([levels[0], levels[0]]) == first_response
    with pytest.raises(DataError, match="share no prompt"):
        shared_prefix_length([Encoded([1, 2], [0, 1]), Encoded([3, 2], [0, 1])])


def test_response_lengths_count_scored_tokens(tiny64, world_items) -> None:
    _, processor = tiny64
    items = batch_of(processor, world_items, 2)
    batch = collate_levels(items, processor.tokenizer.pad_token_id, "shared")
    expected = [[sum(w > 0 for w in level.response_weights) for level in lv] for lv in items]
    assert batch["response_lengths"].tolist() == expected
    assert batch["response_input_ids"].shape[0] == 4
    assert batch["pixel_values"].shape[0] == 2
