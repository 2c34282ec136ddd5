"""Conversations to token ids, with the response tokens marked, through the model's chat template.

The conversation is rendered prefix by prefix with the processor's chat template and each new
piece is tokenized on its own, so the response tokens of every round are known exactly (the
template's own end-of-turn tokens included) whatever the template. The same encoder makes training
sequences, scoring sequences and generation prompts, so all three see identical prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from amp_ray.errors import DataError


@dataclass
class Encoded:
    """One conversation: token ids, a weight per token (0 outside responses), vision inputs."""

    input_ids: list[int]
    response_weights: list[float]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # batch dim 1, e.g. pixel_values

    def __len__(self) -> int:
        return len(self.input_ids)


def messages_for(questions: Sequence[str], answers: Sequence[str]) -> list[dict[str, Any]]:
    """HF chat messages; the image goes with the first question."""
    messages: list[dict[str, Any]] = []
    for t, question in enumerate(questions):
        content: list[dict[str, str]] = [{"type": "image"}] if t == 0 else []
        content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        if t < len(answers):
            messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": answers[t]}]}
            )
    return messages


def encode_conversation(
    processor: Any,
    image: Image.Image,
    questions: Sequence[str],
    answers: Sequence[str],
    answer_start: str = "",
) -> Encoded:
    """Encode a dialogue. With one answer per question the answers are marked as responses
    (weight 1; each answer is one run of weighted tokens, logprobs.response_rounds); with one
    answer fewer, the sequence ends with
    the generation prompt for the last question, followed by `answer_start` (the beginning of
    the answer that generation is to continue, as BDHS's reference-guided completion needs)."""
    if len(answers) not in (len(questions), len(questions) - 1) or not questions:
        raise DataError(f"{len(questions)} question(s) need as many answers, or one fewer")
    if answer_start and len(answers) == len(questions):
        raise DataError("answer_start continues an unanswered question; every one is answered")
    messages = messages_for(questions, answers)
    input_ids: list[int] = []
    weights: list[float] = []
    vision: dict[str, torch.Tensor] = {}
    rendered = ""
    for k in range(1, len(messages) + 1):
        is_prompt = messages[k - 1]["role"] == "user"
        text = processor.apply_chat_template(
            messages[:k], tokenize=False, add_generation_prompt=is_prompt
        )
        if not text.startswith(rendered):
            raise DataError(
                "the chat template renders a conversation differently from its prefix; "
                "response tokens cannot be marked exactly"
            )
        piece, rendered = text[len(rendered) :], text
        if k == 1:
            encoded = process(processor, piece, image)
            ids = encoded["input_ids"][0].tolist()
            vision = vision_of(encoded)
        else:
            ids = processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        weight = 0.0 if is_prompt else 1.0
        input_ids += ids
        weights += [weight] * len(ids)
    if answer_start.strip():
        partial = {"role": "assistant", "content": [{"type": "text", "text": answer_start}]}
        text = processor.apply_chat_template(
            [*messages, partial], tokenize=False, continue_final_message=True
        )
        if not text.startswith(rendered):
            raise DataError("the chat template cannot continue a partial answer")
        ids = processor.tokenizer(text[len(rendered) :], add_special_tokens=False)["input_ids"]
        input_ids += ids
        weights += [0.0] * len(ids)
    return Encoded(input_ids, weights, vision)


# token-aligned outputs of a processor: the ids and mask are rebuilt by `collate`; Qwen's
# mm_token_type_ids is derived from the ids where it is needed (families/qwen2_vl.py)
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def vision_of(processed: Any) -> dict[str, torch.Tensor]:
    """The vision inputs of a processor's output: everything but the text's."""
    return {key: value for key, value in processed.items() if key not in TEXT_KEYS}


def image_inputs(processor: Any, image: Image.Image) -> dict[str, torch.Tensor]:
    """The vision inputs the processor makes for `image`, as `encode_conversation` gets them:
    the same call, over the image's turn alone (pixel_values, and per family image_sizes,
    image_grid_thw or pixel_attention_mask). Training builds them from the stored image."""
    text = processor.apply_chat_template(messages_for([""], []), tokenize=False)
    return vision_of(process(processor, text, image))


def process(processor: Any, text: str, image: Image.Image) -> Any:
    """The processor over one text piece and its image; an image the family's processor rejects
    (too small, a shape it cannot tile) or a placeholder count it refuses is a DataError that
    names the processor and the image, so that the row goes to quarantine."""
    try:
        return processor(text=[text], images=[image], add_special_tokens=False, return_tensors="pt")
    except (ValueError, TypeError, IndexError) as exc:
        raise DataError(
            f"{type(processor).__name__} rejects the image ({image.width}x{image.height} "
            f"{image.mode}): {exc}"
        ) from None


def collate(
    examples: Sequence[Encoded], pad_token_id: int, padding_side: str
) -> dict[str, torch.Tensor]:
    """Pad a batch: `left` for generation, `right` for training and scoring.

    Returns input_ids, attention_mask, response_weights, and the vision inputs batched as the
    families' processors batch images (`stack_vision`). Positions are the model's to make
    (`families.forward_inputs`): Qwen2-VL's depend on the image grid.
    """
    length = max(len(example) for example in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    weights = torch.zeros((len(examples), length), dtype=torch.float32)
    for row, example in enumerate(examples):
        n = len(example)
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[row, span] = torch.tensor(example.input_ids)
        mask[row, span] = 1
        weights[row, span] = torch.tensor(example.response_weights)
    batch = {"input_ids": ids, "attention_mask": mask, "response_weights": weights}
    return batch | stack_vision([example.vision for example in examples])


def stack_vision(visions: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Items' vision inputs as one batch: every axis after the first zero-padded to the largest
    among the items, then concatenated. That is what the processors do for a batch of images:
    LLaVA-NeXT / OneVision tiles and Idefics3 images are padded (the models drop all-zero
    tiles), Qwen's packed patches [patches, dim] and grids are concatenated in item order."""
    if any(vision.keys() != visions[0].keys() for vision in visions):
        raise DataError("the items of a batch have different vision inputs (mixed families?)")
    batch = {}
    for key in visions[0]:
        tensors = [vision[key] for vision in visions]
        largest = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors), strict=True)]
        padded = []
        for tensor in tensors:
            # F.pad takes (before, after) pairs from the last axis back
            short = [want - have for have, want in zip(tensor.shape[1:], largest, strict=True)]
            widths = [width for missing in reversed(short) for width in (0, missing)]
            padded.append(torch.nn.functional.pad(tensor, widths) if any(short) else tensor)
        batch[key] = torch.cat(padded)
    return batch
