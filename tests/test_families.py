"""Every supported VLM family is exact through amp_ray.models, batched: tiny random models built
from each family's real config and processor classes (tests/vlm_families.py), batches that mix
image sizes (so tile counts and image token counts differ) and prompt lengths, compared with HF's
own forward and generate of each item alone.

A new family: an adapter in amp_ray/models/families/ and its name in vlm_families.FAMILIES.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from vlm_families import FAMILIES, build_tiny

from amp_ray.errors import AmpRayError, DataError
from amp_ray.models.conversation import collate, encode_conversation, messages_for
from amp_ray.models.decoding import generate
from amp_ray.models.families import family_of, forward_inputs
from amp_ray.models.hiding import hide_image_tokens
from amp_ray.models.level_scoring import LevelScorer, collate_levels
from amp_ray.models.loading import image_token_id, load_model, load_processor, save_model
from amp_ray.models.logprobs import token_logprobs
from amp_ray.spec.alignment import SamplingSpec
from amp_ray.spec.blocks import LoraSpec

# what the family's published checkpoints name their weights (the first two name parts)
HUB_LAYOUT = {
    "llava": {"language_model.model", "language_model.lm_head", "multi_modal_projector.linear_1",
              "multi_modal_projector.linear_2", "vision_tower.vision_model"},
    "llava_next": {"language_model.model", "language_model.lm_head", "image_newline",
                   "multi_modal_projector.linear_1", "multi_modal_projector.linear_2",
                   "vision_tower.vision_model"},
    "qwen2_vl": {"model.embed_tokens", "model.layers", "model.norm", "lm_head.weight",
                 "visual.patch_embed", "visual.blocks", "visual.merger"},
    "idefics3": {"model.text_model", "model.vision_model", "model.connector", "lm_head.weight"},
}  # fmt: skip
HUB_LAYOUT["llava_onevision"] = HUB_LAYOUT["llava_next"]
HUB_LAYOUT["qwen2_5_vl"] = HUB_LAYOUT["qwen2_vl"]
GREEDY = SamplingSpec(max_new_tokens=6, do_sample=False, num_beams=1, repetition_penalty=1.0)
# (image size, questions, answers): sizes that give different tile and image token counts
ITEMS = [
    ((40, 56), ["what shape is in the picture ?"], ["a red circle ."]),
    ((64, 48), ["what colour is the shape ?", "where is the small square ?"],
     ["it is blue .", "the small square is on the left and the red circle on the right ."]),
    ((28, 36), ["how many shapes are there in the image ?"], ["two ."]),
]  # fmt: skip


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(name, directory, float64 model, processor) of one family's tiny random model."""
    torch.set_num_threads(1)  # tiny forwards: more threads only add overhead on 2 cores
    directory = tmp_path_factory.mktemp(request.param)
    build_tiny(request.param, directory, seed=0)
    model = load_model(str(directory)).double().eval()
    return request.param, str(directory), model, load_processor(str(directory))


def hf_alone(processor, image: Image.Image, questions, answers) -> dict[str, torch.Tensor]:
    """HF's own inputs for one item: the processor over the whole rendered conversation."""
    text = processor.apply_chat_template(
        messages_for(questions, answers), tokenize=False, add_generation_prompt=not answers
    )
    return processor(text=[text], images=[image], add_special_tokens=False, return_tensors="pt")


def test_family_is_picked_from_the_config(family) -> None:
    name, _, model, _ = family
    assert family_of(model).name == name
    assert family_of(model.config).name == name


def test_batched_response_logprobs_equal_hf_forward_of_each_item(family) -> None:
    _, _, model, processor = family
    images = [picture(size, n) for n, (size, _, _) in enumerate(ITEMS)]
    encoded = [
        encode_conversation(processor, image, questions, answers)
        for image, (_, questions, answers) in zip(images, ITEMS, strict=True)
    ]
    assert len({len(e) for e in encoded}) > 1  # the batch pads
    batch = collate(encoded, processor.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        ours = model(**forward_inputs(model, batch), use_cache=False).logits
        for row, (image, (_, questions, answers)) in enumerate(zip(images, ITEMS, strict=True)):
            alone = hf_alone(processor, image, questions, answers)
            ids = alone["input_ids"]
            assert ids[0].tolist() == encoded[row].input_ids  # the same tokens, expanded alike
            weights = torch.tensor(encoded[row].response_weights[1:], dtype=torch.float64)
            expected = (token_logprobs(model(**alone).logits, ids)[0] * weights).sum()
            n = len(encoded[row])
            got = (token_logprobs(ours[row : row + 1, :n], ids)[0] * weights).sum()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_shared_prefix_levels_equal_full_sequences_values_and_gradients(family) -> None:
    _, _, model, processor = family
    items = []
    for n, (size, questions, _) in enumerate(ITEMS[:2]):
        image = picture(size, 10 + n)
        answers = [["a red circle ."], ["a blue square on the left ."], ["no ."]]
        items.append([encode_conversation(processor, image, questions[:1], a) for a in answers])
    pad = processor.tokenizer.pad_token_id

    def scored(mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        values = LevelScorer(model, mode)(collate_levels(items, pad, mode))
        (values * torch.linspace(1, 2, values.numel()).view_as(values)).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return values.detach(), grads

    full, full_grads = scored("full")
    shared = {"no checkpointing": scored("shared")}
    # checkpointed layers replay their forward in backward: they must keep the prefix cache
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()  # HF checkpoints only in training mode (the tiny configs have no dropout)
    try:
        shared["gradient checkpointing"] = scored("shared")
    finally:
        model.activation_checkpointing_disable()
        model.eval()
    for how, (values, grads) in shared.items():
        torch.testing.assert_close(values, full, rtol=0, atol=1e-6, msg=how)
        assert grads.keys() == full_grads.keys() and len(full_grads) > 10
        for key, grad in full_grads.items():
            # float64 model, float32 pixel values from the processor: 1e-6 of the largest entry
            error = (grads[key] - grad).abs().max().item()
            assert error <= 1e-6 * grad.abs().max().item() + 1e-12, (how, key)
    model.zero_grad()


def hf_greedy_alone(model, processor, image: Image.Image, question: str) -> str:
    alone = hf_alone(processor, image, [question], [])
    eos = model.generation_config.eos_token_id
    end = {processor.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    out = model.generate(
        **alone, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
    )[0, alone["input_ids"].shape[1] :].tolist()  # fmt: skip
    kept = out[: next((i for i, t in enumerate(out) if t in end), len(out))]
    return processor.tokenizer.decode(kept, skip_special_tokens=True).strip()


def prompts_batch(processor, images, questions) -> dict[str, torch.Tensor]:
    encoded = [
        encode_conversation(processor, image, [question], [])
        for image, question in zip(images, questions, strict=True)
    ]
    return collate(encoded, processor.tokenizer.pad_token_id, "left")


def test_batched_greedy_generation_equals_hf_generate_of_each_item(family) -> None:
    _, _, model, processor = family
    images = [picture(size, 20 + n) for n, (size, _, _) in enumerate(ITEMS)]
    questions = [q[0] for _, q, _ in ITEMS]
    batch = prompts_batch(processor, images, questions)
    ours = [g.text for g in generate(model, processor, batch, GREEDY)]
    expected = [
        hf_greedy_alone(model, processor, i, q) for i, q in zip(images, questions, strict=True)
    ]
    assert ours == expected
    assert any(ours)  # the comparison is over words, not empty strings


def test_hiding_no_image_token_changes_nothing_and_hiding_all_removes_the_image(family) -> None:
    _, _, model, processor = family
    images = [picture((48, 40), 30), picture((48, 40), 31)]  # same size: same token layout
    batch = prompts_batch(processor, images, ["describe the image in one sentence ."] * 2)
    image_id = image_token_id(model)
    assert (batch["input_ids"] == image_id).any()
    none = hide_image_tokens(batch["input_ids"], batch["attention_mask"], image_id, 0.0)
    assert torch.equal(none, batch["attention_mask"])
    assert generate(model, processor, batch, GREEDY, none) == generate(
        model, processor, batch, GREEDY
    )
    every = hide_image_tokens(batch["input_ids"], batch["attention_mask"], image_id, 1.0)
    with torch.no_grad():
        seen = model(**forward_inputs(model, batch)).logits[:, -1]
        unseen = model(**forward_inputs(model, batch, every)).logits[:, -1]
    assert not torch.allclose(seen[0], seen[1], atol=1e-6)  # the images differ, and it shows
    torch.testing.assert_close(unseen[0], unseen[1], rtol=0, atol=1e-9)  # hidden: irrelevant


def test_lora_targets_only_the_language_model(family) -> None:
    _, directory, _, _ = family
    model = load_model(directory, lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    adapted = [name for name, _ in model.named_parameters() if "lora_" in name]
    assert adapted
    decoder = model.get_decoder()
    language = {id(p) for p in decoder.parameters()}
    assert all(id(p) in language for n, p in model.named_parameters() if "lora_" in n)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == adapted


def test_saved_models_load_back_alike_in_the_published_layout(family, tmp_path: Path) -> None:
    name, _, model, processor = family
    save_model(model, str(tmp_path))
    processor.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        layout = {".".join(key.split(".")[:2]) for key in saved.keys()}  # noqa: SIM118
    assert layout == HUB_LAYOUT[name]
    again, again_processor = load_model(str(tmp_path)).double().eval(), load_processor(tmp_path)
    image = picture(ITEMS[1][0], 40)
    batch = prompts_batch(again_processor, [image], [ITEMS[1][1][0]])
    assert (
        batch["input_ids"].tolist()
        == prompts_batch(processor, [image], [ITEMS[1][1][0]])["input_ids"].tolist()
    )
    with torch.no_grad():
        torch.testing.assert_close(
            again(**forward_inputs(again, batch)).logits,
            model(**forward_inputs(model, batch)).logits,
            rtol=0,
            atol=1e-12,
        )


def test_an_image_the_processor_rejects_is_a_data_error_naming_processor_and_image(
    family,
) -> None:
    """Qwen's processors refuse an aspect ratio over 200; the encoders quarantine a DataError
    with its message (tests/test_encode.py), so the row is set aside, not the job stopped."""
    name, _, _, processor = family
    thin = picture((2, 1000), 50)
    if not name.startswith("qwen"):
        assert len(encode_conversation(processor, thin, ["what shape ?"], ["a red circle ."]))
        return
    with pytest.raises(
        DataError, match=r"Qwen2(_5)?_?VLProcessor rejects the image \(2x1000 RGB\)"
    ):
        encode_conversation(processor, thin, ["what shape ?"], ["a red circle ."])


def test_a_model_of_another_family_is_refused_naming_the_supported_ones() -> None:
    from transformers import PaliGemmaConfig

    with pytest.raises(AmpRayError, match="model type 'paligemma' is not a family") as refused:
        family_of(PaliGemmaConfig())
    for name in FAMILIES:
        assert name in str(refused.value)
