"""The ground-truth model: planted fusion and review layers, and their blind recovery.

Part 1 checks the planting machinery (`mech.zoo.planted`) on a random model of the tiny
architecture; part 2 checks the shipped checkpoint ``data/tiny-llava-review``: a plain
LLaVA that `discover_layers` reads the planted layers off without being told.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mech
from mech.datasets import shapes
from mech.zoo.batches import Batcher, Stage
from mech.zoo.evaluate import PROMPT
from mech.zoo.planted import (PlantedSites, SiteTraining, TokenIds, answers_only, bias_at, forbidden_masks,
                              image_zeroed, query_classes)
from mech.zoo.tiny import build_model, tiny_processor

CKPT = Path(__file__).resolve().parents[1] / "data" / "tiny-llava-review"


@pytest.fixture(scope="module")
def random_tiny():
    processor = tiny_processor()
    model = build_model(0, processor, layers=4).eval()
    model.set_attn_implementation("eager")
    processor.tokenizer.padding_side = "left"
    samples = shapes("test", n=3, seed=0)
    inputs = processor(text=[PROMPT.format(question=s.question) for s in samples],
                       images=[s.image for s in samples], return_tensors="pt", padding=True)
    return model, processor, inputs


def test_query_classes_in_a_multi_turn_training_batch():
    tok = tiny_processor().tokenizer
    ids, _, _, _ = Batcher(tok, 0, 64).batch(Stage("final"), 2, 3)
    q = query_classes(ids, TokenIds.of(tok, tok.convert_tokens_to_ids("<image>")), 1, answer_tokens=3)
    for row in range(2):
        words = tok.convert_ids_to_tokens(ids[row])
        first_after = max(i for i, w in enumerate(words) if w == "<image>") + 1
        assert torch.nonzero(q["summary"][row]).flatten().tolist() == [first_after]
        answer = [words[i] for i in torch.nonzero(q["answer"][row]).flatten().tolist()]
        assert answer == ["?", "assistant", ":"] * 3  # every turn's ending, nothing else


def hidden(model, inputs, sites, bias, pixel_values):
    tok = tiny_processor().tokenizer
    training = SiteTraining(sites, TokenIds.of(tok, model.config.image_token_id))
    with torch.no_grad(), training.active(model, inputs["input_ids"], bias, valid=inputs["attention_mask"].bool()):
        out = model(**{**inputs, "pixel_values": pixel_values}, output_hidden_states=True)
    return out.hidden_states, training.mass


def test_hard_mask_keeps_the_image_out_of_text_except_at_sites(random_tiny):
    model, _, inputs = random_tiny
    sites = PlantedSites(fusion=(1,), review=3)
    other = torch.randn_like(inputs["pixel_values"])
    text = (inputs["input_ids"] != model.config.image_token_id) & inputs["attention_mask"].bool()  # not padding
    summary = query_classes(inputs["input_ids"], TokenIds.of(tiny_processor().tokenizer, 4), 1)["summary"]
    a, mass = hidden(model, inputs, sites, float("inf"), inputs["pixel_values"])
    b, _ = hidden(model, inputs, sites, float("inf"), other)
    moved = lambda L: (a[L] - b[L]).abs().amax(-1)  # (B, T) after layer L-1
    assert moved(1)[text].max() < 1e-5  # layer 0 is no site: no text token saw the image
    assert moved(2)[text & ~summary].max() < 1e-5 and moved(2)[summary].min() > 1e-3  # fusion site
    assert max(float(m) for m in mass.values()) < 1e-6
    c, soft_mass = hidden(model, inputs, sites, 0.0, inputs["pixel_values"])
    d, _ = hidden(model, inputs, sites, 0.0, other)
    after = torch.cumsum((~text & inputs["attention_mask"].bool()).long(), 1) > 0  # text after the image
    assert (c[1] - d[1]).abs().amax(-1)[text & after].min() > 1e-4  # without the mask every one does
    assert float(soft_mass[0]) > 0.05


def test_forbidden_masks_follow_the_sites():
    tok = tiny_processor().tokenizer
    ids, _, _, _ = Batcher(tok, 1, 64).batch(Stage("final"), 2, 2)
    token_ids = TokenIds.of(tok, tok.convert_tokens_to_ids("<image>"))
    sites = PlantedSites(fusion=(1, 2), review=4, answer_tokens=1)
    masks = forbidden_masks(ids, token_ids, sites, 6)
    q = query_classes(ids, token_ids, 1, 1)
    image = q["image"]
    for layer, m in enumerate(masks):
        assert not (m & ~image[:, None, :]).any()  # only image keys are ever forbidden
        allowed = q["text"] & ~(m.any(-1))  # text queries with no forbidden image key
        want = (q["summary"] if layer in sites.fusion else q["answer"] if layer == sites.review
                else torch.zeros_like(image))
        assert torch.equal(allowed, want)
        assert not m[image].any()  # image queries are never restricted


def test_bias_schedule_and_answer_only_labels():
    assert bias_at(0, 100, 12, 0.5, 0.3) == float("inf") and bias_at(49, 100, 12, 0.5, 0.3) == float("inf")
    assert bias_at(50, 100, 12, 0.5, 0.3) == 12 and bias_at(65, 100, 12, 0.5, 0.3) == pytest.approx(6)
    assert bias_at(80, 100, 12, 0.5, 0.3) == 0 and bias_at(99, 100, 12, 0.5, 0.3) == 0
    labels = torch.tensor([[-100, 7, 2, -100, 9, 2], [-100, 7, 2, -100, 9, 2]])
    out = answers_only(labels, torch.tensor([True, False]), [9], eos=2)
    assert out.tolist() == [[-100, -100, -100, -100, 9, 2], labels[1].tolist()]


def test_training_ablation_is_the_toolkits_zero_mask(random_tiny):
    model, processor, inputs = random_tiny
    rows = torch.tensor([True, False, True])
    with torch.no_grad(), image_zeroed(model, inputs["input_ids"], rows, 2, model.config.image_token_id):
        ours = model(**inputs).logits[:, -1]
    model.set_attn_implementation("sdpa")
    try:
        loaded = mech.load(model, processor=processor)
        batch = loaded.prepare(shapes("test", n=3, seed=0))
        with torch.no_grad(), loaded.trace(batch):
            mech.apply(loaded, batch, mech.ZeroImage(layer=2))
            zeroed = loaded.logits[:, -1].save()
        with torch.no_grad():
            plain = model(**inputs).logits[:, -1]
    finally:
        model.set_attn_implementation("eager")
    assert torch.allclose(ours[rows], zeroed[rows], atol=1e-4)
    assert torch.allclose(ours[~rows], plain[~rows], atol=1e-5)
    assert (ours[rows] - plain[rows]).abs().max() > 1e-3


# --- the shipped ground-truth checkpoint ---------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """The options of the checkpoint's training run, as it recorded them."""
    from argparse import Namespace

    return Namespace(**json.loads((CKPT / "training_log.json").read_text())["args"])


@pytest.fixture(scope="module")
def planted(trained):
    """The planted design of the checkpoint."""
    from mech.zoo.runs import planted_sites

    return planted_sites(trained)


@pytest.fixture(scope="module")
def masking(trained):
    """Zero-masking scores at every layer on 400 clean test samples of the question types
    the model was trained on (the toolkit's sweep). 400: at 150-200 the review layer's drop
    is found but the flat stretch before it is not settled (the card's table by n)."""
    from mech.zoo.review_card import masking_scores
    from mech.zoo.runs import question_types

    samples = shapes("test", n=400, seed=0, types=question_types(trained))
    return samples, masking_scores(CKPT, samples)


def test_checkpoint_is_a_plain_small_llava():
    config = json.loads((CKPT / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in config
    assert (CKPT / "model.safetensors").stat().st_size <= 30e6
    model = mech.load("tiny-review")
    assert type(model.nn._module).__name__ == "LlavaForConditionalGeneration" and model.n_layers == 8


def test_discovery_recovers_the_planted_layers_blind(planted, masking):
    """Zero-masking discovery, told nothing, finds the planted review layer (not the
    fallback) and every planted fusion layer the weights use. Which sites are used is
    measured independently, by text->image attention knockout at one layer
    (`reading_layers`): a planted site the weights ignore is not a fusion layer."""
    from mech.zoo.review_card import discovery, reading_layers

    samples, scores = masking
    assert scores["none"].mean() >= 0.9
    found = discovery(scores)
    assert found.review_layer is not None, found.reason  # not the fallback
    assert found.review_layer == planted.review and found.post_layer == planted.review - 1
    assert found.review_frequency[planted.review] >= 0.9
    reads = reading_layers("tiny-review", samples[:200])
    assert set(reads) <= {*planted.fusion, planted.review}  # the image is read at planted sites only
    used = [L for L in planted.fusion if L in reads]
    assert used and planted.review in reads
    assert set(used) <= set(found.fusion_layers) and min(found.fusion_frequency[L] for L in used) >= 0.9


def test_the_weights_keep_the_planted_attention_pattern(planted):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mech.zoo.planted import image_attention_by_site

    model = LlavaForConditionalGeneration.from_pretrained(CKPT, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(CKPT, local_files_only=True)
    mass = image_attention_by_site(model, processor, shapes("test", n=20, seed=0), planted)
    off = [L for L in range(model.config.text_config.num_hidden_layers) if L != planted.review]
    assert mass["answer"][planted.review] >= 0.2
    assert max(mass["answer"][L] for L in off) <= 0.02  # the last token reads the image only there
    assert max(mass["summary"][L] for L in planted.fusion) >= 0.2
    assert max(mass["other"]) <= 0.02
