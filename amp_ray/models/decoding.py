"""Batched generation with left padding, optional hidden image tokens, and multi-round answering.

Multi-round answering follows the MRHal-Bench protocol: the image goes with the first question and
the model's own earlier answers (not the references) form the history of later rounds.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from amp_ray.models.conversation import collate, encode_conversation
from amp_ray.models.families import forward_inputs
from amp_ray.spec.alignment import SamplingSpec


@dataclass(frozen=True)
class Generated:
    text: str
    finished: bool  # stopped at an end token rather than at max_new_tokens
    num_tokens: int


def generation_kwargs(sampling: SamplingSpec, tokenizer: Any) -> dict[str, Any]:
    """HF `generate` arguments for a SamplingSpec (temperature and top_p only when sampling)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": sampling.do_sample,
        "num_beams": sampling.num_beams,
        "num_return_sequences": sampling.num_samples,
        "repetition_penalty": sampling.repetition_penalty,
        "no_repeat_ngram_size": sampling.no_repeat_ngram_size,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if sampling.do_sample:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


# Per tokenizer object (weakly held, so a freed tokenizer's id cannot alias a new one's).
_STOP_IDS: weakref.WeakKeyDictionary[Any, dict[str, set[int]]] = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer: Any, stop: str) -> set[int]:
    """Ids of the tokens whose text contains `stop`: generation ends a row on any of them.

    Used instead of HF's `stop_strings`, which needs a tokenizer that can encode arbitrary
    text (a word-level vocabulary cannot). Computed once per tokenizer (one pass over the vocab).
    """
    known = _STOP_IDS.setdefault(tokenizer, {})
    if stop not in known:
        special = set(tokenizer.all_special_ids)
        known[stop] = {
            token
            for token in tokenizer.get_vocab().values()
            if token not in special and stop in tokenizer.decode([token])
        }
    return known[stop]


@torch.inference_mode()
def generate(
    model: Any,
    processor: Any,
    batch: dict[str, torch.Tensor],
    sampling: SamplingSpec,
    attention_mask: torch.Tensor | None = None,
    stop_at: str | None = None,
) -> list[Generated]:
    """Continue every prompt of a left-padded batch; `num_samples` results per prompt, in order.

    `attention_mask` overrides the batch's mask (hidden image tokens); position ids stay the
    batch's, so hiding a token does not move the ones after it. `stop_at` ends each text at the
    first occurrence of that string (kept), e.g. "." to complete one sentence.
    """
    tokenizer = processor.tokenizer
    on_device = {k: v.to(model.device) for k, v in batch.items() if k != "response_weights"}
    hidden = attention_mask.to(model.device) if attention_mask is not None else None
    # explicit positions: generate() continues them (Qwen2-VL's M-RoPE too) and would otherwise
    # derive them from a mask with hidden image tokens
    inputs = forward_inputs(model, on_device, hidden)
    kwargs = generation_kwargs(sampling, tokenizer)
    eos = model.generation_config.eos_token_id
    end_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    stops = stop_token_ids(tokenizer, stop_at) if stop_at is not None else set()
    if stops:
        kwargs["eos_token_id"] = sorted(end_ids | stops)
    output = model.generate(**inputs, **kwargs)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    results = []
    enders = end_ids | stops
    for row in new_tokens.tolist():
        ended_at = next((i for i, token in enumerate(row) if token in enders), None)
        if ended_at is not None and row[ended_at] in stops:
            ended_at += 1  # the stop token is part of the text
        kept = row if ended_at is None else row[:ended_at]
        kept = [token for token in kept if token != tokenizer.pad_token_id]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        finished = ended_at is not None
        if stop_at is not None and stop_at in text:
            text, finished = text[: text.index(stop_at) + len(stop_at)], True
        results.append(Generated(text, finished, len(kept)))
    return results


def by_rounds(
    dialogues: Sequence[Sequence[str]],
    answer_round: Callable[[list[int], int, list[list[Generated]]], list[Generated]],
) -> list[list[Generated]]:
    """The MRHal protocol for any engine: round t of every dialogue that has one is answered in
    one batch, `answer_round(active, t, answers)` giving the answers of dialogues `active` with
    their own earlier `answers` as history."""
    answers: list[list[Generated]] = [[] for _ in dialogues]
    for t in range(max(len(questions) for questions in dialogues)):
        active = [i for i, questions in enumerate(dialogues) if t < len(questions)]
        for i, result in zip(active, answer_round(active, t, answers), strict=True):
            answers[i].append(result)
    return answers


def answer_dialogues(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    dialogues: Sequence[Sequence[str]],
    sampling: SamplingSpec,
) -> list[list[Generated]]:
    """Answer every round of every dialogue, batched across dialogues round by round; the
    model's own answers form the history (one sample per question)."""
    single = sampling.model_copy(update={"num_samples": 1})

    def answer_round(active: list[int], t: int, answers: list[list[Generated]]) -> list[Generated]:
        encoded = [
            encode_conversation(
                processor, images[i], dialogues[i][: t + 1], [a.text for a in answers[i]]
            )
            for i in active
        ]
        batch = collate(encoded, processor.tokenizer.pad_token_id, padding_side="left")
        return generate(model, processor, batch, single)

    return by_rounds(dialogues, answer_round)


@dataclass
class HfEngine:
    """One model answering with HF `generate` in this process (models/loading.load_for_inference):
    the engine of every family and setting; generation/vllm_engine.VllmEngine is the other."""

    model: Any
    processor: Any
    name: str = "hf"

    @property
    def max_model_len(self) -> int | None:
        from amp_ray.models.loading import max_positions

        return max_positions(self.model)

    def answer_dialogues(
        self,
        images: Sequence[Image.Image],
        dialogues: Sequence[Sequence[str]],
        sampling: SamplingSpec,
        seeds: Sequence[int],
    ) -> list[list[Generated]]:
        """`answer_dialogues`; HF samples from torch's global generator, which the caller seeds
        per batch, so `seeds` (vLLM's per-dialogue seeds) are not used."""
        return answer_dialogues(self.model, self.processor, images, dialogues, sampling)
