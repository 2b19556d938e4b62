"""Interventions on every generation step inside one ``model.generate`` (nnsight's step
iteration), on all seven families, in generate and ``remote="local"``:

* attention-mode edits give the ids of the per-token traces mech ran before
  (`bench.paths.per_token_traces`, kept as the reference) and, without edits, those of a
  plain ``model.generate``; every row at EOS ends the step loop as it ends ``generate``;
* ``CaptureImageAttention(query="generated")`` equals transformers' own eager attention
  weights at every step (``output_attentions`` in ``generate``), with an attention edit
  acting at the same layer too; steps after a row's EOS are NaN, not values;
* a generation with attention-mode edits and per-token capture is one request that
  carries no KV cache (counted by wrapping nnsight's serialiser).
"""

import contextlib
import warnings

import pytest
import torch

import mech
from bench.paths import per_token_traces
from reference import attention_scale_hooks, image_positions

NEW = 4


def generate(model, batch, interventions, new=NEW, **options):
    """``(new ids, results)`` of one ``model.generate`` with ``interventions`` on every step."""
    results = None
    with torch.no_grad(), model.generate(batch, max_new_tokens=new, **options) as tr:
        if interventions:
            results = mech.apply(model, batch, *interventions, max_new_tokens=new)
        ids = tr.result.save()
    return ids[:, batch.seq_len:], results


def soft_weights(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch.image_index.shape, generator=g) * 0.9 + 0.05


def edits(model, batch):
    return [mech.ScaleImage(layer=1, weights=soft_weights(batch), at="attention"),
            mech.ContrastiveMask(review=2, rho=0.5, lam=0.0, mask_at="attention")]


@contextlib.contextmanager
def eos_at(model, ids):
    """The model's generation config ends rows at ``ids`` too, for the block."""
    config = model.nn._module.generation_config
    before = config.eos_token_id
    config.eos_token_id = sorted(set(ids) | set([before] if isinstance(before, int) else before or []))
    try:
        yield
    finally:
        config.eos_token_id = before


def test_attention_edits_in_one_generate_equal_the_per_token_traces(model, batch):
    interventions = edits(model, batch)
    ids, results = generate(model, batch, interventions)
    reference, prefill = per_token_traces(model, batch, interventions, NEW)
    assert torch.equal(ids, reference)
    assert torch.equal(results[1]["weights"], prefill[1]["weights"])
    plain, _ = generate(model, batch, [])
    assert not torch.equal(ids, plain)  # the edits act
    assert torch.equal(per_token_traces(model, batch, [], NEW)[0], plain)  # the reference is plain generate too
    # prefill-only interventions given max_new_tokens run no step loop and change nothing
    zero = mech.ZeroImage(layer=1)
    with torch.no_grad(), model.generate(batch, max_new_tokens=NEW) as tr:
        mech.apply(model, batch, zero)
        alone = tr.result.save()
    assert torch.equal(generate(model, batch, [zero])[0], alone[:, batch.seq_len:])


def test_every_row_at_eos_ends_the_step_loop_as_it_ends_generate(model, batch):
    """With the step-1 tokens made EOS every row stops by step 1, before the cap: the loop
    ends there (no dangling step, the trace reads the ids after it), the ids and padding
    equal the reference's, and per-token capture marks the steps after each row's EOS."""
    interventions = edits(model, batch)
    first, _ = generate(model, batch, interventions)
    capture = mech.CaptureImageAttention(layers=[1, 3], query="generated")
    with eos_at(model, first[:, 1].tolist()):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ids, results = generate(model, batch, [*interventions, capture])
        assert not [w for w in seen if "never reached" in str(w.message)]  # nnsight's loop outran the run
        reference, _ = per_token_traces(model, batch, interventions, NEW)
        counts = mech.decoding.count_new_tokens(ids, mech.decoding.eos_ids(model))
    assert torch.equal(ids, reference) and ids.shape[1] < NEW
    steps = results[2]["steps"]
    assert steps.tolist() == [min(c + 1, ids.shape[1]) for c in counts]
    for b, n in enumerate(steps.tolist()):
        assert torch.isnan(results[2][1][b, n:]).all() and not torch.isnan(results[2][1][b, :n]).any()


def eager_reference(eager, batch, layers, new, handles=()):
    """Per layer, per step, per row: A from transformers' eager ``output_attentions`` during
    ``generate`` (mean over heads, renormalised over the row's image tokens; a
    sliding-window layer's weights cover its window, so the image tokens it no longer
    holds get 0)."""
    from reference import hooks

    with hooks(*handles), torch.no_grad():
        out = eager.nn._module.generate(**batch.generate_inputs, max_new_tokens=new, do_sample=False,
                                        pad_token_id=eager.processor.tokenizer.pad_token_id,
                                        output_attentions=True, return_dict_in_generate=True)
    positions = image_positions(batch.inputs["input_ids"], eager.image_token_id)
    found = {}
    for layer in layers:
        per_step = []
        for step, attentions in enumerate(out.attentions):
            weights = attentions[layer][:, :, -1, :]  # [batch, heads, keys]
            first = batch.seq_len + step - weights.shape[-1]  # position of the first key
            rows = []
            for b, p in enumerate(positions):
                seen = weights[b][:, (p - first).clamp(min=0)] * (p >= first)
                row = seen.mean(0)
                rows.append(row / row.sum().clamp_min(1e-30))
            per_step.append(rows)
        found[layer] = per_step
    return found, out.sequences[:, batch.seq_len:]


@pytest.mark.parametrize("edited", [False, True])
def test_capture_at_every_generated_token_equals_eager_attention(models, batch, edited):
    """SDPA capture (q/k and the KV cache) and eager capture at every step equal the
    weights transformers' eager attention returns inside ``generate``; with an attention
    edit from layer 1 on, the weights of the edited layers (hooks rebuild the mask at
    every forward, `reference.attention_scale_hooks`)."""
    eager, sdpa = models["eager"], models["sdpa"]
    layers = [1, 3]
    weights = soft_weights(batch, seed=1)
    scale = [mech.ScaleImage(layer=1, weights=weights, at="attention")] if edited else []
    handles = []
    if edited:
        per_key = torch.ones(batch.size, batch.seq_len)
        for b, p in enumerate(image_positions(batch.inputs["input_ids"], eager.image_token_id)):
            per_key[b, p] = weights[b, :len(p)]
        handles = attention_scale_hooks(eager.nn._module.model.language_model.layers, 1, per_key)
    expected, reference_ids = eager_reference(eager, batch, layers, NEW, handles)
    counts = batch.image_counts.tolist()
    for method, model in (("sdpa", sdpa), ("eager", eager)):
        capture = mech.CaptureImageAttention(layers=layers, query="generated", method=method)
        ids, results = generate(model, batch, [capture, *scale])
        captured = results[0] if edited else results
        assert torch.equal(ids, reference_ids), method
        assert captured[1].shape == (batch.size, ids.shape[1], batch.image_index.shape[1])
        for layer in layers:
            for step in range(ids.shape[1]):
                for b in range(batch.size):
                    if step < int(captured["steps"][b]):
                        got = captured[layer][b, step, :counts[b]]
                        assert (got - expected[layer][step][b]).abs().max() <= 1e-5, (method, layer, step, b)
        # step 0 is the last prompt token's attention, what query="last" captures
        last = mech.CaptureImageAttention(layers=layers, method=method)
        with torch.no_grad(), model.trace(batch):
            prefill = mech.apply(model, batch, last, *scale)
        prefill = prefill[0] if edited else prefill
        assert torch.allclose(captured[3][:, 0], prefill[3], atol=1e-6)


class Requests:
    """Every request nnsight serialises (``remote=`` and ``remote="local"`` alike), with
    whether its trace carries a KV cache (in its call arguments or the values it reads)."""

    def __init__(self):
        self.sizes, self.caches = [], []

    @staticmethod
    def holds_cache(value, depth=0) -> bool:
        from transformers.cache_utils import Cache

        if isinstance(value, Cache):
            return True
        if depth > 3:
            return False
        if isinstance(value, dict):
            return any(Requests.holds_cache(v, depth + 1) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(Requests.holds_cache(v, depth + 1) for v in value)
        return False

    @contextlib.contextmanager
    def counting(self):
        from nnsight.schema.request import RequestModel

        original = RequestModel.__dict__["serialize"]

        def serialize(cls, tracer, compress=False):
            blob = original.__func__(cls, tracer, compress)
            self.sizes.append(len(blob))
            self.caches.append(self.holds_cache([tracer.args, tracer.kwargs, dict(tracer.info.frame.f_locals)]))
            return blob

        RequestModel.serialize = classmethod(serialize)
        try:
            yield self
        finally:
            RequestModel.serialize = original


def test_one_request_without_a_kv_cache_equals_the_local_run(model, batch):
    """Attention-mode edits and per-token capture: ``remote="local"`` serialises one
    request for the whole generation, with no KV cache in it, and gives the local ids
    and results."""
    interventions = [*edits(model, batch), mech.CaptureImageAttention(layers=[0, 2], query="generated")]
    local_ids, local = generate(model, batch, interventions)
    sent = Requests()
    with sent.counting():
        remote_ids, remote = generate(model, batch, interventions, remote="local")
    assert len(sent.sizes) == 1 and sent.caches == [False]
    assert torch.equal(remote_ids, local_ids)
    for mine, theirs in zip(local, remote, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]) or torch.allclose(mine[key], theirs[key], equal_nan=True)


def test_the_request_count_sees_the_per_token_traces_caches():
    """The counter can fail: the per-token traces send one request per token, each with
    the KV cache (the first an empty one), and more bytes in all than the one generate."""
    from tiny_models import QUESTIONS, random_images, tiny_llava

    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    batch = model.prepare(questions=QUESTIONS[:2], images=random_images(2))
    interventions = edits(model, batch)
    one, old = Requests(), Requests()
    with one.counting():
        ids, _ = generate(model, batch, interventions, remote="local")
    with old.counting():
        old_ids, _ = per_token_traces(model, batch, interventions, NEW, remote="local")
    assert torch.equal(old_ids, ids)
    assert len(old.sizes) == ids.shape[1] > 1 and all(old.caches)
    assert one.caches == [False] and sum(old.sizes) > one.sizes[0]


def test_per_token_capture_through_the_runner_local_and_remote():
    """Records keep each sample's own steps (the EOS step included), its own image tokens;
    the run's dataset has a step dim, NaN after a sample's EOS; remote equals local."""
    from tiny_models import tiny_llava, tiny_samples

    module, processor = tiny_llava("llava-next")
    model = mech.load(module, processor=processor)
    samples = tiny_samples(4, sizes=[(40, 50), (30, 90), (64, 40), (50, 50)])
    capture = mech.CaptureImageAttention(layers=[1, 3], query="generated")
    scale = mech.ScaleImage(layer=2, weights=0.2, at="attention")
    batch = model.prepare(samples[:2], question_prompt=mech.prompts.question_prompt)
    first, _ = generate(model, batch, [capture, scale])
    with eos_at(model, [int(first[0, 1])]):  # the first sample ends at step 1, the others need not
        local = mech.run(model, samples, [capture, scale], batch_size=2, max_new_tokens=NEW, progress=False)
        remote = mech.run(model, samples, [capture, scale], batch_size=2, max_new_tokens=NEW, progress=False,
                          remote="local")
    assert local.predictions == remote.predictions
    assert [r.extras for r in local.records] == [r.extras for r in remote.records]
    ds = local.to_xarray()
    assert ds["extra_CaptureImageAttention_layer1"].dims == ("sample", "step", "CaptureImageAttention_layer1_index")
    for i, record in enumerate(local.records):
        steps = record.extras["CaptureImageAttention.steps"]
        assert steps == min(record.new_tokens + 1, NEW)
        per_step = record.extras["CaptureImageAttention.layer1"]
        assert len(per_step) == steps and all(len(a) == len(per_step[0]) for a in per_step)
        assert abs(sum(per_step[-1]) - 1) < 1e-5
        row = ds["extra_CaptureImageAttention_layer1"].isel(sample=i).values
        assert not (row[:steps, :len(per_step[0])] != row[:steps, :len(per_step[0])]).any()  # no NaN in its steps
        assert (row[steps:] != row[steps:]).all() and (row[:, len(per_step[0]):] != row[:, len(per_step[0]):]).all()
    assert local.records[0].extras["CaptureImageAttention.steps"] < NEW


def test_bad_step_options_are_refused_before_model_work(model, batch):
    with pytest.raises(ValueError, match="query='every'"):
        mech.CaptureImageAttention(layers=[1], query="every").validate(model)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            mech.apply(model, batch, mech.CaptureImageAttention(layers=[1]), max_new_tokens=bad)
