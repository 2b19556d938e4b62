"""The embedded tiny LLaVA-1.5: exact HF ``LlavaForConditionalGeneration`` architecture
(CLIP vision tower -> 2-layer GELU projector -> Llama decoder), sized for 2 CPU cores.

Shapes: a 64x64 image gives 8x8 = 64 patch tokens of 8x8 px (+ CLS, dropped by
``vision_feature_select_strategy="default"``) of width 128 taken from the penultimate
CLIP layer (``vision_feature_layer=-2``), projected to the decoder width 128. A shapes
grid cell (16 px) is 2x2 patches. (16-px patches, one per cell, train 2x faster but
never learned to tell shapes apart within 17 minutes: colour yes, shape at chance.)
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ..datasets.shapes import VOCABULARY
from .processor import build_processor

IMAGE_SIZE = 64
PATCH_SIZE = 8
DEFAULT_DIR = "data/tiny-llava-shapes"


def vocabulary() -> list[str]:
    """The tokenizer's word list: every shapes question/answer word."""
    return list(VOCABULARY)


def tiny_processor(newline: bool = False):
    """The ``LlavaProcessor`` of the tiny model (word-level tokenizer, 64 image tokens);
    ``newline=True``: ``"\n"`` is a token too (the ground-truth model's summary position)."""
    return build_processor(vocabulary(), family="llava-1.5", image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                           newline=newline)


def tiny_config(processor=None, layers: int = 8) -> LlavaConfig:
    """LLaVA-1.5 config: CLIP 4x128 (4 heads), Llama ``layers`` x 128 (4 heads, 2 KV heads)."""
    tok = (processor or tiny_processor()).tokenizer
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu",
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def build_model(seed: int = 0, processor=None, layers: int = 8) -> LlavaForConditionalGeneration:
    """A freshly initialised tiny LLaVA of ``layers`` decoder layers (deterministic in ``seed``)."""
    import torch

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_config(processor, layers))
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return model
