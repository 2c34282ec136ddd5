"""Noun chunks and sentences of an answer: the units the auto-check compares (AMP §3.1, App. A).

AMP extracts the nouns of a response, drops a stop-list of nouns that describe the picture rather
than its content (photo, image, background, atmosphere, ...), and extends each noun to its longest
noun chunk with a dependency parse. With spaCy and its English pipeline (en_core_web_sm)
importable, that is what `noun_chunks` does.

Without them it falls back to a small rule chunker, documented here because it decides what is
compared: split the text into sentences; within a sentence a chunk is a maximal run of words that
are neither punctuation nor in `FUNCTION_WORDS` (articles, conjunctions, prepositions, pronouns,
auxiliaries and common verbs of description); stop-list nouns also break a run and are dropped.
"no" stays in a chunk when a content word follows it ("no cross"), so a negated object is not
the same unit as the object. On the synthetic world's texts this gives what a parser would, minus
the article ("a red circle and a blue square ." -> "red circle", "blue square"); on free text it is
an approximation (verbs missing from the list join the chunks around them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# AMP's stop-list: nouns about the picture itself and abstract nouns, not its content.
STOP_NOUNS = _word_set(
    """
    photo photograph photos image images picture pictures figure painting drawing
    illustration background foreground detail details atmosphere composition scene view
    setting frame shot overall element elements aspect feature features mood style tone
    """
)

# Words that end a chunk in the fallback chunker. Verbs of description are listed because the
# fallback has no tagger; spatial words like left/right/top stay content (they carry facts).
FUNCTION_WORDS = _word_set(
    """
    a an the this that these those some any each every all both either neither another and
    or but nor so yet if then than as because while although though whereas of in on at by
    for with without within from to into onto over under above below between among around
    behind beside besides near next through across along toward towards about against upon
    via per off out up down i me my we us our you your he him his she her it its they them
    their there here who whom whose which what where when why how is are was were be been
    being am do does did done have has had having can could will would shall should may
    might must not yes no also very too just only quite rather really more most much many
    show shows showing shown depict depicts depicting depicted feature featuring contain
    contains containing display displays displaying see seen sees look looks looking appear
    appears appearing seem seems seeming locate located positioned placed sitting standing
    lying visible present
    """
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
_WORD = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class Chunk:
    text: str  # the noun chunk, e.g. "red circle"
    sentence: str  # the sentence it came from (the "sentence expert" compares these)


def sentences(text: str) -> list[str]:
    """Sentences of `text`: split after . ! ? followed by white space, and at line breaks.

    A full stop inside a token ("3.5", "e.g.x") does not split; empty pieces are dropped.
    """
    return [piece.strip() for piece in _SENTENCE_END.split(text.strip()) if piece.strip()]


def _is_boundary(token: str) -> bool:
    lower = token.lower()
    return not _WORD.match(token) or lower in FUNCTION_WORDS or lower in STOP_NOUNS


def rule_chunks(text: str) -> list[Chunk]:
    """The fallback chunker (module docstring): runs of content words, sentence by sentence."""
    found: list[Chunk] = []
    for sentence in sentences(text):
        tokens = _TOKEN.findall(sentence)
        run: list[str] = []
        for i, token in enumerate(tokens):
            follows_content = i + 1 < len(tokens) and not _is_boundary(tokens[i + 1])
            if token.lower() == "no" and follows_content and not run:
                run.append(token)  # "no cross": keep the negation with its object
            elif _is_boundary(token):
                if run:
                    found.append(Chunk(" ".join(run), sentence))
                run = []
            else:
                run.append(token)
        if run:
            found.append(Chunk(" ".join(run), sentence))
    return found


@lru_cache(maxsize=1)
def _spacy_pipeline() -> Any | None:
    """spaCy's small English pipeline when it is installed, else None (use the fallback)."""
    try:
        import spacy

        return spacy.load("en_core_web_sm", disable=["ner", "lemmatizer"])
    except (ImportError, OSError):
        return None


def spacy_chunks(text: str, nlp: Any) -> list[Chunk]:
    """Dependency-parse noun chunks (spaCy's `doc.noun_chunks`), stop-list heads dropped.

    Leading determiners are dropped so that both chunkers yield the same units ("red circle").
    """
    found: list[Chunk] = []
    for sentence in sentences(text):
        for span in nlp(sentence).noun_chunks:
            if span.root.lower_ in STOP_NOUNS or span.root.pos_ == "PRON":
                continue
            words = [t for t in span if not (t.dep_ == "det" and t.lower_ != "no")]
            if words:
                found.append(Chunk(" ".join(t.text for t in words), sentence))
    return found


def chunker_name() -> str:
    """Which chunker `noun_chunks` uses in this process: "spacy" or "rules"."""
    return "rules" if _spacy_pipeline() is None else "spacy"


@lru_cache(maxsize=65536)
def noun_chunks(text: str) -> tuple[Chunk, ...]:
    """The noun chunks of `text`, first occurrence of each (case-insensitive), in text order.

    Cached: a reference is checked against every candidate of its item, and the world's answers
    repeat a lot.
    """
    nlp = _spacy_pipeline()
    chunks = rule_chunks(text) if nlp is None else spacy_chunks(text, nlp)
    seen: set[str] = set()
    unique: list[Chunk] = []
    for chunk in chunks:
        if chunk.text.lower() not in seen:
            seen.add(chunk.text.lower())
            unique.append(chunk)
    return tuple(unique)
