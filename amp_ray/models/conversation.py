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
    round_weight_step: float = 0.0,
    answer_start: str = "",
) -> Encoded:
    """Encode a dialogue. With one answer per question the answers are marked as responses
    (round t's tokens weigh 1 + round_weight_step·t); with one answer fewer, the sequence ends with
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
            encoded = processor(
                text=[piece], images=[image], add_special_tokens=False, return_tensors="pt"
            )
            ids = encoded["input_ids"][0].tolist()
            vision = vision_of(encoded)
        else:
            ids = processor.tokenizer(piece, add_special_tokens=False)["input_ids"]
        weight = 0.0 if is_prompt else 1.0 + round_weight_step * ((k - 1) // 2)
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


TEXT_KEYS = ("input_ids", "attention_mask")


def vision_of(processed: Any) -> dict[str, torch.Tensor]:
    """The vision inputs of a processor's output: everything but the text's."""
    return {key: value for key, value in processed.items() if key not in TEXT_KEYS}


def image_inputs(processor: Any, image: Image.Image) -> dict[str, torch.Tensor]:
    """The vision inputs the processor makes for `image`, as `encode_conversation` gets them:
    the same call, over the image's turn alone (pixel_values, and per family image_sizes,
    image_grid_thw or pixel_attention_mask). Training builds them from the stored image."""
    text = processor.apply_chat_template(messages_for([""], []), tokenize=False)
    processed = processor(
        text=[text], images=[image], add_special_tokens=False, return_tensors="pt"
    )
    return vision_of(processed)


def collate(
    examples: Sequence[Encoded], pad_token_id: int, padding_side: str
) -> dict[str, torch.Tensor]:
    """Pad a batch: `left` for generation, `right` for training and scoring.

    Returns input_ids, attention_mask, position_ids (counting real tokens only, so left padding
    does not shift positions), response_weights, and the vision inputs concatenated.
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
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions_from_mask(mask),
        "response_weights": weights,
    }
    for key in examples[0].vision:
        batch[key] = torch.cat([example.vision[key] for example in examples])
    return batch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the real tokens (0, 1, 2, ...), 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0) * attention_mask.long()
