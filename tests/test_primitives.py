"""Each primitive against an independent reference (plain PyTorch hooks, output_attentions)."""

import pytest
import torch

import mech
from reference import (eager_image_attention, hooks, knockout_edit_hooks, knockout_hooks, knockout_mask,
                       multiplier, scale_hook)

TOL = 1e-5
NEW_TOKENS = 3


def real_positions(batch):
    """[batch, seq] bool: non-padding positions, where logits mean something."""
    return batch.inputs["attention_mask"].bool()


def max_diff(a, b, where):
    return (a - b).abs()[where].max().item()


def run_reference(model, batch, handles):
    """Plain forward + plain generate of the raw module with ``handles`` active."""
    module = model.nn._module
    with hooks(*handles), torch.no_grad():
        logits = module(**batch.inputs).logits
        gen = module.generate(**batch.generate_inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return logits, gen.sequences, gen.logits[0]


def run_mech(model, batch, *interventions):
    with torch.no_grad():
        with model.trace(batch):
            mech.apply(model, batch, *interventions)
            logits = model.logits.save()
        with model.generate(batch, max_new_tokens=NEW_TOKENS) as tr:
            mech.apply(model, batch, *interventions)
            first = model.logits[:, -1].save()  # the prefill's next-token logits
            ids = tr.result.save()
    return logits, ids, first


def check_against(model, batch, handles, *interventions):
    ref_logits, ref_ids, ref_first = run_reference(model, batch, handles)
    logits, ids, first = run_mech(model, batch, *interventions)
    assert max_diff(logits, ref_logits, real_positions(batch)) <= TOL
    assert (first - ref_first).abs().max().item() <= TOL
    assert torch.equal(ids, ref_ids)
    # The intervention must have done something, or the comparison proves nothing.
    clean_logits, _, _ = run_mech(model, batch)
    assert max_diff(clean_logits, logits, real_positions(batch)) > 1e-3
    return logits


@pytest.mark.parametrize("layer,at", [(0, "input"), (2, "input"), (1, "output"), (3, "output")])
def test_zero_image_matches_hooks(model, batch, layer, at):
    layers = model.nn._module.model.language_model.layers
    mult = multiplier(batch.inputs["input_ids"], model.image_token_id, 0.0)
    check_against(model, batch, [scale_hook(layers, layer, at, mult, batch.seq_len)],
                  mech.ZeroImage(layer=layer, at=at))


def test_soft_scale_per_token_matches_hooks(model, batch):
    layers = model.nn._module.model.language_model.layers
    torch.manual_seed(1)
    weights = torch.rand(batch.image_index.shape) * 2
    mult = multiplier(batch.inputs["input_ids"], model.image_token_id, weights)
    check_against(model, batch, [scale_hook(layers, 1, "input", mult, batch.seq_len)],
                  mech.ScaleImage(layer=1, weights=weights))


def test_output_of_layer_equals_input_of_next(model, batch):
    out_logits, _, _ = run_mech(model, batch, mech.ZeroImage(layer=1, at="output"))
    in_logits, _, _ = run_mech(model, batch, mech.ZeroImage(layer=2, at="input"))
    assert max_diff(out_logits, in_logits, real_positions(batch)) <= TOL


def test_composed_interventions_match_hooks_in_any_order(model, batch):
    layers = model.nn._module.model.language_model.layers
    zero = multiplier(batch.inputs["input_ids"], model.image_token_id, 0.0)
    half = multiplier(batch.inputs["input_ids"], model.image_token_id, 0.5)
    handles = [scale_hook(layers, 3, "input", zero, batch.seq_len),
               scale_hook(layers, 0, "output", half, batch.seq_len)]
    # Given out of layer order on purpose: apply sorts steps into model order.
    check_against(model, batch, handles, mech.ZeroImage(layer=3), mech.ScaleImage(layer=0, weights=0.5, at="output"))


@pytest.mark.parametrize("query", ["last", "text"])
def test_knockout_matches_hooks(model, batch, query):
    layers = model.nn._module.model.language_model.layers
    rows = batch.last_token if query == "last" else batch.text_after_image
    which = [0, 2]
    if model.family.name == "gemma3":  # not a causal mask: edit the one each layer receives
        handles = knockout_edit_hooks(layers, which, batch.inputs["input_ids"], model.image_token_id, rows,
                                      batch.seq_len)
    else:
        mask = knockout_mask(batch.inputs["input_ids"], batch.inputs["attention_mask"],
                             model.image_token_id, rows)
        handles = knockout_hooks(layers, which, mask, batch.seq_len)
    check_against(model, batch, handles, mech.Knockout(layers=which, query=query))


@pytest.mark.parametrize("heads,key_block", [("mean", 128), ("max", 128), ("none", 128), ("mean", 7)])
def test_capture_matches_output_attentions(models, batch, heads, key_block, monkeypatch):
    """``key_block`` 7: keys rotated in many uneven blocks (the default covers these short
    prompts in one)."""
    from mech import attention

    assert key_block == attention.KEY_BLOCK or batch.seq_len > 3 * key_block
    monkeypatch.setattr(attention, "KEY_BLOCK", key_block)
    eager = models["eager"]
    expected = eager_image_attention(eager.nn._module, batch.inputs, eager.image_token_id,
                                     range(eager.n_layers), heads)
    for model, method in ((models["sdpa"], "sdpa"), (eager, "sdpa"), (eager, "eager")):
        capture = mech.CaptureImageAttention(layers=list(range(model.n_layers)), heads=heads, method=method)
        with torch.no_grad():
            with model.trace(batch):
                got = capture.apply(model, batch)
            with model.generate(batch, max_new_tokens=2):
                got_generate = capture.apply(model, batch)
        for layer, rows in expected.items():
            for b, row in enumerate(rows):
                n = row.shape[-1]
                assert torch.allclose(got[layer][b][..., :n], row, atol=TOL, rtol=0)
                assert torch.allclose(got_generate[layer][b][..., :n], row, atol=TOL, rtol=0)
                assert got[layer][b][..., n:].abs().sum() == 0  # padded slots


def test_capture_sums_to_one_over_image_tokens(model, batch):
    with torch.no_grad(), model.trace(batch):
        got = mech.CaptureImageAttention(layers=[1]).apply(model, batch)
    assert torch.allclose(got[1].sum(-1), torch.ones(batch.size), atol=1e-6)
