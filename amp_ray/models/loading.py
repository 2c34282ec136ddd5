"""Loading any image-text-to-text model and its processor: dtype, device, LoRA, checkpointing."""

from __future__ import annotations

from typing import Any

import torch

from amp_ray.errors import AmpRayError
from amp_ray.models.registry import LoadOptions
from amp_ray.spec.blocks import LoraSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The model's processor (models/processors.py: also where torchvision is missing)."""
    from amp_ray.models.processors import load_processor as load

    return load(path, trust_remote_code)


def load_model(
    path: str,
    options: LoadOptions = LoadOptions(),
    device: str | torch.device = "cpu",
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool = False,
) -> Any:
    """An AutoModelForImageTextToText of a supported family (models/families) from a local path
    or hub id (see store.local_model_path)."""
    from transformers import AutoModelForImageTextToText

    from amp_ray.models.families import family_of

    check_attention(options.attn_implementation)
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=DTYPES.get(options.dtype, "auto"),
        trust_remote_code=options.trust_remote_code,
        attn_implementation=options.attn_implementation,
    )
    family_of(model)  # an unsupported family stops here, with the supported ones named
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=language_model_modules(model, lora.target_modules),
        )
        model = get_peft_model(model, config)
    return model.to(device)


def check_attention(implementation: str) -> None:
    """flash_attention_2 needs flash-attn (CUDA nodes only): say so before loading."""
    from transformers.utils import is_flash_attn_2_available

    if implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise AmpRayError(
            "attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU, "
            "which this node does not have",
            hint="pip install flash-attn on the GPU nodes' image, or set "
            "models.<name>.attn_implementation: sdpa",
        )


def save_model(model: Any, directory: str, state_dict: dict[str, Any] | None = None) -> None:
    """`save_pretrained` in the weight layout of the family's published checkpoints (LLaVA's
    `language_model.model.*`, `vision_tower.vision_model.*`, ...), which vLLM and the serving
    stacks load. transformers 5 writes that layout back only for the renamings it used when the
    model was loaded: a model built from config, or loaded from a checkpoint that transformers 5
    wrote, would be saved with its own names (`vision_tower.embeddings.*`), which vLLM refuses.
    So the family's whole mapping is set before saving (transformers reverses it on save)."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    model.save_pretrained(directory, state_dict=state_dict)


def language_model_modules(model: Any, names: list[str]) -> list[str]:
    """Full names of the language model's modules called one of `names`: LoRA goes there only.
    The vision tower has q/k/v projections too, and AMP's recipe leaves it frozen."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    found = [
        name
        for name, _ in model.named_modules()
        if name.startswith(f"{prefix}.") and name.rsplit(".", 1)[-1] in names
    ]
    if not found:
        raise ValueError(f"no module of the language model is named one of {names}")
    return found


def freeze_all_but_language_model(model: Any) -> int:
    """Freeze the vision tower and the projector (every parameter outside the language model
    and the output head); returns how many parameters stay trainable."""
    keep = {id(p) for p in model.get_decoder().parameters()}
    keep |= {id(p) for p in model.get_output_embeddings().parameters()}
    for parameter in model.parameters():
        if id(parameter) not in keep:
            parameter.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def image_token_id(model: Any) -> int:
    """The id of the image placeholder token of the model's family."""
    from amp_ray.models.families import family_of, unwrapped

    return family_of(model).image_token_id(unwrapped(model).config)


def max_positions(model: Any) -> int | None:
    """How many positions the language model takes (None when its config does not say)."""
    config = getattr(model, "config", None)
    for part in (getattr(config, "text_config", None), config):
        value = getattr(part, "max_position_embeddings", None)
        if value:
            return int(value)
    return None


def load_for_inference(
    uri: str, num_cpus: float, storage: Any = None, options: LoadOptions = LoadOptions()
) -> tuple[Any, Any]:
    """(model in eval mode, processor) for a Ray Data actor: from a hub id, a path or a run's
    model store (downloaded once per node), on the actor's GPU if it has one, with as many torch
    threads as the CPUs the actor owns (more would oversubscribe the node)."""
    from amp_ray.cluster.placement import compute_device
    from amp_ray.models.store import local_model_path
    from amp_ray.runtime import torch_threads_for

    torch.set_num_threads(torch_threads_for(num_cpus))
    path = local_model_path(uri, storage)
    model = load_model(path, options, compute_device()).eval()
    return model, load_processor(path, options.trust_remote_code)
