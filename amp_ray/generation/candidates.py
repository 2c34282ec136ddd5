"""What every candidate generator shares: a model loaded once per actor, rows in, candidates out.

A generation stage chains one Ray Data actor pool per model (MEG experts, IG checkpoints, the
BDHS policy) over a stream of item rows. Each pool appends its answers to the row's `candidates`
list, so one row per item flows through the whole chain and is written once, with every
candidate, when the last pool is done. A row that cannot be answered (unreadable image, a prompt
longer than the model allows) gets a quarantine reason; later pools pass it through untouched.
"""

from __future__ import annotations

import json
import zlib
from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa
import torch
from PIL import Image

from amp_ray.data.encode import load_image
from amp_ray.errors import DataError
from amp_ray.models.registry import ActorModel
from amp_ray.spec.engines import VllmSpec
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import CANDIDATES

CANDIDATE_ROWS = CANDIDATES.append(pa.field(QUARANTINE_REASON, pa.string()))


def start_candidates(batch: pa.Table) -> pa.Table:
    """Item rows (ITEMS schema) as the start of the chain: no candidates yet, and a quarantine
    reason for items no generator can use (no rounds, an empty question or reference)."""
    rows = batch.to_pylist()
    for row in rows:
        row["candidates"] = []
        row[QUARANTINE_REASON] = reference_problem(row)
    return pa.Table.from_pylist(rows, schema=CANDIDATE_ROWS)


def reference_problem(row: dict[str, Any]) -> str | None:
    rounds = row.get("rounds") or []
    if not rounds:
        return "the item has no rounds"
    for t, turn in enumerate(rounds):
        if not (turn.get("question") or "").strip():
            return f"round {t} has an empty question"
        if not (turn.get("answer") or "").strip():
            return f"round {t} has an empty reference answer (nothing to prefer)"
    return None


def candidate(
    generator: str, source: str, index: int, initial_rank: int, answers: list[str], **info: Any
) -> dict[str, Any]:
    """One CANDIDATE struct; `index` tells apart several samples of one source."""
    return {
        "candidate_id": f"{generator}:{source}:{index}",
        "generator": generator,
        "source": source,
        "initial_rank": initial_rank,
        "answers": answers,
        "info": json.dumps(info, sort_keys=True),
    }


def stable_seed(*parts: Any) -> int:
    """A seed from strings and numbers that is the same in every process (unlike hash())."""
    return zlib.crc32(json.dumps(parts, default=str).encode())


def load_engine(model: ActorModel, vllm: VllmSpec | None = None, seed: int = 0) -> Any:
    """The engine an actor answers with: HF `generate` (models/decoding.HfEngine), or given
    `vllm` settings a vLLM engine (generation/vllm_engine.VllmEngine). Both have `processor`,
    `max_model_len` and `answer_dialogues(images, dialogues, sampling, seeds)`."""
    if vllm is not None:
        from amp_ray.generation.vllm_engine import VllmEngine

        return VllmEngine(model, vllm, seed)
    from amp_ray.models.decoding import HfEngine
    from amp_ray.models.loading import load_for_inference

    return HfEngine(*load_for_inference(model))


class CandidateGenerator(ABC):
    """Ray Data callable base: loads one model and its processor per actor, in HF or, given
    `vllm` settings, on a vLLM engine (`load_engine`); subclasses answer."""

    def __init__(self, model: ActorModel, seed: int = 0, vllm: VllmSpec | None = None) -> None:
        self.engine = load_engine(model, vllm, seed)
        # the HF model itself (None on vLLM): BDHS hides image tokens through it
        self.model = getattr(self.engine, "model", None)
        self.processor = self.engine.processor
        self.model_name = model.name
        self.storage = model.storage
        self.seed = seed
        self.max_new_tokens = 0  # subclasses set their generation budget

    @abstractmethod
    def make(self, rows: list[dict[str, Any]], images: list[Image.Image]) -> list[list[dict]]:
        """The new candidates of each row (rows all have a readable image)."""

    def check_fits(self, row: dict[str, Any], image: Image.Image) -> None:
        """The reference dialogue plus the new tokens must fit the model's positions: an item
        that does not is set aside, never truncated (cutting image tokens breaks the model)."""
        from amp_ray.models.conversation import encode_conversation

        limit = self.engine.max_model_len
        if limit is None:
            return
        questions, references = questions_and_references(row)
        length = len(encode_conversation(self.processor, image, questions, references))
        if length + self.max_new_tokens > limit:
            raise DataError(
                f"{length} tokens plus {self.max_new_tokens} new ones exceed the model's "
                f"{limit} positions"
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo, images = [], []
        for index, row in enumerate(rows):
            if row[QUARANTINE_REASON] is not None:
                continue
            try:
                image = load_image(row, self.storage)
                self.check_fits(row, image)
            except DataError as exc:
                row[QUARANTINE_REASON] = exc.message
                continue
            images.append(image)
            todo.append(index)
        if todo:
            # Reproducible sampling: the same rows give the same candidates on every run.
            torch.manual_seed(stable_seed(self.seed, self.model_name, rows[todo[0]]["item_id"]))
            made = self.make([rows[i] for i in todo], images)
            for index, new in zip(todo, made, strict=True):
                rows[index]["candidates"] = [*rows[index]["candidates"], *new]
        return pa.Table.from_pylist(rows, schema=CANDIDATE_ROWS)


def questions_and_references(row: dict[str, Any]) -> tuple[list[str], list[str]]:
    rounds = row["rounds"] or []
    return [turn["question"] for turn in rounds], [turn["answer"] for turn in rounds]
