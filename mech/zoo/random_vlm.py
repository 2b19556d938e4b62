"""Random-weight models of every supported family, with processors built offline.

``random_vlm(family, ...) -> (module, processor)``: the exact Hugging Face class of each
family (`mech.families`), seeded random weights, a word-level tokenizer with the family's
image markers and a chat template in its format, and the family's own image processor
scaled down, so that ``processor(text=..., images=...)`` expands the image placeholder
as the real processor does. For tests, demos and ``mech.load("random:<family>")``.

Random towers are too smooth for interventions to show, so, as in `random_llava`, the
image projector's output is scaled by ``image_gain`` (Gemma 3's, zero-initialised, is
randomised first), and the decoder's query/key projections by ``qk_gain``.
"""

from __future__ import annotations

import torch

from ..families.base import without_video
from .processor import build_tokenizer
from .random_llava import WORDS, random_llava

FAMILY_NAMES = ("llava-1.5", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "gemma3", "internvl")


def _chat_template(user: str, image: str, end: str, assistant: str) -> str:
    """A processor chat template (typed content, images first) rendering one user turn as
    ``user + image + text + end`` per message and ``assistant`` as the generation prompt."""
    return ("{% for message in messages %}" + user.replace("{role}", "{{ message['role'] }}")
            + "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
            + "{{ '" + image + "' }}{% endfor %}"
            + "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            + "{{ content['text'] }}{% endfor %}{{ '" + end + "' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '" + assistant + "' }}{% endif %}")


def _text(config_cls, tok, *, layers, hidden, heads, kv_heads, **extra):
    return config_cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, max_position_embeddings=4096, **extra)


def _onevision(words, size, shape):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, Qwen2Config,
                              SiglipVisionConfig)

    patch = 8
    tok = build_tokenizer(words, special=("<|im_start|>", "<|im_end|>", "<video>"), video_token="<video>")
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    images = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, image_grid_pinpoints=pinpoints)
    processor = without_video(LlavaOnevisionProcessor)(
        image_processor=images, tokenizer=tok, num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=_chat_template("<|im_start|>{role}\n", "<image>\n", "<|im_end|>\n", "<|im_start|>assistant\n"))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=size, patch_size=patch)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=_text(Qwen2Config, tok, **shape),
                                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                                  video_token_id=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1)
    return LlavaOnevisionForConditionalGeneration, config, processor, "model.multi_modal_projector.linear_2.weight"


def _qwen(words, size, shape, version: str):
    import transformers as T

    patch, merge = 8, 2
    tok = build_tokenizer(words, special=("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                          "<|image_pad|>", "<|video_pad|>"),
                          image_token="<|image_pad|>", video_token="<|video_pad|>")
    unit = patch * merge
    images = T.Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                        size={"shortest_edge": unit * unit, "longest_edge": (4 * unit) ** 2})
    cls = T.Qwen2VLProcessor if version == "qwen2-vl" else T.Qwen2_5_VLProcessor
    processor = without_video(cls)(
        image_processor=images, tokenizer=tok,
        chat_template=_chat_template("<|im_start|>{role}\n", "<|vision_start|><|image_pad|><|vision_end|>",
                                     "<|im_end|>\n", "<|im_start|>assistant\n"))
    head_dim = shape["hidden"] // shape["heads"]
    quarter = head_dim // 2 // 4
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]}
    if version == "qwen2-vl":
        vision = T.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=shape["hidden"], num_heads=2,
                                       patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2)
        text_cls, config_cls, module_cls = T.Qwen2VLTextConfig, T.Qwen2VLConfig, T.Qwen2VLForConditionalGeneration
        projector = "model.visual.merger.mlp.2.weight"
    else:
        vision = T.Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                          out_hidden_size=shape["hidden"], patch_size=patch, spatial_merge_size=merge,
                                          temporal_patch_size=2, window_size=2 * unit, fullatt_block_indexes=[1])
        text_cls, config_cls = T.Qwen2_5_VLTextConfig, T.Qwen2_5_VLConfig
        module_cls, projector = T.Qwen2_5_VLForConditionalGeneration, "model.visual.merger.mlp.2.weight"
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = config_cls(vision_config=vision.to_dict(),
                        text_config=_text(text_cls, tok, rope_parameters=rope, **shape).to_dict(), **ids)
    return module_cls, config, processor, projector


def _gemma3(words, size, shape):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    patch, tokens = 4, 16  # 8 x 8 patches pooled to 4 x 4 soft tokens
    tok = build_tokenizer(words, special=("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                          "<image_soft_token>"),
                          boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    images = Gemma3ImageProcessorPil(size={"height": size, "width": size})
    processor = Gemma3Processor(
        image_processor=images, tokenizer=tok, image_seq_length=tokens,
        chat_template=_chat_template("<start_of_turn>{role}\n", "<start_of_image>", "<end_of_turn>\n",
                                     "<start_of_turn>model\n"))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=size, patch_size=patch)
    # Explicit layer types: the default pattern makes every layer of a small model sliding.
    n = shape["layers"]
    types = ["sliding_attention" if i % 2 == 0 and i < n - 1 else "full_attention" for i in range(n)]
    text = _text(Gemma3TextConfig, tok, head_dim=shape["hidden"] // shape["heads"], layer_types=types,
                 sliding_window=24, query_pre_attn_scalar=shape["hidden"] // shape["heads"], **shape)
    config = Gemma3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), mm_tokens_per_image=tokens,
                          image_token_id=tok.convert_tokens_to_ids("<image_soft_token>"),
                          boi_token_id=tok.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_id=tok.convert_tokens_to_ids("<end_of_image>"))
    return Gemma3ForConditionalGeneration, config, processor, "model.multi_modal_projector.mm_input_projection_weight"


def _internvl(words, size, shape):
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVisionConfig, Qwen2Config)

    patch = 8
    markers = dict(start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
                   video_token="<video>")
    tok = build_tokenizer(words, special=("<|im_start|>", "<|im_end|>", *markers.values()), **markers)
    for name, token in markers.items():  # the processor reads these ids as tokenizer attributes
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(token))
    images = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True, min_patches=1,
                                      max_patches=4)
    per_tile = (size // patch) ** 2 // 4  # pixel shuffle at downsample ratio 0.5
    processor = without_video(InternVLProcessor)(
        image_processor=images, tokenizer=tok, image_seq_length=per_tile,
        chat_template=_chat_template("<|im_start|>{role}\n", "<IMG_CONTEXT>\n", "<|im_end|>\n",
                                     "<|im_start|>assistant\n"))
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[size, size], patch_size=[patch, patch])
    config = InternVLConfig(vision_config=vision.to_dict(), text_config=_text(Qwen2Config, tok, **shape).to_dict(),
                            image_token_id=tok.context_image_token_id, image_seq_length=per_tile,
                            downsample_ratio=0.5, vision_feature_layer=-1,
                            tie_word_embeddings=False)  # tied, a random model echoes its last input token
    return InternVLForConditionalGeneration, config, processor, "model.multi_modal_projector.linear_2.weight"


def random_vlm(family: str = "llava-1.5", *, attn: str = "sdpa", layers: int = 4, hidden: int | None = None,
               heads: int = 4, kv_heads: int = 2, image_size: int = 32, words=WORDS, seed: int = 0,
               image_gain: float = 20.0, qk_gain: float = 2.0):
    """``(module, processor)`` of ``family`` (one of `FAMILY_NAMES`) with seeded random
    weights, identical for any ``attn``; a tiny model unless sizes are given.

    ``hidden`` defaults to 64 (32 for the LLaVA families, `random_llava`'s own default;
    ``qk_gain`` does not apply to them). Image-token counts per image depend on the
    family: fixed for LLaVA-1.5 and Gemma 3, on the image size (tiles, dynamic
    resolution) for the others, so a batch of images of different sizes has rows with
    different counts.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILY_NAMES)}")
    if family in ("llava-1.5", "llava-next"):
        return random_llava(family, attn=attn, layers=layers, hidden=hidden or 32, heads=heads, kv_heads=kv_heads,
                            image_size=image_size, words=words, seed=seed, image_gain=image_gain)
    words, shape = list(words), dict(layers=layers, hidden=hidden or 64, heads=heads, kv_heads=kv_heads)
    build = {"llava-onevision": _onevision, "gemma3": _gemma3, "internvl": _internvl}.get(family)
    cls, config, processor, projector = (build(words, image_size, shape) if build else
                                         _qwen(words, image_size, shape, family))
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    module = cls(config).eval()
    with torch.no_grad():
        param = module.get_parameter(projector)
        if not param.any():  # Gemma 3 zero-initialises its projection
            param.normal_(0.0, param.shape[0] ** -0.5)
        param.mul_(image_gain)
        for layer in module.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_gain)
            layer.self_attn.k_proj.weight.mul_(qk_gain)
    return module, processor
