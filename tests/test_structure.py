"""Real-size LLaVA structure, instantiated on the meta device (no weights, no download)."""

import pytest
import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextConfig, LlavaNextForConditionalGeneration)

import mech

# The published configs of llava-hf/llava-1.5-7b-hf and llava-hf/llava-v1.6-vicuna-7b-hf.
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768)
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def meta_model(cls, config):
    with torch.device("meta"):
        return cls(config)


@pytest.fixture(scope="module")
def llava_15():
    config = LlavaConfig(vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LlamaConfig(**VICUNA_7B),
                         image_token_id=32000, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    return mech.load(meta_model(LlavaForConditionalGeneration, config))


@pytest.fixture(scope="module")
def llava_next():
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LlamaConfig(**VICUNA_7B),
                             image_token_id=32000, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS)
    return mech.load(meta_model(LlavaNextForConditionalGeneration, config))


@pytest.mark.parametrize("name", ["llava_15", "llava_next"])
def test_seven_b_layers_and_paths(request, name):
    model = request.getfixturevalue(name)
    assert model.n_layers == 32
    assert len(model.layers) == 32
    module = model.nn._module
    for i in (0, 31):
        layer = module.get_submodule(f"{model.layer_path}.{i}")
        assert type(layer).__name__ == "LlamaDecoderLayer"
        assert model.layers[i]._module is layer
    assert model.family.name == {"llava_15": "llava-1.5", "llava_next": "llava-next"}[name]
    # No processor, so no chat template: lmms-eval's vicuna fallback.
    assert model.prompt_template.source == "lmms-eval vicuna fallback"
    with pytest.raises(ValueError, match=r"0\.\.31"):
        model.check_layer(32)


def test_llava_15_has_576_image_tokens_at_336(llava_15):
    assert llava_15.image_tokens(336, 336) == 576
    assert llava_15.image_tokens() == 576


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration.*LlavaNextForConditionalGeneration"):
        mech.load(torch.nn.Linear(2, 2))
