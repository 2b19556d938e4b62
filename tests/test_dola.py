"""DoLa against a hand-written reference loop, its bucket rule, and the runner's decoder hook."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

import mech
from mech.dola import DoLa, candidate_layers, decode
from tiny_models import tiny_llava, tiny_samples


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5", layers=6, seed=1)
    return mech.load(module, processor=processor)


def reference_dola(module, processor, sample, candidates, relative_top, penalty, steps):
    """One sample, no padding, no KV cache: a full forward with output_hidden_states per step."""
    prompt = "USER: <image>\n" + sample.question + " ASSISTANT:"
    enc = processor(text=[prompt], images=[sample.image], return_tensors="pt")
    ids = enc["input_ids"]
    eos = module.generation_config.eos_token_id
    norm, head = module.model.language_model.norm, module.lm_head
    chosen, divergences, scores_all, new = [], [], [], []
    for _ in range(steps):
        with torch.no_grad():
            out = module(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"],
                         output_hidden_states=True)
            mature = out.logits[0, -1].double().softmax(-1).numpy()
            early = [head(norm(out.hidden_states[j][0, -1])).double().softmax(-1).numpy() for j in candidates]
        js = np.array([jensenshannon(mature, q) ** 2 for q in early])  # scipy: sqrt of JS, natural log
        k = int(np.argmax(js))
        scores = np.full(mature.shape, -np.inf)
        keep = mature >= relative_top * mature.max()
        scores[keep] = np.log(mature[keep]) - np.log(early[k][keep])
        if penalty:
            for token in set(ids[0].tolist()):
                scores[token] = scores[token] * penalty if scores[token] < 0 else scores[token] / penalty
        token = int(np.argmax(scores))
        chosen.append(candidates[k])
        divergences.append(js)
        scores_all.append(scores)
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        if token == eos:
            break
    return new, chosen, np.array(divergences), np.array(scores_all)


@pytest.mark.parametrize("layers,penalty", [("high", 1.2), ("low", None), ((1, 3, 5), 1.2)])
def test_dola_matches_reference_loop(llava, layers, penalty):
    samples = tiny_samples(3)
    dola = DoLa(layers=layers, repetition_penalty=penalty)
    batch = llava.prepare(samples)  # left-padded: rows of different lengths
    out = decode(llava, batch, dola, max_new_tokens=4)
    module, processor = llava.nn._module, llava.processor
    for b, sample in enumerate(samples):
        new, chosen, js, scores = reference_dola(module, processor, sample, out.candidates, 0.1, penalty, 4)
        n = len(new)
        assert out.new[b, :n].tolist() == new
        assert out.premature[b, :n].tolist() == chosen
        np.testing.assert_allclose(out.js[b, :n].numpy(), js, atol=1e-5)
        mine = out.scores[b, :n].double().numpy()
        assert np.array_equal(np.isinf(mine), np.isinf(scores))
        finite = np.isfinite(scores)
        np.testing.assert_allclose(mine[finite], scores[finite], atol=1e-5)


def test_bucket_rule():
    assert candidate_layers("low", 32) == (0, 2, 4, 6, 8, 10, 12, 14)
    assert candidate_layers("high", 32) == (16, 18, 20, 22, 24, 26, 28, 30)
    assert candidate_layers("low", 32, tied=True) == (2, 4, 6, 8, 10, 12, 14)
    assert candidate_layers("high", 48) == tuple(range(28, 48, 2))
    assert candidate_layers("low", 48) == tuple(range(0, 20, 2))
    assert candidate_layers("low", 6) == (0, 2) and candidate_layers("high", 6) == (3, 5)
    with pytest.raises(ValueError, match="0..5"):
        candidate_layers([6], 6)


def test_runner_decoder_extras_and_fingerprint(llava, tmp_path):
    samples = tiny_samples(4)
    runs = mech.sweep(llava, samples, {"dola": DoLa()}, out=tmp_path, batch_size=2, max_new_tokens=3,
                      progress=False)
    records = runs["dola"].records
    for r in records:
        assert len(r.extras["premature_layers"]) >= r.new_tokens
        assert sum(r.extras["premature_counts"]) == len(r.extras["premature_layers"])
    ds = runs["dola"].to_xarray()
    assert ds["extra_premature_counts"].dims == ("sample", "premature_counts_index")
    # Same decoder: reused; another parameter: chunks of its own beside the first ones.
    again = mech.run(llava, samples, decoder=DoLa(), out=tmp_path / "dola", batch_size=2, max_new_tokens=3,
                     progress=False)
    assert again.reused == [0] and [r.prediction for r in again.records] == [r.prediction for r in records]
    other = mech.run(llava, samples, decoder=DoLa(relative_top=0.5), out=tmp_path / "dola", batch_size=2,
                     max_new_tokens=3, progress=False)
    assert other.computed == [0] and other.rejected == {}
    assert len(list((tmp_path / "dola").glob("chunk-*.json"))) == 2
    with pytest.raises(ValueError, match="not both"):
        mech.run(llava, samples, mech.ZeroImage(layer=1), decoder=DoLa(), progress=False)
