"""The HF model layer on a tiny LLaVA: build and reload, encoding, log-probs, hiding, generation."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from amp_ray.errors import DataError
from amp_ray.models.conversation import Encoded, collate, encode_conversation
from amp_ray.models.decoding import answer_dialogues, generate
from amp_ray.models.families import forward_inputs, positions_from_mask
from amp_ray.models.hiding import hide_image_tokens
from amp_ray.models.loading import image_token_id, load_model, load_processor
from amp_ray.models.logprobs import response_rounds, round_logprobs, sequence_logprobs
from amp_ray.models.registry import LoadOptions
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.blocks import LoraSpec

GREEDY = SamplingSpec(max_new_tokens=6, do_sample=False, num_beams=1, repetition_penalty=1.0)


@pytest.fixture(scope="session")
def tiny(tiny_dir: str) -> tuple:
    torch.manual_seed(0)
    return load_model(tiny_dir, LoadOptions("float32")).eval(), load_processor(tiny_dir)


def image_of(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(item["image"])).convert("RGB")


def caption_batch(processor, item: dict) -> dict:
    """One caption example, right-padded the way training batches it."""
    encoded = encode_conversation(
        processor, image_of(item), ["describe the image ."], ["a red circle ."]
    )
    return collate([encoded], processor.tokenizer.pad_token_id, "right")


def dialogue(world_items: list[dict]) -> dict:
    return next(
        item for item in world_items if item["task"] == "dialogue" and len(item["rounds"]) >= 3
    )


def rounds_of(item: dict) -> tuple[list[str], list[str]]:
    return [t["question"] for t in item["rounds"]], [t["answer"] for t in item["rounds"]]


def test_tokenizer_ids_depend_on_the_set_of_words_only() -> None:
    from amp_ray.models.tiny import SPECIAL_TOKENS, build_tokenizer

    texts = ["a red circle .", "a blue square ."]
    # the same words, other frequencies and order, one text more: the same ids
    again = ["a blue square .", "a blue square .", "a red circle .", "circle circle"]
    vocab = build_tokenizer(texts).get_vocab()
    assert vocab == build_tokenizer(again).get_vocab()
    words = sorted({"a", "red", "circle", ".", "blue", "square"})
    assert vocab == {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    # a new word takes its sorted place: ids after it move, the special tokens never do
    grown = build_tokenizer([*texts, "a green circle ."]).get_vocab()
    assert [grown[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert grown["green"] == len(SPECIAL_TOKENS) + sorted([*words, "green"]).index("green")


def test_a_saved_tiny_model_loads_offline_in_a_fresh_process(tiny_dir: str) -> None:
    code = (
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        f"m = AutoModelForImageTextToText.from_pretrained({tiny_dir!r})\n"
        f"p = AutoProcessor.from_pretrained({tiny_dir!r})\n"
        "print(type(m).__name__, type(p).__name__, p.tokenizer.padding_side)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["LlavaForConditionalGeneration", "LlavaProcessor", "left"]
    assert (Path(tiny_dir) / "model.safetensors").exists()


def test_the_processor_inserts_one_token_per_image_feature(
    tiny: tuple, world_items: list[dict]
) -> None:
    model, processor = tiny
    batch = caption_batch(processor, world_items[0])
    count = batch["input_ids"][0].tolist().count(image_token_id(model))
    assert count == (32 // 8) ** 2  # 16 patches; CLS dropped by the "default" strategy
    with torch.no_grad():
        assert torch.isfinite(sequence_logprobs(model, batch)).all()


def test_response_weights_cover_exactly_the_answers_and_their_end_tokens(
    tiny: tuple, world_items: list[dict]
) -> None:
    _, processor = tiny
    item = dialogue(world_items)
    questions, answers = rounds_of(item)
    encoded = encode_conversation(processor, image_of(item), questions, answers)
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded.input_ids)
    weights = torch.tensor([encoded.response_weights])
    rounds = response_rounds(weights)[0].tolist()
    marked: dict[int, list[str]] = {}
    for token, weight, t in zip(tokens, encoded.response_weights, rounds, strict=True):
        assert (weight == 1.0) == (t >= 0) and weight in (0.0, 1.0)
        if weight:
            marked.setdefault(t, []).append(token)
    # each answer is one run of marked tokens, its own round
    assert marked == {t: [*answer.split(), "<eos>"] for t, answer in enumerate(answers)}


def test_a_generation_prompt_ends_where_the_answer_would_start(
    tiny: tuple, world_items: list[dict]
) -> None:
    _, processor = tiny
    item = dialogue(world_items)
    questions, answers = rounds_of(item)
    full = encode_conversation(processor, image_of(item), questions[:2], answers[:2])
    prompt = encode_conversation(processor, image_of(item), questions[:2], answers[:1])
    assert full.input_ids[: len(prompt)] == prompt.input_ids
    assert not any(prompt.response_weights[len(prompt) - 1 :])
    with pytest.raises(DataError, match="need as many answers, or one fewer"):
        encode_conversation(processor, image_of(item), questions[:1], answers[:3])


def direct_logprob(model, encoded) -> float:
    """Σ_t w_t log softmax(logits_{t-1})[token_t], one sequence at a time, no batching."""
    with torch.no_grad():
        ids = torch.tensor([encoded.input_ids])
        logits = model(input_ids=ids, pixel_values=encoded.vision["pixel_values"]).logits[0]
        logp = logits.double().log_softmax(-1)
    return sum(
        encoded.response_weights[t] * logp[t - 1, encoded.input_ids[t]].item()
        for t in range(1, len(encoded.input_ids))
    )


def test_sequence_logprobs_equal_a_direct_computation(tiny: tuple, world_items: list[dict]) -> None:
    model, processor = tiny
    picks = [world_items[0], dialogue(world_items), world_items[5]]
    encoded = [
        encode_conversation(
            processor,
            image_of(item),
            [turn["question"] for turn in item["rounds"]],
            [turn["answer"] for turn in item["rounds"]],
        )
        for item in picks
    ]
    assert len({len(e) for e in encoded}) > 1  # the batch really pads
    batch = collate(encoded, processor.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        batched = sequence_logprobs(model, batch)
        per_round = round_logprobs(model, batch)
    expected = torch.tensor([direct_logprob(model, e) for e in encoded], dtype=batched.dtype)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-4)
    # per round: the dialogue's rounds one by one, zeros past a caption's single round
    rounds = [len(item["rounds"]) for item in picks]
    assert per_round.shape == (3, max(rounds)) and rounds[1] > 1
    for row, (e, count) in enumerate(zip(encoded, rounds, strict=True)):
        assert not per_round[row, count:].any()
        token_rounds = response_rounds(torch.tensor([e.response_weights]))[0].tolist()
        for t in range(count):
            only_t = [float(r == t) for r in token_rounds]
            want = direct_logprob(model, Encoded(e.input_ids, only_t, e.vision))
            assert per_round[row, t].item() == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_positions_ignore_padding() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0]]


def prompts(processor, items: list[dict]) -> dict:
    encoded = [
        encode_conversation(processor, image_of(item), ["describe the image ."], [])
        for item in items
    ]
    return collate(encoded, processor.tokenizer.pad_token_id, "left")


def test_hiding_no_image_token_changes_nothing(tiny: tuple, world_items: list[dict]) -> None:
    model, processor = tiny
    batch = prompts(processor, world_items[:3])
    unchanged = hide_image_tokens(
        batch["input_ids"], batch["attention_mask"], image_token_id(model), 0.0
    )
    assert torch.equal(unchanged, batch["attention_mask"])
    assert generate(model, processor, batch, GREEDY, unchanged) == generate(
        model, processor, batch, GREEDY
    )


def test_hiding_every_image_token_makes_the_image_irrelevant(
    tiny: tuple, world_items: list[dict]
) -> None:
    model, processor = tiny
    items = [world_items[0], world_items[7]]
    assert items[0]["image"] != items[1]["image"]
    batch = prompts(processor, items)
    image_id = image_token_id(model)
    hidden = hide_image_tokens(batch["input_ids"], batch["attention_mask"], image_id, 1.0)
    assert hidden[batch["input_ids"] == image_id].sum() == 0
    with torch.no_grad():
        logits = model(**forward_inputs(model, batch, hidden)).logits[:, -1]
    torch.testing.assert_close(logits[0], logits[1])  # same text, different images, same output
    visible = model(**forward_inputs(model, batch)).logits[:, -1]
    assert not torch.allclose(visible[0], visible[1])


def test_partial_hiding_changes_scores_but_not_positions(
    tiny: tuple, world_items: list[dict]
) -> None:
    model, processor = tiny
    batch = caption_batch(processor, world_items[0])
    generator = torch.Generator().manual_seed(0)
    half = hide_image_tokens(
        batch["input_ids"],
        batch["attention_mask"],
        image_token_id(model),
        0.5,
        generator,
    )
    assert 0 < int((1 - half).sum()) < 16
    with torch.no_grad():
        assert not torch.allclose(
            sequence_logprobs(model, batch, half), sequence_logprobs(model, batch)
        )


def test_left_padded_batches_generate_what_single_prompts_do(
    tiny: tuple, world_items: list[dict]
) -> None:
    model, processor = tiny
    items = [world_items[0], dialogue(world_items), world_items[3]]
    together = generate(model, processor, prompts(processor, items), GREEDY)
    alone = [generate(model, processor, prompts(processor, [item]), GREEDY)[0] for item in items]
    assert [g.text for g in together] == [g.text for g in alone]


def test_dialogues_use_the_models_own_answers_as_history(
    tiny: tuple, world_items: list[dict]
) -> None:
    model, processor = tiny
    item = dialogue(world_items)
    questions = [turn["question"] for turn in item["rounds"]]
    (answers,) = answer_dialogues(model, processor, [image_of(item)], [questions], GREEDY)
    assert len(answers) == len(questions)
    own = [a.text for a in answers]
    encoded = encode_conversation(processor, image_of(item), questions[:2], own[:1])
    second = generate(
        model, processor, collate([encoded], processor.tokenizer.pad_token_id, "left"), GREEDY
    )
    assert second[0].text == own[1]


def test_lora_leaves_only_adapters_trainable(tiny_dir: str) -> None:
    model = load_model(
        tiny_dir,
        LoadOptions("float32"),
        lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_models_load_with_their_attention_kernels_and_flash_attention_needs_its_package(
    tiny_dir: str,
) -> None:
    from transformers.utils import is_flash_attn_2_available

    from amp_ray.errors import AmpRayError

    eager = load_model(tiny_dir, LoadOptions("float32", attn_implementation="eager"))
    assert eager.config._attn_implementation == "eager"
    assert load_model(tiny_dir).config._attn_implementation == "sdpa"
    if is_flash_attn_2_available():  # a CUDA node with flash-attn: the GPU check
        return
    with pytest.raises(AmpRayError, match="flash_attention_2 needs the flash-attn package"):
        load_model(tiny_dir, LoadOptions(attn_implementation="flash_attention_2"))
