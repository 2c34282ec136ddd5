"""The KV caches of the shared-prefix forward (models/level_scoring.py), safe under gradient
checkpointing.

HF's checkpointed decoder layers drop any cache they are given, because a checkpointed layer runs
its forward again during backward and a `DynamicCache` would then be extended a second time.
These caches can be replayed: the prefix cache stores each layer's keys and values on the first
call only (the replay gets back the same tensors it passes in), and the response cache reads the
repeated prefix without ever storing (every call returns prefix + the call's own keys). So the
layers may keep them (`checkpointing_with_cache`), and the prefix is still run once per item.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from amp_ray.errors import AmpRayError


class WriteOnceLayer(DynamicLayer):
    """A prefix layer: the first update stores, a checkpoint replay returns its inputs."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.get_seq_length() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        return key_states, value_states


class ReadOnlyLayer(DynamicLayer):
    """A response layer over a fixed prefix: attends to prefix + the call's keys, stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def prefix_cache(model: Any) -> Cache:
    """An empty cache for the prefix forward of `model` (full attention only: a sliding-window
    layer keeps only its window, which these layers do not model)."""
    text = model.config.get_text_config()
    if "sliding_attention" in (getattr(text, "layer_types", None) or []):
        raise AmpRayError(
            f"{text.model_type}'s language model has sliding-window layers, which the "
            "shared-prefix forward does not support",
            hint="set training.forward: full",
        )
    return Cache(layer_class_to_replicate=WriteOnceLayer)


def repeated_for_responses(prefix: Cache, repeats: int) -> Cache:
    """The prefix's keys and values repeated `repeats` times per item, read-only."""
    return Cache(
        layers=[
            ReadOnlyLayer(
                layer.keys.repeat_interleave(repeats, 0), layer.values.repeat_interleave(repeats, 0)
            )
            for layer in prefix.layers
        ]
    )


@contextmanager
def checkpointing_with_cache(model: torch.nn.Module) -> Iterator[None]:
    """Let `model`'s checkpointed layers keep the cache they are given while in this block (their
    backward replay keeps the same cache objects: only these replayable caches may be passed)."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache
