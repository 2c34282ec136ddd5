"""MRHal / MMHal metrics and the world's rubric judge, against hand-computed values."""

from __future__ import annotations

import json

import pytest
from test_ranking import SCENE, annotations

from amp_ray.evaluation.judging import JudgeFailure, JudgeRequest, check_ratings
from amp_ray.evaluation.scores import by_question_type, mmhal_metrics, mrhal_metrics
from amp_ray.evaluation.world_eval import mrhal_from_world
from amp_ray.evaluation.world_judge import GroundTruthJudge, rubric_rating
from amp_ray.world.facts import RoundCounts
from amp_ray.world.tasks import attribute, counting, describe, existence, spatial

# Three dialogues of 3, 2 and 3 rounds.
DIALOGUES = [[6, 2, 4], [1, 5], [0, 1, 6]]


def test_mrhal_cumulative_and_mean_by_hand() -> None:
    values = mrhal_metrics(DIALOGUES)
    # cumulative: 25 over 8 rounds; rounds below 3: 2, 1, 0, 1
    assert values["score_cumulative"] == pytest.approx(25 / 8)
    assert values["hallucination_rate_cumulative"] == pytest.approx(4 / 8)
    # mean: dialogue means 4, 3, 7/3; per-dialogue hallucination shares 1/3, 1/2, 2/3
    assert values["score_mean"] == pytest.approx((4 + 3 + 7 / 3) / 3)
    assert values["hallucination_rate_mean"] == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)
    # the public script: a dialogue hallucinates when its mean is below 3: only the third
    assert values["hallucination_rate_mean_dialogue"] == pytest.approx(1 / 3)


def test_mrhal_mean_rate_rule_of_the_public_script() -> None:
    values = mrhal_metrics(DIALOGUES, mean_rate_rule="dialogue")
    assert values["hallucination_rate_mean"] == pytest.approx(1 / 3)
    assert values["score_cumulative"] == pytest.approx(25 / 8)


def test_cumulative_and_mean_differ_when_dialogues_differ_in_length() -> None:
    # one long clean dialogue and one short hallucinating one
    values = mrhal_metrics([[6, 6, 6, 6], [0]])
    assert values["score_cumulative"] == pytest.approx(24 / 5)
    assert values["score_mean"] == pytest.approx(3.0)
    assert values["hallucination_rate_cumulative"] == pytest.approx(1 / 5)
    assert values["hallucination_rate_mean"] == pytest.approx(1 / 2)


def test_empty_inputs_give_no_metrics() -> None:
    assert mrhal_metrics([]) == {}
    assert mrhal_metrics([[]]) == {}
    assert mmhal_metrics([]) == {}


def test_mmhal_by_hand() -> None:
    assert mmhal_metrics([6, 2, 3, 0]) == {"score": 2.75, "hallucination_rate": 0.5}


def test_by_question_type_by_hand() -> None:
    values = by_question_type([[6, 2], [1]], [["description", "counting"], ["counting"]])
    assert values == {
        "score@counting": 1.5,
        "hallucination_rate@counting": 1.0,
        "score@description": 6.0,
        "hallucination_rate@description": 0.0,
    }


def test_check_ratings() -> None:
    assert check_ratings((1, 2), 2, "j") == (1, 2)
    with pytest.raises(JudgeFailure, match="1 ratings for 2 rounds"):
        check_ratings((1,), 2, "j")
    with pytest.raises(JudgeFailure, match=r"outside 0\.\.6"):
        check_ratings((7, 2), 2, "j")


@pytest.mark.parametrize(
    ("facts", "hallucinated", "missed", "loops", "rating"),
    [
        (4, 0, 0, False, 6),  # all facts, clean
        (4, 0, 0, True, 5),  # all facts, repeats itself
        (4, 0, 2, False, 4),  # some facts
        (4, 0, 4, False, 3),  # none
        (4, 1, 0, False, 2),  # all facts, and one false thing
        (4, 1, 2, False, 1),
        (4, 1, 4, False, 0),
    ],
)
def test_rubric_rating_table(
    facts: int, hallucinated: int, missed: int, loops: bool, rating: int
) -> None:
    assert rubric_rating(RoundCounts(facts, hallucinated, missed), loops) == rating


def _request(rounds: list, answers: list[str]) -> JudgeRequest:
    return JudgeRequest(
        "mrhal",
        ("circle", "square"),
        tuple(r.question for r in rounds),
        tuple(r.answer for r in rounds),
        tuple(answers),
        annotations=annotations(SCENE, rounds),
    )


def test_ground_truth_judge_on_a_world_dialogue() -> None:
    # red circle left of blue square
    rounds = [describe(SCENE), existence(SCENE, "ring"), attribute(SCENE.objects[1])]
    rounds += [counting(SCENE), spatial(SCENE, 0, "right")]
    references = [r.answer for r in rounds]
    assert GroundTruthJudge().judge(_request(rounds, references)).ratings == (6, 6, 6, 6, 6)
    answers = [
        "a red circle and a blue square and a green ring .",  # all facts + an absent ring: 2
        "yes , there is a red ring .",  # yes to an absent ring: hallucinates, says the fact? 0
        "the square is .",  # states no colour: not informative, nothing false: 3
        "there are three objects .",  # wrong count: 0
        "the blue square is right of the circle .",  # exact: 6
    ]
    judgment = GroundTruthJudge().judge(_request(rounds, answers))
    assert judgment.ratings == (2, 0, 4, 0, 6)
    assert json.loads(judgment.response)["ratings"] == [2, 0, 4, 0, 6]


def test_ground_truth_judge_counts_a_missing_answer_as_empty() -> None:
    rounds = [describe(SCENE), counting(SCENE)]
    ratings = GroundTruthJudge().judge(_request(rounds, [rounds[0].answer])).ratings
    assert ratings == (6, 3)


def test_ground_truth_judge_fails_without_annotations() -> None:
    request = JudgeRequest("mrhal", (), ("q ?",), ("a .",), ("a .",), annotations=None)
    with pytest.raises(JudgeFailure, match="ground_truth judge cannot rate"):
        GroundTruthJudge().judge(request)


def test_world_mrhal_rows_count_failed_items_apart() -> None:
    rounds = [describe(SCENE), counting(SCENE)]
    good = {
        "questions": [r.question for r in rounds],
        "references": [r.answer for r in rounds],
        "answers": [rounds[0].answer, "there are three objects ."],
        "annotations": annotations(SCENE, rounds),
    }
    broken = {**good, "annotations": "{not json"}
    benchmark, values, count = mrhal_from_world([good, broken])
    assert (benchmark, count, values["failed"]) == ("mrhal", 1, 1)
    assert values["score_cumulative"] == pytest.approx((6 + 0) / 2)
    assert values["score@description"] == 6.0
    assert values["hallucination_rate@counting"] == 1.0
