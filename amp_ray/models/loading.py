"""Loading any image-text-to-text model and its processor: dtype, device, LoRA, checkpointing."""

from __future__ import annotations

import copy
from typing import Any

import torch

from amp_ray.errors import AmpRayError
from amp_ray.models.registry import ActorModel, LoadOptions
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
    quantized = lora is not None and lora.quantize_base is not None
    placement = {"device_map": {"": device}} if quantized else {}  # bnb quantizes as it places
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=DTYPES.get(options.dtype, "auto"),
        trust_remote_code=options.trust_remote_code,
        attn_implementation=options.attn_implementation,
        quantization_config=nf4_config(path, options) if quantized else None,
        **placement,
    )
    family_of(model)  # an unsupported family stops here, with the supported ones named
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=language_model_modules(model, lora.target_modules),
        )
        model = get_peft_model(model, config)
    return model if quantized else model.to(device)


def nf4_config(path: str, options: LoadOptions) -> Any:
    """QLoRA's base (Dettmers et al. 2023): the language model's linear layers in 4-bit NF4 with
    double quantization, computed in the weights' dtype. The vision tower, the projector and
    the output head stay as they are: the adapters train the language model only, and the
    vision side is small next to it."""
    from transformers import AutoConfig, AutoModelForImageTextToText, BitsAndBytesConfig
    from transformers.utils import is_bitsandbytes_available

    if not is_bitsandbytes_available():
        raise AmpRayError(
            "lora.quantize_base needs bitsandbytes, which is not installed",
            hint="pip install 'amp-ray[qlora]' on the training nodes' image",
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    with torch.device("meta"):  # the module tree only, no weights
        skeleton = AutoModelForImageTextToText.from_config(
            config, trust_remote_code=options.trust_remote_code
        )
    decoder = f"{module_name(skeleton, skeleton.get_decoder())}."
    kept = [
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith(decoder)
    ]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES.get(options.dtype, torch.bfloat16),
        llm_int8_skip_modules=kept,
    )


def merged_lora(model: Any, base: tuple[str, LoadOptions] | None = None) -> Any:
    """A peft LoRA model merged into its base. A 4-bit base is not merged into (its weights
    would be dequantized, merged and rounded again): the base is loaded unquantized from
    `base` (local path, options) and the adapter's weights merged into that."""
    if not getattr(model, "is_loaded_in_4bit", False):
        return model.merge_and_unload()
    if base is None:
        raise ValueError("merging into a 4-bit base needs the unquantized base's path")
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = copy.deepcopy(model.peft_config["default"])
    full = get_peft_model(load_model(*base), config)
    set_peft_model_state_dict(full, get_peft_model_state_dict(model))
    return full.merge_and_unload()


def module_name(model: Any, module: Any) -> str:
    """The name `model.named_modules()` gives `module`."""
    return next(name for name, candidate in model.named_modules() if candidate is module)


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
    prefix = module_name(model, model.get_decoder())
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


def load_for_inference(model: ActorModel) -> tuple[Any, Any]:
    """(model in eval mode, processor) for a Ray Data actor: from a hub id, a path or a run's
    model store (downloaded once per node), on the actor's GPU if it has one, with as many torch
    threads as the CPUs the actor owns (more would oversubscribe the node)."""
    from amp_ray.cluster.placement import compute_device
    from amp_ray.models.store import local_model_path
    from amp_ray.runtime import torch_threads_for

    torch.set_num_threads(torch_threads_for(model.num_cpus))
    path = local_model_path(model.uri, model.storage)
    loaded = load_model(path, model.load, compute_device()).eval()
    return loaded, load_processor(path, model.load.trust_remote_code)
