"""Tiny random models of six VLM families, built from transformers' own config classes and saved
with their processors, so that tests can run every family offline on CPU.

Each family gets its real *ForConditionalGeneration class, its real processor class with its PIL
image processor (torchvision is not installed, so no torchvision image or video processor), a
word-level tokenizer over a fixed word list with the special tokens the family's processor needs,
and a chat template of the family's shape. Widths are tiny and image token counts small (tens), so
a forward of a few items with small images takes well under a second on CPU.

    build_tiny(family, directory, seed)   # save model + processor to `directory`
    amp_ray.models.loading.load_processor(directory), load_model(directory)  # load them back

The processors of Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision are built without their video
processor (amp_ray/models/processors.py says why), as load_processor loads them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import (
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from amp_ray.models.processors import image_only_class
from amp_ray.models.tiny import word_level_tokenizer

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3")


_SENTENCES = (
    "what shape is in the picture ?",
    "what colour is the shape ?",
    "what color is the big shape on the left ?",
    "how many shapes are there in the image ?",
    "is the circle red or blue ?",
    "where is the small square ?",
    "describe the image in one sentence .",
    "there is a red circle on the left and a blue square on the right .",
    "a small green square above a large blue triangle .",
    "the yellow star is next to the purple hexagon .",
    "two orange circles and one white square , nothing else .",
    "it is a black rectangle in the middle of a grey background .",
    "the pink diamond is below the brown oval at the top .",
    "three shapes : a cyan ellipse , a magenta pentagon and a green line .",
    "yes , no , maybe , none , both , all , some , many , few , more , less .",
    "zero one two three four five six seven eight nine ten",
    "0 1 2 3 4 5 6 7 8 9 10 11 12",
    "first second third last corner center edge up down bottom",
    "dark light bright pale striped dotted solid empty filled round sharp",
    "the answer is correct ! the answer is wrong ! i think so . i do not know .",
)
# Words the chat templates write around the messages (roles, headers, the Qwen system prompt).
_TEMPLATE_WORDS = (
    "USER:", "ASSISTANT:", "[INST]", "[/INST]", "user", "assistant", "system",
    "User:", "Assistant:", "You", "are", "helpful", "assistant.",
)  # fmt: skip
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*(word for sentence in _SENTENCES for word in sentence.split()), *_TEMPLATE_WORDS]
    )
)

# Special tokens per family: bos/eos/pad/unk, the processor's own tokens (named ones become
# tokenizer attributes such as tokenizer.image_token, which the processors read), and extra ones.
_QWEN_NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_IDEFICS3_GRID = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
_TOKENS: dict[str, dict[str, Any]] = {
    "llava": {
        "bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>",
        "named": {"image_token": "<image>"}, "more": (),
    },
    "llava_next": {
        "bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>",
        "named": {"image_token": "<image>"}, "more": (),
    },
    "llava_onevision": {
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": "<unk>",
        "named": {"image_token": "<image>", "video_token": "<video>"},
        "more": ("<|im_start|>",),
    },
    "qwen2_vl": {
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": "<unk>",
        "named": _QWEN_NAMED, "more": ("<|im_start|>",),
    },
    "qwen2_5_vl": {
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": "<unk>",
        "named": _QWEN_NAMED, "more": ("<|im_start|>",),
    },
    "idefics3": {
        "bos": "<|begin_of_text|>", "eos": "<end_of_utterance>", "pad": "<pad>", "unk": "<unk>",
        "named": {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        "more": _IDEFICS3_GRID,
    },
}  # fmt: skip


def _each(kind: str, body: str) -> str:
    """Jinja: `body` for each content item of message m of type `kind` ("image", "text")."""
    return (
        "{% for c in m['content'] %}{% if c['type'] == '" + kind + "' %}" + body
        + "{% endif %}{% endfor %}"
    )  # fmt: skip


_TEXTS = _each("text", "{{ c['text'] }}")

# Chat templates. The image of a user turn comes first, then its text, as in each family's own
# template; rendering messages[:k] is a prefix of rendering messages[:k+1] (with the generation
# prompt after a user turn), and the assistant's text is the last thing of its turn but the
# end-of-turn token, so continue_final_message can cut there.
CHAT_TEMPLATES: dict[str, str] = {
    # llava-1.5: USER: <image>\nQ ASSISTANT: A</s>
    "llava": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        + _each("image", "<image>\n")
        + _TEXTS
        + " {% else %}ASSISTANT: "
        + _TEXTS
        + "{{ eos_token }} {% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
    # llava-v1.6-mistral: [INST] <image>\nQ [/INST] A</s>
    "llava_next": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        + _each("image", "<image>\n")
        + _TEXTS
        + " [/INST]{% else %} "
        + _TEXTS
        + "{{ eos_token }}{% endif %}{% endfor %}"
    ),
    # llava-onevision (Qwen2 text): <|im_start|>user <image>\nQ<|im_end|>\n<|im_start|>assistant\n
    "llava_onevision": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}"
        "{% if m['role'] == 'user' %} "
        + _each("image", "<image>\n")
        + "{% else %}{{ '\\n' }}{% endif %}"  # a bare newline after a block tag is trimmed
        + _TEXTS
        + "<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # Qwen2-VL / Qwen2.5-VL: default system prompt, then
    # <|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n
    "qwen2_vl": (
        "{% if messages[0]['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        + _each("image", "<|vision_start|><|image_pad|><|vision_end|>")
        + _TEXTS
        + "{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # Idefics3: <|begin_of_text|>User:<image>Q<end_of_utterance>\nAssistant: A<end_of_utterance>\n
    "idefics3": (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}User:{% else %}Assistant:{% endif %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    ),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen2_vl"]

# Tiny widths shared by every family.
TEXT_HIDDEN = 32
VISION_HIDDEN = 32
HEADS = 2
LAYERS = 1
IMAGE_SIZE = 32  # the vision towers' tile (llava, llava_next, onevision, idefics3)
PATCH = 8  # 4x4 patches per 32 px tile
QWEN_PATCH = 4  # qwen: 4 px patches, 2x2 merged: one token per 8x8 px
QWEN_MIN_PIXELS = 16 * 16
QWEN_MAX_PIXELS = 64 * 64  # at most 64 image tokens
PINPOINTS = [[32, 32], [32, 64], [64, 32]]  # anyres grids: at most 2 tiles + the base image
CLIP_MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def make_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS plus the family's special tokens, left-padding."""
    spec = _TOKENS[family]
    specials = [spec["unk"], spec["pad"], spec["eos"]]
    specials += [spec["bos"]] if spec["bos"] else []
    specials += list(spec["named"].values()) + list(spec["more"])
    specials = list(dict.fromkeys(specials))
    tokenizer = word_level_tokenizer([*specials, *WORDS], spec["unk"])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        unk_token=spec["unk"],
        padding_side="left",
        extra_special_tokens=dict(spec["named"]),
    )


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# the vision towers' tiny shape (CLIP, SigLIP and Idefics3's own take the same keys)
VISION_TOWER = {
    "hidden_size": VISION_HIDDEN,
    "intermediate_size": 2 * VISION_HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH,
}


def _text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
        **_ids(tokenizer),
    }


def _llama(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(**_text_kwargs(tokenizer))


def _qwen_text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    # M-RoPE: the head's rotary half (16 / 2 = 8) split over temporal, height and width.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return {**_text_kwargs(tokenizer), "rope_parameters": rope}


def _llava_kwargs(tokenizer: PreTrainedTokenizerFast, family: str) -> dict[str, Any]:
    """LLaVA-1.5 and NeXT processors: CLS counted (+1) and dropped by the "default" strategy."""
    return {
        "tokenizer": tokenizer,
        "patch_size": PATCH,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": CHAT_TEMPLATES[family],
    }


def _llava(tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        **CLIP_MEAN_STD,
    )
    processor = LlavaProcessor(image_processor=images, **_llava_kwargs(tokenizer, "llava"))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_TOWER),
        text_config=_llama(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return processor, config  # 16 image tokens an image


def _llava_next(tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
        **CLIP_MEAN_STD,
    )
    processor = LlavaNextProcessor(image_processor=images, **_llava_kwargs(tokenizer, "llava_next"))
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION_TOWER),
        text_config=_llama(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
    )
    return processor, config


def _llava_onevision(tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    tok = tokenizer.convert_tokens_to_ids
    images = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
        **CLIP_MEAN_STD,
    )
    processor = image_only_class(LlavaOnevisionProcessor)(
        image_processor=images,
        tokenizer=tokenizer,
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATES["llava_onevision"],
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION_TOWER),
        text_config=Qwen2Config(**_text_kwargs(tokenizer)),
        image_token_index=tok("<image>"),
        video_token_index=tok("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    return processor, config


def _qwen(tokenizer: PreTrainedTokenizerFast, family: str) -> tuple[Any, Any]:
    tok = tokenizer.convert_tokens_to_ids
    images = Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        patch_size=QWEN_PATCH,
        temporal_patch_size=2,
        merge_size=2,
    )
    ids = {
        "image_token_id": tok("<|image_pad|>"),
        "video_token_id": tok("<|video_pad|>"),
        "vision_start_token_id": tok("<|vision_start|>"),
        "vision_end_token_id": tok("<|vision_end|>"),
    }
    common = {"patch_size": QWEN_PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2}
    text = _qwen_text_kwargs(tokenizer)
    if family == "qwen2_vl":
        processor_class, config_class = Qwen2VLProcessor, Qwen2VLConfig
        vision = Qwen2VLVisionConfig(
            depth=LAYERS,
            embed_dim=VISION_HIDDEN,
            hidden_size=TEXT_HIDDEN,  # the merger's output width
            mlp_ratio=2,
            num_heads=HEADS,
            **common,
        )
        text_config = Qwen2VLTextConfig(**text)
    else:
        processor_class, config_class = Qwen2_5_VLProcessor, Qwen2_5_VLConfig
        vision = Qwen2_5_VLVisionConfig(
            depth=2,  # one windowed block, one full-attention block
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            num_heads=HEADS,
            window_size=4 * QWEN_PATCH * 2,  # windows of 4x4 merged tokens
            out_hidden_size=TEXT_HIDDEN,
            fullatt_block_indexes=[1],
            **common,
        )
        text_config = Qwen2_5_VLTextConfig(**text)
    processor = image_only_class(processor_class)(
        image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATES[family]
    )
    config = config_class(vision_config=vision, text_config=text_config, **ids)
    config.tie_word_embeddings = False
    return processor, config


def _idefics3(tokenizer: PreTrainedTokenizerFast) -> tuple[Any, Any]:
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=True,
        **CLIP_MEAN_STD,
    )
    scale_factor = 2
    seq_len = (IMAGE_SIZE // PATCH) ** 2 // scale_factor**2  # 4 tokens per 32 px tile
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=CHAT_TEMPLATES["idefics3"],
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**VISION_TOWER),
        text_config=_llama(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        tie_word_embeddings=False,
    )
    return processor, config


# family -> (tokenizer -> (processor, config))
_BUILDERS: dict[str, Any] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": lambda tokenizer: _qwen(tokenizer, "qwen2_vl"),
    "qwen2_5_vl": lambda tokenizer: _qwen(tokenizer, "qwen2_5_vl"),
    "idefics3": _idefics3,
}


_MODEL_CLASSES: dict[str, type] = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "idefics3": Idefics3ForConditionalGeneration,
}


def build_tiny(family: str, directory: str | Path, seed: int = 0) -> None:
    """Build a tiny random `family` model (float32, seeded) and its processor; save both to
    `directory` in HF format (model.save_pretrained + processor.save_pretrained)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    tokenizer = make_tokenizer(family)
    processor, config = _BUILDERS[family](tokenizer)
    torch.manual_seed(seed)
    model = _MODEL_CLASSES[family](config).to(torch.float32).eval()
    for key, value in _ids(tokenizer).items():
        setattr(model.generation_config, key, value)
    Path(directory).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
