"""Where the mask acts (input / normed / attention), the controls, and honest capture:
each against plain PyTorch hooks or transformers' own eager attention."""

import pytest
import torch

import mech
from mech.contrastive import SELECTIONS, selection_weights, slot_keys
from reference import attention_scale_hooks, hooks, multiplier, normed_hook
from test_generation_steps import generate

TOL = 1e-5
NEW = 4


def key_weights(batch, weights):
    """``[batch, seq]`` per-position weights: ``weights`` on image tokens, 1 elsewhere."""
    return multiplier(batch.inputs["input_ids"], batch_image_token(batch), weights)[..., 0]


def batch_image_token(batch):
    return int(batch.inputs["input_ids"][batch.image_mask][0])


def run_hooks(model, batch, handles, new=NEW):
    module = model.nn._module
    with hooks(*handles), torch.no_grad():
        logits = module(**batch.inputs).logits
        ids = module.generate(**batch.generate_inputs, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return logits, ids[:, batch.seq_len:]


def mech_logits(model, batch, *interventions, **options):
    with torch.no_grad(), model.trace(batch, **options):
        mech.apply(model, batch, *interventions)
        logits = model.logits.save()
    return logits


def soft_weights(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch.image_index.shape, generator=g) * 0.9


@pytest.mark.parametrize("layer", [0, 2])
def test_scale_normed_matches_a_norm_output_hook(model, batch, layer):
    weights = soft_weights(batch)
    layers = model.nn._module.model.language_model.layers
    mult = multiplier(batch.inputs["input_ids"], model.image_token_id, weights)
    ref_logits, ref_ids = run_hooks(model, batch, [normed_hook(layers, layer, mult, batch.seq_len)])
    iv = mech.ScaleImage(layer=layer, weights=weights, at="normed")
    logits = mech_logits(model, batch, iv)
    real = batch.inputs["attention_mask"].bool()
    assert (logits - ref_logits).abs()[real].max() <= TOL
    with torch.no_grad(), model.generate(batch, max_new_tokens=NEW) as tr:  # prefill only: the image is there
        mech.apply(model, batch, iv)
        ids = tr.result.save()
    assert torch.equal(ids[:, batch.seq_len:], ref_ids)
    assert (logits - mech_logits(model, batch)).abs()[real].max() > 1e-3
    # unlike the residual stream, the normed states are not normalised back: "input" differs
    residual = mech_logits(model, batch, mech.ScaleImage(layer=layer, weights=weights, at="input"))
    assert (residual - logits).abs()[real].max() > 1e-3


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_scale_attention_matches_hooks_at_every_token(model, batch, weight):
    layers = model.nn._module.model.language_model.layers
    handles = attention_scale_hooks(layers, 1, key_weights(batch, weight))
    ref_logits, ref_ids = run_hooks(model, batch, handles)
    iv = mech.ScaleImage(layer=1, weights=weight, at="attention")
    real = batch.inputs["attention_mask"].bool()
    assert (mech_logits(model, batch, iv) - ref_logits).abs()[real].max() <= TOL
    ids, _ = generate(model, batch, [iv], NEW)
    assert torch.equal(ids, ref_ids)
    # acting on the prefill only would give other tokens: the decode steps matter
    with torch.no_grad(), model.generate(batch, max_new_tokens=NEW) as tr:
        mech.apply(model, batch, iv)
        prefill_only = tr.result.save()
    plain, _ = generate(model, batch, [], NEW)
    assert not torch.equal(ids, plain)
    assert iv.acts_on_generation and not mech.ScaleImage(layer=1, weights=0.3).acts_on_generation
    del prefill_only


def test_attention_scaling_reweights_the_layers_own_attention(models, family):
    """At the first scaled layer its logits are unchanged, so each query's attention must be
    the unedited softmax times the weights, renormalised; sdpa and eager capture agree."""
    eager = models["eager"]
    from tiny_models import QUESTIONS, random_images
    from conftest import SIZES

    batch = eager.prepare(questions=QUESTIONS, images=random_images(3, sizes=SIZES))
    weights = soft_weights(batch, seed=1) + 0.05
    layer = 2
    with torch.no_grad():
        out = eager.nn._module(**batch.inputs, output_attentions=True)
    plain = out.attentions[layer][:, :, -1, :]  # [batch, heads, seq]
    per_key = key_weights(batch, weights)
    expected = plain * per_key[:, None, :]
    expected = expected / expected.sum(-1, keepdim=True)
    expected = mech.attention.image_attention(expected, batch.image_index, batch.image_valid, "mean")
    for method, model in (("eager", eager), ("sdpa", models["sdpa"])):
        with torch.no_grad(), model.trace(batch):
            captured, _ = mech.apply(model, batch, mech.CaptureImageAttention(layers=[layer], method=method),
                                     mech.ScaleImage(layer=layer, weights=weights, at="attention"))
        assert (captured[layer] - expected).abs().max() <= TOL, method
    unedited = mech.attention.image_attention(plain, batch.image_index, batch.image_valid, "mean")
    assert (expected - unedited).abs().max() > 1e-3


def test_capture_under_knockout_reports_the_edited_attention(models):
    """Knockout of the last token's image attention: sdpa and eager both report rows of
    zeros (no attention on the image to normalise), whatever order they are given in."""
    from tiny_models import QUESTIONS, random_images
    from conftest import SIZES

    results = {}
    for method in ("sdpa", "eager"):
        model = models[method]
        batch = model.prepare(questions=QUESTIONS, images=random_images(3, sizes=SIZES))
        for order in (0, 1):
            ivs = [mech.CaptureImageAttention(layers=[1, 2], method=method), mech.Knockout(layers=[2])]
            with torch.no_grad(), model.trace(batch):
                out = mech.apply(model, batch, *(ivs if order == 0 else ivs[::-1]))
            captured = out[0] if order == 0 else out[1]
            results[method, order] = captured
            assert torch.all(captured[2] == 0), method
            assert torch.allclose(captured[1].sum(-1), torch.ones(3)), method
    assert torch.allclose(results["sdpa", 0][1], results["eager", 0][1], atol=TOL)


@pytest.mark.parametrize("mask_at", ["input", "normed", "attention"])
def test_contrastive_mask_modes_equal_scaling_by_its_weights(model, batch, mask_at):
    iv = mech.ContrastiveMask(review=2, rho=0.5, lam=0.1, mask_at=mask_at)
    with torch.no_grad(), model.trace(batch):
        result = mech.apply(model, batch, iv)
        logits = model.logits.save()
    scale = mech.ScaleImage(layer=2, weights=result["weights"], at=mask_at)
    real = batch.inputs["attention_mask"].bool()
    assert (mech_logits(model, batch, scale) - logits).abs()[real].max() <= TOL
    assert (mech_logits(model, batch) - logits).abs()[real].max() > 1e-4
    ids, again = generate(model, batch, [iv], NEW)
    ref, _ = generate(model, batch, [scale], NEW)
    assert torch.equal(ids, ref) and torch.equal(again["weights"], result["weights"])


def test_attention_mode_through_the_runner_and_remote_local(model):
    from tiny_models import tiny_samples

    samples = tiny_samples(4)
    iv = mech.ContrastiveMask(review=2, rho=0.5, lam=0.0, mask_at="attention")
    local = mech.run(model, samples, iv, batch_size=2, max_new_tokens=3, progress=False)
    remote = mech.run(model, samples, iv, batch_size=2, max_new_tokens=3, progress=False, remote="local")
    assert local.predictions == remote.predictions
    assert [r.extras["weights"] for r in local.records] == [r.extras["weights"] for r in remote.records]
    batch = model.prepare(samples[:2], question_prompt=mech.prompts.question_prompt)
    ids, _ = generate(model, batch, [iv], 3)
    assert local.predictions[:2] == model.decode(torch.cat([batch.inputs["input_ids"], ids], 1), batch)
    for mask_at in ("normed", "attention"):
        one = mech.ContrastiveMask(review=2, rho=0.5, mask_at=mask_at)
        b = model.prepare(samples)
        assert torch.allclose(mech_logits(model, b, one), mech_logits(model, b, one, remote="local"), atol=TOL)


def test_residual_mask_at_the_last_layer_is_inert_but_not_the_others(model, batch):
    """The next-token logits: a residual-stream scale at the last layer's input is divided
    back out by its RMSNorm (up to its epsilon) and no layer follows, so the answer cannot
    change; scaling after the norm or in attention acts at that layer itself."""
    last = model.n_layers - 1
    clean = mech_logits(model, batch)[:, -1]
    changes = {m: (mech_logits(model, batch, mech.ContrastiveMask(review=last, rho=0.5, mask_at=m))[:, -1] - clean)
               .abs().max().item() for m in ("input", "normed", "attention")}
    assert changes["input"] < 1e-3, changes
    assert changes["normed"] > 10 * changes["input"] and changes["attention"] > 10 * changes["input"], changes


# -- controls ---------------------------------------------------------------------------

def test_controls_scale_as_many_tokens_by_their_own_rule():
    torch.manual_seed(0)
    scores, post, pre = torch.rand(3, 10), torch.rand(3, 10), torch.rand(3, 10)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[2, 7:] = False
    method = selection_weights("contrastive", scores, post, pre, valid, 0.5, 0.1)
    count = (method != 1).sum(-1)
    for select in SELECTIONS:
        w = selection_weights(select, scores, post, pre, valid, 0.5, 0.1, seed=3)
        assert torch.equal((w != 1).sum(-1), count), select
        assert not bool((w[~valid] != 1).any()), select
    high = selection_weights("high-ia", scores, post, pre, valid, 0.5, 0.1)
    for b in range(3):
        chosen = scores[b][high[b] != 1]
        rest = scores[b][(high[b] == 1) & valid[b]]
        assert chosen.min() >= rest.max()
    low = selection_weights("low-attention", scores, post, pre, valid, 0.5, 0.1)
    assert post[0][low[0] != 1].max() <= post[0][low[0] == 1].min()
    with pytest.raises(ValueError, match="select='best'"):
        selection_weights("best", scores, post, pre, valid, 0.5, 0.1)


def test_random_control_is_seeded_and_independent_of_the_batch():
    assert torch.equal(slot_keys(20, 1)[:10], slot_keys(10, 1))  # a slot's key ignores the batch width
    assert not torch.equal(slot_keys(20, 1), slot_keys(20, 2))
    order = slot_keys(64, 0).argsort()
    assert not torch.equal(order, torch.arange(64))  # shuffled, not the slot order


def test_random_control_in_the_runner_does_not_depend_on_batching(model):
    from tiny_models import tiny_samples

    samples = tiny_samples(4)
    iv = mech.ContrastiveMask(review=2, rho=0.5, select="random", seed=1)
    one = mech.run(model, samples, iv, batch_size=1, max_new_tokens=2, progress=False)
    two = mech.run(model, samples, iv, batch_size=4, max_new_tokens=2, progress=False)
    assert [r.extras["weights"] for r in one.records] == [r.extras["weights"] for r in two.records]
    method = mech.run(model, samples, mech.ContrastiveMask(review=2, rho=0.5), batch_size=4, max_new_tokens=2,
                      progress=False)
    assert [sum(w != 1 for w in r.extras["weights"]) for r in method.records] == \
        [sum(w != 1 for w in r.extras["weights"]) for r in two.records]


@pytest.mark.parametrize("kwargs, match", [(dict(mask_at="middle"), "mask_at='middle'"),
                                           (dict(select="best"), "select='best'"),
                                           (dict(seed=-1), "seed=-1")])
def test_bad_mode_or_selection(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mech.ContrastiveMask(review=2, **kwargs).validate(model)
