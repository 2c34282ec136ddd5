"""Bias-driven hallucination sampling (BDHS, arXiv 2407.02477 §3.4, App. E), single and multi-level.

The rejected answer comes from the policy itself with most image tokens hidden, so that the
language prior fills in the image. Per reference answer y+ (per dialogue round):

1. every image token is hidden unless its draw ρ_i ~ U(0, 1) reaches ρ_th (models/hiding.py);
2. y+ is split into sentences; each sentence keeps a prefix up to a random word and the masked
   model completes it to the first full stop, given the reference's earlier sentences (so all
   sentences of all items run in one batched `generate`); ỹ− = the completed sentences joined;
3. a sentence that starts with yes/no has it flipped with probability `flip_yes_no` first;
4. ỹ− is accepted if cos(emb(ỹ−), emb(y+)) < `similarity_threshold` (ε_s = 0.97); otherwise it
   is drawn again with a fresh mask and split points; the last of `max_tries` tries generates a
   whole answer from the masked image with no guidance and is accepted as it is.

Multi-level BDHS (none of the papers has it): one candidate per threshold in `rho_th`, e.g.
0.5 / 0.8 / 0.99, initially ranked less hidden above more hidden; the checker re-ranks them. On
the synthetic world 99% hiding also hides the object that triggers the prior, so completions are
generic (easy negatives); 50–80% conditions the prior on it (docs/world.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from amp_ray.generation.candidates import (
    CandidateGenerator,
    candidate,
    questions_and_references,
    stable_seed,
)
from amp_ray.models.conversation import collate, encode_conversation
from amp_ray.models.decoding import generate
from amp_ray.models.hiding import hide_image_tokens
from amp_ray.models.loading import image_token_id
from amp_ray.models.registry import ActorModel
from amp_ray.ranking.chunks import sentences
from amp_ray.spec.alignment import BdhsSpec, SamplingSpec

YES_NO = {"yes": "no", "no": "yes"}


@dataclass(frozen=True)
class Guide:
    """One sentence to complete: the answer so far (earlier reference sentences + kept prefix)."""

    before: str  # the reference's earlier sentences
    prefix: str  # the kept start of this sentence (possibly with yes/no flipped)
    flipped: bool

    @property
    def answer_start(self) -> str:
        return " ".join(part for part in (self.before, self.prefix) if part)


def plan_guides(reference: str, rng: np.random.Generator, flip_yes_no: float) -> list[Guide]:
    """A random split point in every sentence of `reference` (and yes/no flips)."""
    parts = sentences(reference)
    guides = []
    for j, sentence in enumerate(parts):
        words = sentence.split()
        first = words[0].strip(",.!?").lower() if words else ""
        flipped = first in YES_NO and rng.random() < flip_yes_no
        if flipped:
            words[0] = words[0].lower().replace(first, YES_NO[first], 1)
        # Keep at least the yes/no word: the completion must follow the (flipped) answer.
        low = 1 if first in YES_NO else 0
        keep = int(rng.integers(low, max(low, len(words) - 1) + 1)) if words else 0
        guides.append(Guide(" ".join(parts[:j]), " ".join(words[:keep]), flipped))
    return guides


def join_completion(prefix: str, completion: str) -> str:
    if not prefix:
        return completion
    if not completion:
        return prefix
    return f"{prefix} {completion}" if completion[0].isalnum() else prefix + completion


@dataclass
class RoundState:
    """The BDHS draws of one (item, round): the accepted answer and how it was reached."""

    row: int
    round: int
    reference: str
    answer: str | None = None
    tries: int = 0
    similarity: float | None = None
    unguided: bool = False
    flipped: int = 0
    visible: list[float] = field(default_factory=list)


class BdhsCandidates(CandidateGenerator):
    """Ray Data callable: one BDHS rejected answer per hiding threshold, per item."""

    def __init__(
        self,
        model: ActorModel,
        bdhs: BdhsSpec,
        sampling: SamplingSpec,
        initial_rank: int,
        seed: int = 0,
    ) -> None:
        from amp_ray.ranking.encoder import TextEncoder

        super().__init__(model, seed)
        self.bdhs = bdhs
        self.sampling = sampling.model_copy(update={"num_samples": 1, "num_beams": 1})
        self.initial_rank = initial_rank
        self.max_new_tokens = sampling.max_new_tokens
        self.encoder = TextEncoder(bdhs.encoder)
        self.image_token = image_token_id(self.model)

    def make(self, rows: list[dict[str, Any]], images: list[Image.Image]) -> list[list[dict]]:
        out: list[list[dict]] = [[] for _ in rows]
        # the batch's embeddings by text: a reference is compared at every try and threshold,
        # and short answers repeat; kept per batch, so that they never depend on which batches
        # an actor saw before (the similarities, and so the answers, stay bit-reproducible)
        embeddings: dict[str, torch.Tensor] = {}
        for level, rho in enumerate(sorted(self.bdhs.rho_th)):
            states = self.rejected(rows, images, rho, embeddings)
            for r in range(len(rows)):
                mine = [s for s in states if s.row == r]
                info = {
                    "rho_th": rho,
                    "tries": [s.tries for s in mine],
                    "similarity": [s.similarity for s in mine],
                    "unguided": [s.unguided for s in mine],
                    "flipped_yes_no": sum(s.flipped for s in mine),
                    "visible_image_share": float(np.mean([v for s in mine for v in s.visible])),
                }
                answers = [str(s.answer) for s in mine]
                source = f"{self.model_name}@{rho:g}"
                rank = self.initial_rank + level
                out[r].append(candidate("bdhs", source, 0, rank, answers, **info))
        return out

    def rejected(
        self,
        rows: list[dict[str, Any]],
        images: list[Image.Image],
        rho: float,
        embeddings: dict[str, torch.Tensor],
    ) -> list[RoundState]:
        """The accepted BDHS answer of every round of every row, at threshold `rho`."""
        states = [
            RoundState(r, t, reference)
            for r, row in enumerate(rows)
            for t, reference in enumerate(questions_and_references(row)[1])
        ]
        for attempt in range(1, self.bdhs.max_tries + 1):
            pending = [s for s in states if s.answer is None]
            if not pending:
                break
            last = attempt == self.bdhs.max_tries
            drafts = self._draft(rows, images, pending, rho, attempt, guided=not last)
            references = [s.reference for s in pending]
            similarity = self._similarity([d for d, _ in drafts], references, embeddings)
            for state, (draft, flipped), sim in zip(pending, drafts, similarity, strict=True):
                state.tries, state.similarity = attempt, sim
                if last or sim < self.bdhs.similarity_threshold:
                    state.answer, state.unguided, state.flipped = draft, last, flipped
        return states

    def _draft(
        self,
        rows: list[dict[str, Any]],
        images: list[Image.Image],
        pending: list[RoundState],
        rho: float,
        attempt: int,
        guided: bool,
    ) -> list[tuple[str, int]]:
        """One draft per pending round: guided sentence completions, or a whole unguided answer."""
        prompts, owners, guides = [], [], []
        for k, state in enumerate(pending):
            row = rows[state.row]
            questions, references = questions_and_references(row)
            seed = stable_seed(self.seed, row["item_id"], state.round, rho, attempt)
            plan = (
                plan_guides(state.reference, np.random.default_rng(seed), self.bdhs.flip_yes_no)
                if guided
                else [Guide("", "", False)]
            )
            for guide in plan:
                prompts.append(
                    encode_conversation(
                        self.processor,
                        images[state.row],
                        questions[: state.round + 1],
                        references[: state.round],
                        answer_start=guide.answer_start,
                    )
                )
                owners.append(k)
                guides.append(guide)
        texts = self._generate_hidden(prompts, pending, owners, rho, attempt, guided)
        drafts: list[list[str]] = [[] for _ in pending]
        flips = [0] * len(pending)
        for k, guide, text in zip(owners, guides, texts, strict=True):
            drafts[k].append(join_completion(guide.prefix, text))
            flips[k] += guide.flipped
        return [(" ".join(parts), flips[k]) for k, parts in enumerate(drafts)]

    def _generate_hidden(
        self,
        prompts: list[Any],
        pending: list[RoundState],
        owners: list[int],
        rho: float,
        attempt: int,
        guided: bool,
    ) -> list[str]:
        batch = collate(prompts, self.processor.tokenizer.pad_token_id, padding_side="left")
        draws = torch.Generator().manual_seed(stable_seed(self.seed, rho, attempt, len(prompts)))
        mask = hide_image_tokens(
            batch["input_ids"], batch["attention_mask"], self.image_token, rho, draws
        )
        is_image = batch["input_ids"] == self.image_token
        visible = (mask.bool() & is_image).sum(-1) / is_image.sum(-1).clamp(min=1)
        for k, share in zip(owners, visible.tolist(), strict=True):
            pending[k].visible.append(share)
        torch.manual_seed(stable_seed(self.seed, "sampling", rho, attempt))
        results = generate(
            self.model,
            self.processor,
            batch,
            self.sampling,
            attention_mask=mask,
            stop_at="." if guided else None,
        )
        return [result.text for result in results]

    def _similarity(
        self, drafts: list[str], references: list[str], embeddings: dict[str, torch.Tensor]
    ) -> list[float]:
        """cos(emb(draft), emb(reference)) pairwise, encoding each text the batch has not yet
        embedded once (`embeddings`: text -> unit row, filled in)."""
        new = list(dict.fromkeys(t for t in [*drafts, *references] if t not in embeddings))
        embeddings.update(zip(new, self.encoder.encode(new), strict=True))
        pairs = zip(drafts, references, strict=True)
        return [float(embeddings[d] @ embeddings[r]) for d, r in pairs]
