"""Tiny random LLaVA-1.5 and LLaVA-NeXT models with offline processors, for tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextConfig, LlavaNextForConditionalGeneration)

from mech.zoo.processor import build_processor

WORDS = ["what", "color", "is", "the", "circle", "square", "red", "blue", "green", "shape", "yes", "no"]
IMAGE_SIZE, PATCH = 32, 8


def text_config(vocab: int, layers: int = 4) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=512)


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)


def tiny_llava(family: str = "llava-1.5", attn: str = "sdpa", layers: int = 4, seed: int = 0):
    """``(module, processor)`` with random weights; identical weights for any ``attn``."""
    processor = build_processor(WORDS, family=family, image_size=IMAGE_SIZE, patch_size=PATCH)
    tok = processor.tokenizer
    common = dict(vision_config=vision_config(), text_config=text_config(len(tok), layers),
                  image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                  vision_feature_select_strategy="default")
    if family == "llava-1.5":
        config, cls = LlavaConfig(**common), LlavaForConditionalGeneration
    else:
        pinpoints = processor.image_processor.image_grid_pinpoints
        config, cls = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints), LlavaNextForConditionalGeneration
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    torch.manual_seed(seed)
    module = cls(config).eval()
    # Random init leaves image features tiny next to text embeddings; scale them up so
    # image tokens matter and interventions on them move the logits visibly.
    with torch.no_grad():
        module.model.multi_modal_projector.linear_2.weight.mul_(20)
    return module, processor


def random_images(n: int, seed: int = 0, sizes=None) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    sizes = sizes or [(40, 50)] * n
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")) for h, w in sizes]


QUESTIONS = ["what color is the circle?", "what shape is red?", "is the square blue?"]


def tiny_samples(n: int, seed: int = 0, dataset: str = "shapes", sizes=None):
    """``n`` synthetic `Sample`s with random images, cycling `QUESTIONS` and mixed gold answers."""
    from mech.datasets import Sample

    answers = ["square", "blue", "yes", "circle"]
    images = random_images(n, seed=seed, sizes=sizes)
    return [Sample(f"{dataset}-{i:03d}", dataset, images[i], QUESTIONS[i % len(QUESTIONS)],
                   (answers[i % len(answers)],) * 10) for i in range(n)]
