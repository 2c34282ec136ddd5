"""Tiny LLaVA models built from config: CLIP vision + Llama text, with a word-level tokenizer
built here from the world's words. They save with save_pretrained and load back offline with
AutoModelForImageTextToText / AutoProcessor like any hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from amp_ray.models.loading import save_model
from amp_ray.spec.blocks import TinyLlavaSpec

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<sep>"]
# <bos> <image>… question <sep> answer <eos> question <sep> answer <eos> …
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}"
    " <sep>{% else %} {{ m['content'][0]['text'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


def word_level_tokenizer(tokens: Iterable[str], unk_token: str) -> Tokenizer:
    """A tokenizer numbering `tokens` in their order (a repeat keeps its first id), over
    whitespace-separated words."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Join words with single spaces, punctuation included ("a red circle ." as in the data).
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tokenizer


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over whitespace-separated words, left-padding for generation.

    The ids are the special tokens, then the words in sorted order: they depend on the set of
    words only. (WordLevelTrainer numbers words by frequency, so adding texts of the same words,
    such as another split of the world, permuted the ids and so changed every model built on
    them.)"""
    split = pre_tokenizers.WhitespaceSplit()
    words = {word for text in texts for word, _ in split.pre_tokenize_str(text)}
    tokenizer = word_level_tokenizer([*SPECIAL_TOKENS, *sorted(words)], "<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int
) -> LlavaProcessor:
    images = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # The CLS feature is dropped ("default" strategy) but counted by the processor: it must insert
    # exactly as many <image> tokens as the vision tower yields features.
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava(
    spec: TinyLlavaSpec, tokenizer: PreTrainedTokenizerFast, image_size: int, seed: int
) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        image_size=image_size,
        patch_size=spec.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.mlp,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def create_tiny_model(
    directory: str | Path, spec: TinyLlavaSpec, texts: Iterable[str], image_size: int, seed: int
) -> None:
    """Build a tiny LLaVA and its processor from scratch and save both in HF format."""
    tokenizer = build_tokenizer(texts)
    processor = tiny_processor(tokenizer, image_size, spec.patch_size)
    model = tiny_llava(spec, tokenizer, image_size, seed)
    save_model(model, str(directory))
    processor.save_pretrained(directory)
