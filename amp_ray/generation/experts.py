"""Multi-size expert generation (MEG) and incremental generation (IG): AMP §3.1 (a), (b).

Both answer every item with one model per pool: MEG with experts of one family and several sizes
(initial rank: larger above smaller), IG with one base model fine-tuned on nested data subsets
and the untuned base (initial rank: more data above less). Dialogues are answered round by round
with the model's own earlier answers as history, as the item would be answered at inference.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from amp_ray.generation.candidates import (
    CandidateGenerator,
    candidate,
    questions_and_references,
    stable_seed,
)
from amp_ray.models.registry import ActorModel
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.engines import VllmSpec


class ModelCandidates(CandidateGenerator):
    """Ray Data callable: `num_samples` answers per item from one model (expert or checkpoint)."""

    def __init__(
        self,
        model: ActorModel,
        generator: str,
        initial_rank: int,
        sampling: SamplingSpec,
        seed: int = 0,
        vllm: VllmSpec | None = None,
    ) -> None:
        super().__init__(model, seed, vllm)
        self.generator = generator
        self.initial_rank = initial_rank
        self.sampling = sampling
        self.max_new_tokens = sampling.max_new_tokens

    def make(self, rows: list[dict[str, Any]], images: list[Image.Image]) -> list[list[dict]]:
        samples = self.sampling.num_samples
        dialogues = [questions_and_references(row)[0] for row in rows]
        # Each sample is its own dialogue: its later rounds follow its own earlier answers.
        images = [image for image in images for _ in range(samples)]
        dialogues = [questions for questions in dialogues for _ in range(samples)]
        # vLLM samples with a seed per sample and item: the same answers whatever shares it
        seeds = [
            stable_seed(self.seed, self.model_name, row["item_id"], s)
            for row in rows
            for s in range(samples)
        ]
        answered = self.engine.answer_dialogues(images, dialogues, self.sampling, seeds)
        # HF candidates stay as they were; others say which engine made them
        engine = {} if self.engine.name == "hf" else {"engine": self.engine.name}
        out = []
        for r in range(len(rows)):
            mine = answered[r * samples : (r + 1) * samples]
            out.append(
                [
                    candidate(
                        self.generator,
                        self.model_name,
                        s,
                        self.initial_rank,
                        [g.text for g in dialogue],
                        finished=[g.finished for g in dialogue],
                        **engine,
                    )
                    for s, dialogue in enumerate(mine)
                ]
            )
        return out
