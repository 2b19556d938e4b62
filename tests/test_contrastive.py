"""Hellinger, quantiles and the contrastive intervention against scipy/numpy and a per-sample loop."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import euclidean

import mech
from mech import contrastive as con
from reference import eager_image_attention, hooks, multiplier, normed_hook, scale_hook
from tiny_models import QUESTIONS, random_images
from conftest import SIZES


def scipy_hellinger(p, q):
    return euclidean(np.sqrt(p), np.sqrt(q)) / np.sqrt(2)


def test_hellinger_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50), size=(4, 3))
    q = rng.dirichlet(np.ones(50), size=(4, 1))
    got = con.hellinger(torch.tensor(p), torch.tensor(q))
    expected = np.array([[scipy_hellinger(p[b, c], q[b, 0]) for c in range(3)] for b in range(4)])
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    assert con.hellinger(torch.tensor(p[0, 0]), torch.tensor(p[0, 0])).item() == pytest.approx(0, abs=1e-7)
    disjoint = con.hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item()
    assert disjoint == pytest.approx(1.0)


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 0.93, 1.0])
def test_row_quantile_matches_numpy_on_ragged_rows(q):
    rng = np.random.default_rng(1)
    values = torch.tensor(rng.random((5, 9)))
    counts = [9, 1, 4, 7, 2]
    valid = torch.arange(9)[None] < torch.tensor(counts)[:, None]
    got = con.row_quantile(values, valid, q)
    for b, n in enumerate(counts):
        assert got[b].item() == pytest.approx(np.quantile(values[b, :n].numpy(), q), abs=1e-12)


def test_select_pre_layer_is_argmax_of_distance():
    rng = np.random.default_rng(2)
    cand = torch.tensor(rng.dirichlet(np.ones(6), size=(3, 4)))
    post = torch.tensor(rng.dirichlet(np.ones(6), size=3))
    layers = [0, 2, 5, 7]
    pre_layer, pre, dist = con.select_pre_layer(cand, post, layers)
    for b in range(3):
        d = [scipy_hellinger(cand[b, c].numpy(), post[b].numpy()) for c in range(4)]
        assert pre_layer[b].item() == layers[int(np.argmax(d))]
        assert torch.equal(pre[b], cand[b, int(np.argmax(d))])


def hand_written_contrastive(models, questions, images, review, post, candidates, rho, lam, mask_at="normed"):
    """One sample at a time: eager output_attentions, scipy Hellinger, numpy quantile, a hook
    (on the review layer's input, or on its input RMSNorm's output)."""
    eager = models["eager"]
    module = eager.nn._module
    layers = module.model.language_model.layers
    out = []
    for question, image in zip(questions, images):
        single = eager.prepare(questions=[question], images=[image])
        attention = eager_image_attention(module, single.inputs, eager.image_token_id,
                                          [*candidates, post])
        a_post = attention[post][0].numpy().astype(np.float64)
        distances = [scipy_hellinger(attention[i][0].numpy().astype(np.float64), a_post) for i in candidates]
        pre_layer = candidates[int(np.argmax(distances))]
        scores = np.abs(a_post - attention[pre_layer][0].numpy())
        threshold = np.quantile(scores, rho)
        weights = np.where(scores < threshold, lam, 1.0)
        mult = multiplier(single.inputs["input_ids"], eager.image_token_id, torch.tensor(weights)[None])
        hook = scale_hook(layers, review, "input", mult, single.seq_len) if mask_at == "input" else \
            normed_hook(layers, review, mult, single.seq_len)
        with hooks(hook), torch.no_grad():
            logits = module(**single.inputs).logits[0, -1]
        out.append(dict(pre_layer=pre_layer, scores=scores, weights=weights, logits=logits))
    return out


@pytest.mark.parametrize("candidates,rho,lam,mask_at", [("all", 0.2, 0.1, "normed"), ([0, 1], 0.5, 0.0, "normed"),
                                                      ("shallow", 0.9, 0.3, "normed"), ("all", 0.5, 0.1, "input")])
def test_contrastive_mask_matches_per_sample_loop(models, candidates, rho, lam, mask_at):
    model = models["sdpa"]
    images = random_images(3, sizes=SIZES)
    batch = model.prepare(questions=QUESTIONS, images=images)
    review, post = 3, 2
    intervention = mech.ContrastiveMask(review=review, post=post, candidates=candidates, rho=rho, lam=lam,
                                        mask_at=mask_at)
    with torch.no_grad(), model.trace(batch):
        result = intervention.apply(model, batch)
        logits = model.logits[:, -1].save()
    layer_list = list(con.candidate_layers(candidates, model.n_layers, post))
    expected = hand_written_contrastive(models, QUESTIONS, images, review, post, layer_list, rho, lam, mask_at)
    for b, exp in enumerate(expected):
        n = len(exp["scores"])
        assert result["pre_layer"][b].item() == exp["pre_layer"]
        np.testing.assert_allclose(result["scores"][b, :n].numpy(), exp["scores"], atol=1e-5)
        np.testing.assert_array_equal(result["weights"][b, :n].numpy(), exp["weights"].astype(np.float32))
        assert torch.allclose(logits[b], exp["logits"], atol=1e-4, rtol=0)
    if rho > 0 and lam != 1:
        assert (result["weights"] == lam).any()  # the mask really acted


def test_contrastive_mask_is_identity_at_lambda_one_and_rho_zero(model, batch):
    def last_logits(*interventions):
        with torch.no_grad(), model.trace(batch):
            mech.apply(model, batch, *interventions)
            logits = model.logits[:, -1].save()
        return logits
    clean = last_logits()
    for kwargs in (dict(lam=1.0), dict(rho=0.0)):
        got = last_logits(mech.ContrastiveMask(review=3, **kwargs))
        assert torch.allclose(got, clean, atol=1e-6)
