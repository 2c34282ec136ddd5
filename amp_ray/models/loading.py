"""Loading any image-text-to-text model and its processor: dtype, device, LoRA, checkpointing."""

from __future__ import annotations

from typing import Any

import torch

from amp_ray.spec.blocks import LoraSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_model(
    path: str,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """An AutoModelForImageTextToText from a local path or hub id (see store.local_model_path)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=DTYPES.get(dtype, "auto"), trust_remote_code=trust_remote_code
    )
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


def image_token_id(model: Any, processor: Any) -> int:
    """The id of the image placeholder token, from the model config or the processor."""
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return int(processor.image_token_id)


def max_positions(model: Any) -> int | None:
    """How many positions the language model takes (None when its config does not say)."""
    config = getattr(model, "config", None)
    for part in (getattr(config, "text_config", None), config):
        value = getattr(part, "max_position_embeddings", None)
        if value:
            return int(value)
    return None


def load_for_inference(
    uri: str, num_cpus: float, storage: Any = None, dtype: str = "auto"
) -> tuple[Any, Any]:
    """(model in eval mode, processor) for a Ray Data actor: from a hub id, a path or a run's
    model store (downloaded once per node), on the actor's GPU if it has one, with as many torch
    threads as the CPUs the actor owns (more would oversubscribe the node)."""
    from amp_ray.cluster.placement import compute_device
    from amp_ray.models.store import local_model_path
    from amp_ray.runtime import torch_threads_for

    torch.set_num_threads(torch_threads_for(num_cpus))
    path = local_model_path(uri, storage)
    device = compute_device()
    return load_model(path, dtype=dtype, device=device).eval(), load_processor(path)
