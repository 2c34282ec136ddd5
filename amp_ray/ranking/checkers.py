"""Checkers: how right each candidate answer is, against the item's reference and ground truth.

AMP (arXiv 2405.11165, §3.1 "Auto-check", App. A) re-ranks the generated candidates with no human
or judge model: `EmbeddingChecker` is that procedure (docs: shared notes methods.md §2c). For the
synthetic world, whose items carry exact ground truth, `GroundTruthChecker` counts hallucinated
and missed facts instead, which is what the world's metrics measure. Both return, per candidate,
an accuracy (the ranking key), a finer score (the tie-breaker) and details for the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from amp_ray.errors import DataError, SpecError
from amp_ray.ranking.chunks import noun_chunks
from amp_ray.ranking.encoder import DEFAULT_ENCODER, TextEncoder
from amp_ray.world.facts import (
    RoundCounts,
    WorldTruth,
    content_counts,
    description_counts,
    existence_counts,
    repeats,
    token_f1,
)


@dataclass(frozen=True)
class CheckResult:
    accuracy: float  # share of the reference's content (or of the facts) the candidate gets right
    score: float  # finer value that breaks ties in accuracy
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, for the audit


class CheckInput(NamedTuple):
    references: list[str]  # the reference answer of every round
    candidates: list[list[str]]  # each candidate's answer of every round
    annotations: str | None  # the item's JSON ground truth


@runtime_checkable
class Checker(Protocol):
    """Scores candidates of one item; `check_batch` may share work (one encoder call) over items."""

    name: str

    def check(
        self, references: list[str], candidates: list[list[str]], annotations: str | None
    ) -> list[CheckResult]: ...

    def check_batch(self, items: Sequence[CheckInput]) -> list[list[CheckResult] | DataError]:
        """Per item its results, or the DataError that makes it unusable (to quarantine)."""
        ...


def _round_answers(answers: Sequence[str] | None, rounds: int) -> list[str]:
    """The candidate's answer of every round; a missing round counts as an empty answer."""
    given = list(answers or [])[:rounds]
    return given + [""] * (rounds - len(given))


def _normalised(text: str | None) -> str:
    return " ".join((text or "").split())


# ----------------------------------------------------------------------------- embedding checker


@lru_cache(maxsize=65536)
def text_units(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(noun chunks, sentences that contain them) of an answer: what the two experts compare.

    An answer with no noun chunk ("yes .") is one unit for both experts, so that it can still be
    compared; an empty answer has no units.
    """
    text = _normalised(text)
    if not text:
        return (), ()
    chunks = noun_chunks(text)
    if not chunks:
        return (text,), (text,)
    return tuple(c.text for c in chunks), tuple(dict.fromkeys(c.sentence for c in chunks))


def expert_values(similarity: np.ndarray, tau: float) -> tuple[float, float]:
    """AMP App. A for one expert: S[m, n] = cos(f_S,m, f_G,n) over reference units m and
    candidate units n; s[m] = max_n S[m, n]; p[m] = [s[m] > τ]; (Acc = Σp / M, score = mean s).
    A candidate with no units recalls nothing: (0, 0)."""
    if similarity.shape[1] == 0:
        return 0.0, 0.0
    best = similarity.max(axis=1)
    return float((best > tau).mean()), float(best.mean())


class EmbeddingChecker:
    """AMP's auto-check (App. A): recall of the reference's noun chunks and of its sentences in
    the candidate, by cosine similarity of text embeddings; chunk and sentence experts averaged,
    then rounds averaged. `annotations` are not used."""

    name = "embedding"

    def __init__(self, encoder: TextEncoder, tau: float) -> None:
        self.encoder = encoder
        self.tau = tau

    def check(
        self, references: list[str], candidates: list[list[str]], annotations: str | None = None
    ) -> list[CheckResult]:
        result = self.check_batch([CheckInput(references, candidates, annotations)])[0]
        assert not isinstance(result, DataError)  # the embedding check never rejects an item
        return result

    def check_batch(self, items: Sequence[CheckInput]) -> list[list[CheckResult] | DataError]:
        """All units of all items are embedded in one encoder call (deduplicated texts)."""
        texts: dict[str, int] = {}
        for item in items:
            for answer in [*item.references, *(a for c in item.candidates for a in c or [])]:
                for unit_list in text_units(answer or ""):
                    for unit in unit_list:
                        texts.setdefault(unit, len(texts))
        embeddings = self.encoder.encode(list(texts)).numpy() if texts else np.zeros((0, 0))
        return [self._check_item(item, texts, embeddings) for item in items]

    def _check_item(
        self, item: CheckInput, index: dict[str, int], embeddings: np.ndarray
    ) -> list[CheckResult]:
        rounds = len(item.references)
        reference_units = [text_units(ref or "") for ref in item.references]
        results = []
        for answers in item.candidates:
            per_round: list[dict[str, float] | None] = []
            for ref_units, answer in zip(
                reference_units, _round_answers(answers, rounds), strict=True
            ):
                if not ref_units[0]:  # an empty reference: nothing to recall in this round
                    per_round.append(None)
                    continue
                cand_units = text_units(answer)
                values: dict[str, float] = {}
                for expert, ref, cand in zip(
                    ("chunk", "sentence"), ref_units, cand_units, strict=True
                ):
                    sim = (
                        embeddings[[index[u] for u in ref]] @ embeddings[[index[u] for u in cand]].T
                    )
                    acc, score = expert_values(sim.reshape(len(ref), len(cand)), self.tau)
                    values[f"{expert}_accuracy"], values[f"{expert}_score"] = acc, score
                per_round.append(values)
            results.append(self._combine(per_round))
        return results

    @staticmethod
    def _combine(per_round: list[dict[str, float] | None]) -> CheckResult:
        """Chunk and sentence experts averaged (App. A), then rounds averaged."""
        checked = [r for r in per_round if r is not None]
        if not checked:
            return CheckResult(0.0, 0.0, {"checked_rounds": 0, "rounds": per_round})
        accuracy = [(r["chunk_accuracy"] + r["sentence_accuracy"]) / 2 for r in checked]
        score = [(r["chunk_score"] + r["sentence_score"]) / 2 for r in checked]
        rounded = [None if r is None else {k: round(v, 4) for k, v in r.items()} for r in per_round]
        return CheckResult(
            float(np.mean(accuracy)),
            float(np.mean(score)),
            {"checked_rounds": len(checked), "rounds": rounded},
        )


# -------------------------------------------------------------------------- ground-truth checker

REPETITION_PENALTY = 0.1  # score only: a looping answer loses to an equally right fluent one


class GroundTruthChecker:
    """Counts hallucinated and missed facts against the synthetic world's annotations.

    Per round: description via CaptionScore plus colours, existence via POPE's rule against the
    label, the other types by their content words against the reference's. accuracy = mean over
    rounds of 1 − (hallucinated + missed) / (facts + hallucinated); score = mean token F1 against
    the reference, minus REPETITION_PENALTY for a looping answer. Raises DataError when the
    annotations lack a key it needs (the caller quarantines the item).
    """

    name = "ground_truth"

    def check(
        self, references: list[str], candidates: list[list[str]], annotations: str | None
    ) -> list[CheckResult]:
        truth = WorldTruth.parse(annotations, len(references))
        return [self._check_candidate(references, answers, truth) for answers in candidates]

    def check_batch(self, items: Sequence[CheckInput]) -> list[list[CheckResult] | DataError]:
        out: list[list[CheckResult] | DataError] = []
        for item in items:
            try:
                out.append(self.check(*item))
            except DataError as exc:
                out.append(exc)
        return out

    def _check_candidate(
        self, references: list[str], answers: list[str], truth: WorldTruth
    ) -> CheckResult:
        counts: list[RoundCounts] = []
        scores: list[float] = []
        for facts, reference, text in zip(
            truth.rounds, references, _round_answers(answers, len(references)), strict=True
        ):
            text, reference = _normalised(text), _normalised(reference)
            if facts["type"] == "description":
                counts.append(description_counts(text, reference, truth))
            elif facts["type"] == "existence":
                counts.append(existence_counts(text, facts, truth))
            else:
                counts.append(content_counts(text, reference, truth))
            scores.append(token_f1(text, reference) - REPETITION_PENALTY * repeats(text))
        if not counts:
            return CheckResult(0.0, 0.0, {"hallucinated": 0, "missed": 0, "facts": 0})
        return CheckResult(
            float(np.mean([c.accuracy for c in counts])),
            float(np.mean(scores)),
            {
                "hallucinated": sum(c.hallucinated for c in counts),
                "missed": sum(c.missed for c in counts),
                "facts": sum(c.facts for c in counts),
                "rounds": [[c.facts, c.hallucinated, c.missed] for c in counts],
            },
        )


def make_checker(
    kind: str, encoder: str = DEFAULT_ENCODER, tau: float | None = None, device: str | None = None
) -> Checker:
    """The checker of spec key ranking.checker: "embedding" (AMP's auto-check, with the text
    encoder `encoder` and threshold τ, ranking.tau) or "ground_truth" (the synthetic world's
    annotations, which use neither)."""
    if kind == "embedding":
        if tau is None:
            raise SpecError("the embedding checker needs its threshold: set ranking.tau")
        return EmbeddingChecker(TextEncoder(encoder, device=device), tau)
    if kind == "ground_truth":
        return GroundTruthChecker()
    raise SpecError(f"unknown ranking.checker {kind!r}: use 'embedding' or 'ground_truth'")
