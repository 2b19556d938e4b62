"""What each family adapter declares, checked against the family's own processor and model.

The primitives themselves run on every family through the ``family`` fixture (conftest):
test_primitives, test_mask_modes, test_contrastive, test_remote and test_sweep_speed check
each one against plain hooks and transformers' eager ``output_attentions`` per family.
"""

import pytest
import torch

import mech
from mech.families import BY_NAME, FAMILIES
from mech.model import check_config
from tiny_models import QUESTIONS, random_images, tiny_llava

NO_SHARED_ROWS = sorted(name for name, f in BY_NAME.items() if f.shared_rows)
SIZES = [(40, 50), (30, 90), (64, 40)]


def test_every_family_has_an_adapter_and_a_random_model():
    from mech.zoo import FAMILY_NAMES

    assert sorted(BY_NAME) == sorted(FAMILY_NAMES)
    assert len(FAMILIES) == len(BY_NAME) == 7


def test_family_is_recognised_from_module_and_config(model):
    module = model.nn._module
    family = mech.families.family_of(module)
    assert family is model.family
    check_config(module.config.to_dict(), "a saved config")  # by model_type
    check_config({"architectures": [type(module).__name__]}, "a hub config")
    assert model.family.decoder_layers(module) is model.layers._module
    assert len(model.layers) == model.n_layers == module.config.text_config.num_hidden_layers


def test_unsupported_architectures_are_named_with_the_supported_ones():
    with pytest.raises(ValueError, match="unsupported architecture PaliGemma.*Qwen2VLForConditionalGeneration"):
        check_config({"architectures": ["PaliGemmaForConditionalGeneration"]}, "x")
    with pytest.raises(ValueError, match="unsupported architecture Linear.*Gemma3ForConditionalGeneration"):
        mech.load(torch.nn.Linear(2, 2))


def test_image_tokens_are_those_the_processor_writes(model, family):
    """Per row, as transformers' own size arithmetic (``_get_num_multimodal_tokens``,
    which for InternVL also counts its ``<img>``/``</img>`` markers) gives them, and
    ``model.image_tokens`` for each image alone."""
    images = random_images(3, sizes=SIZES)
    batch = model.prepare(questions=QUESTIONS, images=images)
    counts = batch.image_counts.tolist()
    expected = model.processor._get_num_multimodal_tokens(image_sizes=[list(s) for s in SIZES])["num_image_tokens"]
    assert counts == [n - (2 if family == "internvl" else 0) for n in expected]
    assert counts == [model.image_tokens(im.height, im.width) for im in images]
    if family not in ("llava-1.5", "gemma3"):  # the others depend on the image size
        assert len(set(counts)) > 1, counts
    # every image token is one of the config's image-token id, in one block per row
    assert all(bool((batch.image_index[b, 1:n] - batch.image_index[b, :n - 1] == 1).all())
               for b, n in enumerate(counts))


def test_random_family_by_name():
    model = mech.load("random:internvl")
    assert model.family.name == "internvl" and model.source == "random:internvl"
    with pytest.raises(ValueError, match="random:nope.*qwen2-vl"):
        mech.load("random:nope")


def test_a_given_template_uses_the_familys_placeholder():
    module, processor = tiny_llava("qwen2-vl")
    mark = "<|vision_start|><|image_pad|><|vision_end|>"
    model = mech.load(module, processor=processor, template=f"user: {mark}{{question}} assistant:")
    batch = model.prepare(questions=QUESTIONS[:1], images=random_images(1))
    assert int(batch.image_counts[0]) == model.image_tokens(40, 50)
    with pytest.raises(ValueError, match=r"exactly one <\|vision_start\|>"):
        mech.load(module, processor=processor, template="USER: <image>\n{question} ASSISTANT:")
    with pytest.raises(ValueError, match=r"prompt 0 has no <\|vision_start\|>"):
        model.prepare(prompts=["USER: <image> what?"], images=random_images(1))


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_positions_are_the_models_own_multimodal_ones(name):
    """No 1-D position ids in the batch: the model's M-RoPE positions are used, which a
    plain call of the module (processor output only) also uses; 1-D ids would differ."""
    module, processor = tiny_llava(name)
    model = mech.load(module, processor=processor)
    batch = model.prepare(questions=QUESTIONS, images=random_images(3, sizes=SIZES))
    assert "position_ids" not in batch.inputs
    with torch.no_grad():
        with model.trace(batch):
            traced = model.logits.save()
        plain = module(**batch.inputs).logits
        one_d = (batch.inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        wrong = module(**batch.inputs, position_ids=one_d).logits
    real = batch.inputs["attention_mask"].bool()
    assert (traced - plain).abs()[real].max() <= 1e-6
    assert (wrong - plain).abs()[real].max() > 1e-3


def test_gemma3_image_tokens_attend_both_ways():
    """The tiny Gemma 3 exercises what its adapter must respect: image tokens attend to
    later image tokens (token_type_ids), and sliding layers cut off distant keys."""
    module, processor = tiny_llava("gemma3", attn="eager")
    model = mech.load(module, processor=processor)
    batch = model.prepare(questions=QUESTIONS[:1], images=random_images(1))
    first, last = int(batch.image_index[0, 0]), int(batch.image_index[0, -1])
    with torch.no_grad():
        weights = module(**batch.inputs, output_attentions=True).attentions
    assert float(weights[1][0, :, first, last].min()) > 0  # a full-attention layer
    sliding = [i for i, t in enumerate(module.config.text_config.layer_types) if t == "sliding_attention"]
    window = module.config.text_config.sliding_window
    assert sliding and batch.seq_len > window
    assert float(weights[sliding[0]][0, :, -1, :batch.seq_len - window].abs().max()) == 0


@pytest.mark.parametrize("name", NO_SHARED_ROWS)
def test_families_without_shared_rows_say_which_sweep_and_why(name):
    module, processor = tiny_llava(name)
    model = mech.load(module, processor=processor)
    reason = model.family.shared_rows
    batch = model.prepare(questions=QUESTIONS[:2], images=random_images(2))
    with pytest.raises(ValueError, match=f"share_image_rows does not apply to {name}: .*bitwise-exact"):
        mech.zero_mask_sweep(model, batch, [1], 2, share_image_rows=True)
    with pytest.raises(ValueError, match="fast='shared' does not apply to " + name.replace(".", r"\.")):
        mech.sweep(model, [], [mech.ZeroImage(layer=1)], fast="shared")
    with pytest.raises(ValueError, match="templates do not apply"):
        mech.ImageRowTemplates(model)
    assert reason and name not in ("llava-1.5", "llava-next", "llava-onevision", "internvl")


@pytest.mark.parametrize("name", sorted(set(BY_NAME) - {"llava-1.5"}))  # 1.5: test_studies
def test_layer_masking_study_on_a_random_model_of_each_family(name, tmp_path):
    """The study end to end, bitwise sweep equal to naive runs, its dataset naming the family."""
    from studies import layer_masking

    args = ["--model", f"random:{name}", "--out", str(tmp_path), "--limit", "4", "--batch-size", "2",
            "--max-new-tokens", "2", "--no-progress", "--datasets", "shapes"]
    fast = layer_masking.main(args)
    naive = layer_masking.main([*args, "--out", str(tmp_path / "naive"), "--naive-sweep"])
    assert fast.attrs["family"] == name and fast.sizes["layer"] == 4
    assert (fast["prediction"].values == naive["prediction"].values).all()


@pytest.mark.parametrize("name", ["qwen2-vl", "gemma3"])
def test_every_study_on_a_family_with_its_own_positions_or_masks(name, tmp_path):
    """The main job and every other study end to end on Qwen2-VL (3-D positions, no shared
    rows) and Gemma 3 (bidirectional image block, sliding windows); ViCrop, LLaVA-1.5's
    only, is left out of the baselines and said so."""
    import xarray as xr

    from studies import (baselines, controls, hellinger_profile, mask_ratio, pre_layer, review_layer,
                         strategies)

    base = ["--model", f"random:{name}", "--out", str(tmp_path), "--limit", "4", "--batch-size", "2",
            "--max-new-tokens", "2", "--no-progress", "--datasets", "shapes"]
    ds = review_layer.main(base)
    assert ds.attrs["family"] == name
    given = [*base, "--review", "2"]
    ds = hellinger_profile.main(base)
    assert ds.attrs["family"] == name
    for study, extra in ((strategies, []), (pre_layer, []), (mask_ratio, ["--rho", "0,1"]),
                         (controls, ["--seeds", "1"]), (baselines, [])):
        ds = study.main([*given, *extra])
        assert ds.attrs["family"] == name, study.__name__
    assert list(ds["system"].values) == ["dola", "contrastive"] and "not run" in ds.attrs["vicrop"]
    reopened = xr.open_dataset(tmp_path / "baselines.nc")
    assert reopened.attrs["family"] == name
    reopened.close()


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_a_saved_checkpoint_loads_as_the_module_it_was_saved_from(name, tmp_path):
    """``mech.load(folder)``, the path a hub checkpoint takes: the same family, prompts,
    inputs and logits as the module and processor it was saved from. Processors with a
    video slot load without it (transformers' video processors need torchvision)."""
    module, processor = tiny_llava(name)
    module.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, direct = mech.load(str(tmp_path)), mech.load(module, processor=processor)
    assert loaded.family is direct.family and loaded.template == direct.template
    images = random_images(2, sizes=SIZES[:2])
    a, b = (m.prepare(questions=QUESTIONS[:2], images=images) for m in (loaded, direct))
    assert a.prompts == b.prompts and sorted(a.inputs) == sorted(b.inputs)
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    with torch.no_grad():
        with loaded.trace(a):
            got = loaded.logits.save()
        with direct.trace(b):
            expected = direct.logits.save()
    assert torch.equal(got, expected)
