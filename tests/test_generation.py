"""Candidate generators on a tiny LLaVA: MEG/IG answers, BDHS hiding, guidance and the
similarity loop; the exactly-once journal."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from amp_ray.generation.bdhs import BdhsCandidates, join_completion, plan_guides
from amp_ray.generation.candidates import CANDIDATE_ROWS, stable_seed, start_candidates
from amp_ray.generation.experts import ModelCandidates
from amp_ray.models.conversation import collate, encode_conversation
from amp_ray.models.decoding import generate
from amp_ray.models.registry import ActorModel
from amp_ray.spec.alignment import BdhsSpec, SamplingSpec
from amp_ray.storage.dataset import DatasetWriter, FileEntry
from amp_ray.storage.journal import Journal, write_entry
from amp_ray.storage.location import open_location
from amp_ray.storage.quarantine import QUARANTINE_REASON
from amp_ray.storage.schemas import ITEMS

GREEDY = SamplingSpec(max_new_tokens=8, do_sample=False, num_beams=1, repetition_penalty=1.0)
SAMPLED = SamplingSpec(max_new_tokens=8, do_sample=True, temperature=1.0, num_beams=1)


def chain_input(items: list[dict]) -> pa.Table:
    return start_candidates(pa.Table.from_pylist(items, schema=ITEMS))


def image_of(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(item["image"])).convert("RGB")


def test_guides_keep_a_prefix_and_flip_yes_no() -> None:
    reference = "yes , there is a red circle . the circle is left of the square ."
    guides = plan_guides(reference, np.random.default_rng(0), flip_yes_no=1.0)
    assert len(guides) == 2
    assert guides[0].flipped and guides[0].prefix.startswith("no")  # yes flipped, kept
    assert guides[1].before == "yes , there is a red circle ."  # the reference, unflipped
    assert len(guides[1].prefix.split()) < 8  # the sentence's 8 words are never all given
    again = plan_guides(reference, np.random.default_rng(0), flip_yes_no=1.0)
    assert again == guides  # the split points come from the seed alone
    never = plan_guides(reference, np.random.default_rng(0), flip_yes_no=0.0)
    assert not never[0].flipped and never[0].prefix.startswith("yes")
    assert join_completion("a red", "circle .") == "a red circle ."
    assert join_completion("", "a circle .") == "a circle ."


def test_expert_candidates_answer_every_round_and_sample_independently(
    tiny_dir: str, world_items: list[dict]
) -> None:
    items = [item for item in world_items if item["task"] == "dialogue"][:2] + world_items[:1]
    sampled = SAMPLED.model_copy(update={"num_samples": 2})
    maker = ModelCandidates(ActorModel("tiny", tiny_dir), "meg", 3, sampled)
    out = maker(chain_input(items)).to_pylist()
    for item, row in zip(items, out, strict=True):
        assert row[QUARANTINE_REASON] is None
        assert [c["candidate_id"] for c in row["candidates"]] == ["meg:tiny:0", "meg:tiny:1"]
        for cand in row["candidates"]:
            assert cand["initial_rank"] == 3 and cand["generator"] == "meg"
            assert len(cand["answers"]) == len(item["rounds"])
            assert len(json.loads(cand["info"])["finished"]) == len(item["rounds"])


def test_bad_items_are_set_aside_with_their_reason(tiny_dir: str, world_items: list[dict]) -> None:
    corrupt = {**world_items[0], "item_id": "corrupt", "image": b"not a png"}
    empty = {**world_items[1], "item_id": "empty", "rounds": [{"question": "q", "answer": " "}]}
    good = world_items[2]
    maker = ModelCandidates(ActorModel("tiny", tiny_dir), "ig", 1, GREEDY)
    out = {row["item_id"]: row for row in maker(chain_input([corrupt, empty, good])).to_pylist()}
    assert "image cannot be read" in out["corrupt"][QUARANTINE_REASON]
    assert "empty reference answer" in out["empty"][QUARANTINE_REASON]
    assert out["corrupt"]["candidates"] == [] and out["empty"]["candidates"] == []
    assert out[good["item_id"]][QUARANTINE_REASON] is None
    too_long = {**good, "item_id": "long", "rounds": [{"question": "q " * 600, "answer": "a ."}]}
    row = maker(chain_input([too_long])).to_pylist()[0]
    assert "exceed the model's 512 positions" in row[QUARANTINE_REASON]


def bdhs_maker(tiny_dir: str, **bdhs: object) -> BdhsCandidates:
    return BdhsCandidates(ActorModel("tiny", tiny_dir), BdhsSpec(**bdhs), GREEDY, initial_rank=1)


def plain_answer(maker: BdhsCandidates, item: dict) -> str:
    prompt = encode_conversation(
        maker.processor, image_of(item), [r["question"] for r in item["rounds"]], []
    )
    batch = collate([prompt], maker.processor.tokenizer.pad_token_id, "left")
    return generate(maker.model, maker.processor, batch, GREEDY)[0].text


def test_bdhs_hiding_nothing_is_plain_generation_and_hiding_all_ignores_the_image(
    tiny_dir: str, world_items: list[dict]
) -> None:
    captions = [item for item in world_items if item["task"] == "caption"][:2]
    assert captions[0]["image"] != captions[1]["image"]
    # One try: the last try is the unguided whole answer, so the mask alone decides.
    maker = bdhs_maker(tiny_dir, rho_th=[0.0, 1.0], max_tries=1)
    out = maker(chain_input(captions)).to_pylist()
    by_rho = [{json.loads(c["info"])["rho_th"]: c for c in row["candidates"]} for row in out]
    for item, candidates in zip(captions, by_rho, strict=True):
        assert candidates[0.0]["answers"] == [plain_answer(maker, item)]
        assert json.loads(candidates[0.0]["info"])["visible_image_share"] == 1.0
        assert json.loads(candidates[1.0]["info"])["visible_image_share"] == 0.0
        assert candidates[0.0]["initial_rank"] < candidates[1.0]["initial_rank"]
    assert by_rho[0][1.0]["answers"] == by_rho[1][1.0]["answers"]  # blind: same text
    # The model must see the image when nothing is hidden, or the check above proves nothing.
    logits = []
    for item in captions:
        prompt = encode_conversation(maker.processor, image_of(item), ["describe the image ."], [])
        batch = collate([prompt], maker.processor.tokenizer.pad_token_id, "left")
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k != "response_weights"}
            logits.append(maker.model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


class ConstantEncoder:
    """Every text embeds to the same vector: every draft looks identical to its reference."""

    def __init__(self, *_: object) -> None:
        pass

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.ones(len(texts), 4) / 2


def test_the_similarity_check_resamples_and_stops_at_max_tries(
    tiny_dir: str, world_items: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [item for item in world_items if item["task"] == "dialogue"][:1] + world_items[:2]
    monkeypatch.setattr("amp_ray.ranking.encoder.TextEncoder", ConstantEncoder)
    stubborn = bdhs_maker(tiny_dir, rho_th=[0.9], max_tries=3)
    for row, item in zip(stubborn(chain_input(items)).to_pylist(), items, strict=True):
        info = json.loads(row["candidates"][0]["info"])
        rounds = len(item["rounds"])
        assert info["tries"] == [3] * rounds and info["unguided"] == [True] * rounds
        assert info["similarity"] == pytest.approx([1.0] * rounds)


def test_guided_drafts_follow_the_reference_until_accepted(
    tiny_dir: str, world_items: list[dict]
) -> None:
    captions = [item for item in world_items if item["task"] == "caption"][:3]
    # A threshold above any cosine accepts the first (guided) draft.
    maker = bdhs_maker(tiny_dir, rho_th=[0.99], max_tries=5, similarity_threshold=1.0)
    for row, item in zip(maker(chain_input(captions)).to_pylist(), captions, strict=True):
        info = json.loads(row["candidates"][0]["info"])
        assert info["tries"] == [1] and info["unguided"] == [False]
        seed = stable_seed(0, item["item_id"], 0, 0.99, 1)  # the first try's split point
        guide = plan_guides(item["rounds"][0]["answer"], np.random.default_rng(seed), 0.5)[0]
        assert row["candidates"][0]["answers"][0].startswith(guide.prefix)
        assert info["similarity"][0] < 1.0


def test_the_journal_keeps_each_key_once(tmp_path: object) -> None:
    location = open_location(str(tmp_path))
    journal = Journal(location.join("_journal"), fingerprint="work-1")
    attempts = journal.open(["candidates"])
    part = FileEntry(f"_attempt-{attempts['candidates']}/part-1.parquet", 2, 10)
    write_entry(journal.entries_dir, {"candidates": [part]}, ["a", "b", "a"])
    write_entry(journal.entries_dir, {"candidates": [part]}, ["b", "a"])  # a retried task
    other = FileEntry(f"_attempt-{attempts['candidates']}/part-2.parquet", 1, 10)
    write_entry(journal.entries_dir, {"candidates": [other]}, ["c"])
    assert journal.done_keys() == {"a", "b", "c"}
    writer = DatasetWriter(location.join("candidates"), CANDIDATE_ROWS, "x", attempts["candidates"])
    assert journal.collect({"candidates": writer}) == 3
    assert sorted(writer._files, key=lambda entry: entry.path) == [part, other]
    # The same work resumes the same attempt; other work starts afresh.
    assert Journal(location.join("_journal"), "work-1").open(["candidates"]) == attempts
    fresh = Journal(location.join("_journal"), "work-2")
    assert fresh.open(["candidates"]) != attempts and fresh.done_keys() == set()
