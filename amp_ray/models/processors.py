"""A model's processor, on machines with torchvision and on CPU machines without it.

On GPU nodes the families' processors load as the hub ships them (AutoProcessor). On a CPU
machine whose torch has no matching torchvision (PyPI's torchvision for torch 2.13 is a CUDA
build: its C ops do not load with the CPU torch), AutoProcessor still works for the families
whose processors have no video part (llava, llava_next, idefics3): transformers picks the PIL
image processors by itself. The processors of Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision also take a
video processor, which needs torchvision, and AutoProcessor loads one unconditionally. For those
(and for a checkpoint saved without a video processor), `load_processor` composes the family's
processor from the same saved files without its video part: the image processor's PIL backend,
the tokenizer, the chat template and the processor's own settings. Token expansion is the family
processor's own code either way.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

# the files a saved processor keeps its sub-processors' settings in (not processor settings)
SUB_PROCESSORS = ("processor_class", "image_processor", "video_processor", "tokenizer", "auto_map")


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The processor saved at `path` (a directory or hub id), as AutoProcessor loads it, or
    without its video part where torchvision is missing (module docstring)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ImportError, AttributeError) as exc:
        # no torchvision for the video processor, or a checkpoint saved without one
        try:
            return image_only_processor(path, trust_remote_code)
        except Exception as without_video:
            exc.add_note(f"without its video processor it failed too: {without_video!r}")
            raise exc from None


def stored_processor(uri: str, storage: Any = None, trust_remote_code: bool = False) -> Any:
    """The processor of the model at `uri` (a run's model store, a path or a hub id), loaded
    once per process: Ray reuses its worker processes across tasks and actors."""
    key = (uri, trust_remote_code)
    if key not in _stored:
        from amp_ray.models.store import local_model_path

        _stored[key] = load_processor(local_model_path(uri, storage), trust_remote_code)
    return _stored[key]


_stored: dict[tuple[str, bool], Any] = {}


def image_only_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The family's processor built from the files at `path` without a video processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    family_class = PROCESSOR_MAPPING[type(config)]
    settings = _saved_json(path, "processor_config.json")
    for key in SUB_PROCESSORS:
        settings.pop(key, None)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return image_only_class(family_class)(
        image_processor=AutoImageProcessor.from_pretrained(path, backend="pil"),
        tokenizer=tokenizer,
        chat_template=_chat_template(path) or tokenizer.chat_template,
        **settings,
    )


@cache
def image_only_class(family_class: type) -> type:
    """`family_class` with no video_processor in its signature: ProcessorMixin checks every
    sub-processor its __init__ names (None included, against a video base class that does not
    exist without torchvision), and saves each. Named as the family's class, so that a saved
    processor_config.json names the real one."""

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        family_class.__init__(self, image_processor, tokenizer, video_processor=None, **kwargs)

    # ProcessorMixin reads the signature for what to save and load: the family's, less video
    family = inspect.signature(family_class.__init__)
    kept = [p for name, p in family.parameters.items() if name != "video_processor"]
    __init__.__signature__ = family.replace(parameters=kept)  # type: ignore[attr-defined]
    return type(family_class.__name__, (family_class,), {"__init__": __init__})


def _saved_json(path: str, name: str) -> dict[str, Any]:
    local = Path(path, name)
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(path, name)).read_text())
    except (EntryNotFoundError, OSError, ValueError):
        return {}


def _chat_template(path: str) -> str | None:
    """The processor's chat template: chat_template.jinja, or chat_template.json's."""
    for name in ("chat_template.jinja", "chat_template.json"):
        local = Path(path, name)
        if local.is_file():
            text = local.read_text()
            return text if name.endswith(".jinja") else json.loads(text)["chat_template"]
    return None
