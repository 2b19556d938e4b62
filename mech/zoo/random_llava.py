"""Random-weight LLaVA-1.5 / LLaVA-NeXT models of any size with offline processors.

For tests (tiny), benchmarks (mid-size) and demos: the exact Hugging Face classes,
so every code path of a real checkpoint runs, without any download.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextConfig, LlavaNextForConditionalGeneration)

from .processor import build_processor

WORDS = ("what", "color", "is", "the", "circle", "square", "red", "blue", "green", "shape", "yes", "no")


def random_llava(family: str = "llava-1.5", *, attn: str = "sdpa", layers: int = 4, hidden: int = 32,
                 heads: int = 4, kv_heads: int = 2, image_size: int = 32, patch_size: int = 8,
                 vision_hidden: int = 32, vision_layers: int = 2, image_gain: float = 20.0,
                 words=WORDS, seed: int = 0, intermediate: int | None = None,
                 vision_intermediate: int | None = None, vocab_size: int | None = None,
                 device=None, dtype: torch.dtype | None = None):
    """``(module, processor)`` with seeded random weights, identical for any ``attn``.

    ``image_gain`` scales the projector's output: random init leaves image features tiny
    next to text embeddings, and interventions on image tokens should move the logits.
    ``(image_size // patch_size) ** 2`` image tokens per image (per tile for NeXT).
    ``intermediate``/``vision_intermediate`` default to twice the hidden sizes;
    ``vocab_size`` (at least the processor's) pads the embedding and LM head to a real
    model's shape. ``device``/``dtype``: where the weights are made and their type (a
    7B-shaped model is made directly on the GPU).
    """
    processor = build_processor(list(words), family=family, image_size=image_size, patch_size=patch_size)
    tok = processor.tokenizer
    if vocab_size is not None and vocab_size < len(tok):
        raise ValueError(f"vocab_size={vocab_size}: the processor has {len(tok)} tokens; give at least that")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate or 2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden // 16),
                              image_size=image_size, patch_size=patch_size)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab_size or len(tok),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, max_position_embeddings=4096)
    common = dict(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                  vision_feature_layer=-2, vision_feature_select_strategy="default")
    if family == "llava-1.5":
        config, cls = LlavaConfig(**common), LlavaForConditionalGeneration
    elif family == "llava-next":
        pinpoints = processor.image_processor.image_grid_pinpoints
        config, cls = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints), LlavaNextForConditionalGeneration
    else:
        raise ValueError(f"unknown family {family!r}; expected 'llava-1.5' or 'llava-next'")
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        module = cls(config).eval()
    if dtype is not None:
        module = module.to(dtype)
    with torch.no_grad():
        module.model.multi_modal_projector.linear_2.weight.mul_(image_gain)
    return module, processor


def random_images(n: int, seed: int = 0, sizes=None) -> list[Image.Image]:
    """``n`` noise images; ``sizes`` lists ``(height, width)`` (default 40 x 50)."""
    rng = np.random.RandomState(seed)
    sizes = sizes or [(40, 50)] * n
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for h, w in sizes]
