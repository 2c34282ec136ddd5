"""The training options of real runs on CPU: QLoRA's 4-bit NF4 base (bitsandbytes runs it on
CPU), merging an adapter into the unquantized base, the bitsandbytes AdamW variants and the
DeepSpeed offload settings. The end-to-end QLoRA run is in test_preference_training.py."""

from __future__ import annotations

import pytest
import torch
from vlm_families import build_tiny

from amp_ray.models.families import family_of
from amp_ray.models.level_scoring import LevelScorer, collate_levels
from amp_ray.models.loading import load_model, load_processor, merged_lora
from amp_ray.models.registry import LoadOptions
from amp_ray.spec.blocks import DeepSpeedSpec, LoraSpec, OptimizerSpec
from amp_ray.training.optim import BNB_OPTIMIZERS, EngineConfig, deepspeed_config, make_optimizer
from amp_ray.training.preference import BaseUnderAdapters

bnb = pytest.importorskip("bitsandbytes")  # in amp-ray[dev]: the default run has it
QLORA = LoraSpec(r=4, alpha=8, dropout=0.0, quantize_base="nf4")


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def tiny_family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp(request.param)
    build_tiny(request.param, directory, seed=0)
    return str(directory)


def levels_batch(directory: str) -> dict[str, torch.Tensor]:
    from PIL import Image

    from amp_ray.models.conversation import encode_conversation

    processor = load_processor(directory)
    image = Image.new("RGB", (40, 56), (200, 30, 30))
    answers = [["a red circle ."], ["a blue square ."], ["no ."]]
    items = [[encode_conversation(processor, image, ["what is it ?"], a) for a in answers]]
    return collate_levels(items, processor.tokenizer.pad_token_id, "shared")


def test_nf4_base_quantizes_the_language_model_and_trains_the_adapters_only(
    tiny_family: str,
) -> None:
    model = load_model(tiny_family, LoadOptions("float32"), lora=QLORA, gradient_checkpointing=True)
    base = model.get_base_model()
    decoder = base.get_decoder()
    in_decoder = {id(m) for m in decoder.modules()}
    quantized = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(id(m) in in_decoder for m in quantized)
    assert all(m.weight.quant_type == "nf4" for m in quantized)
    plain = [
        name
        for name, m in base.named_modules()
        if type(m) is torch.nn.Linear and id(m) not in in_decoder
    ]
    assert plain  # the vision tower, projector and output head stay unquantized
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    # one shared-prefix step under checkpointing: the adapters get gradients; at the start the
    # policy equals its base under the adapters (lora_B is zero), the in-loop reference
    model.train()
    batch = levels_batch(tiny_family)
    scorer = LevelScorer(model, "shared")
    values = scorer(batch)
    with torch.no_grad():
        reference = BaseUnderAdapters(scorer)(batch)
    assert torch.equal(values.detach(), reference)
    values.sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_4bit_base_is_merged_into_its_unquantized_weights(tiny_family: str) -> None:
    options = LoadOptions("float32")
    model = load_model(tiny_family, options, lora=QLORA)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
    merged = merged_lora(model, (tiny_family, options))
    original = load_model(tiny_family, options)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert family_of(merged).name == family_of(original).name
    lora_layer = next(
        m for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A")
    )
    name = next(n for n, m in model.get_base_model().named_modules() if m is lora_layer)
    delta = lora_layer.lora_B["default"].weight @ lora_layer.lora_A["default"].weight
    expected = original.get_submodule(name).weight + delta * lora_layer.scaling["default"]
    torch.testing.assert_close(merged.get_submodule(name).weight, expected)
    with pytest.raises(ValueError, match="unquantized base"):
        merged_lora(model)


@pytest.mark.parametrize("name", ["adamw", *BNB_OPTIMIZERS])
def test_each_optimizer_name_steps_its_class(name: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 128)  # > bitsandbytes' 4096-element floor for 8-bit states
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    optimizer = make_optimizer([*layer.parameters(), frozen], OptimizerSpec(name=name, lr=1e-2))
    expected = "AdamW" if name == "adamw" else BNB_OPTIMIZERS[name]
    assert type(optimizer).__name__ == expected
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 2  # frozen left out
    before = layer.weight.detach().clone()
    layer(torch.randn(4, 128)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.weight, before)
    if name.endswith("8bit"):
        state = optimizer.state[layer.weight]
        assert state["state1"].dtype == torch.uint8  # the 8-bit states


def engine_config(**deepspeed: object) -> EngineConfig:
    spec = DeepSpeedSpec(**deepspeed)
    return EngineConfig(
        steps=1, micro_batch_size=2, gradient_accumulation_steps=1, optimizer={}, schedule={},
        max_grad_norm=1.0, zero_stage=spec.zero_stage, precision="fp32", checkpoint_every=1,
        log_every=1, seed=0, threads=1, offload_optimizer=spec.offload_optimizer,
        offload_params=spec.offload_params,
    )  # fmt: skip


def test_offload_settings_reach_the_deepspeed_config() -> None:
    plain = deepspeed_config(engine_config(zero_stage=2))["zero_optimization"]
    assert "offload_optimizer" not in plain and "offload_param" not in plain
    config = deepspeed_config(
        engine_config(zero_stage=3, offload_optimizer=True, offload_params=True)
    )
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert config["zero_force_ds_cpu_optimizer"] is False  # the spec's optimizer, no JIT op
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        DeepSpeedSpec(zero_stage=2, offload_params=True)
    with pytest.raises(ValueError, match="offload_optimizer needs zero_stage 1, 2 or 3"):
        DeepSpeedSpec(zero_stage=0, offload_optimizer=True)
