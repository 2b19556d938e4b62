"""The fast zero-masking sweep equals the naive one exactly; the benchmark smoke-runs.

Speed targets live in ``python -m bench``, never in timed unit tests.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mech
from tiny_models import skip_without_shared_rows, tiny_llava, tiny_samples

ROOT = Path(__file__).resolve().parent.parent


def naive(model, batch, layer, max_new_tokens):
    """One nnsight generate with ZeroImage at ``layer`` (None: clean), ids and step scores."""
    with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens, output_scores=True,
                                         return_dict_in_generate=True) as tracer:
        if layer is not None:
            mech.apply(model, batch, mech.ZeroImage(layer=layer))
        out = tracer.result.save()
    return out.sequences, torch.stack(out.scores, 1)


def test_fast_sweep_equals_naive_generate(model, batch):
    """ids and step logits bitwise equal, for every layer (0 and the last included)."""
    layers = list(range(model.n_layers))
    fast = mech.zero_mask_sweep(model, batch, layers, 6, baseline=True, return_scores=True)
    assert list(fast) == [None, *layers]
    changed = 0
    for layer in [None, *layers]:
        ids, scores = naive(model, batch, layer, 6)
        assert torch.equal(fast[layer][0], ids), layer
        assert torch.equal(fast[layer][1], scores), layer
        changed += not torch.equal(ids, fast[None][0])
    assert changed, "masking changed no output: the test would not see a wrong layer"


def test_fast_sweep_subset_and_ids_only(model, batch):
    layers = [model.n_layers - 1, 0]
    ids = mech.zero_mask_sweep(model, batch, layers, 3)
    assert list(ids) == layers
    for layer in layers:
        assert torch.equal(ids[layer], naive(model, batch, layer, 3)[0])
    times = {}
    mech.zero_mask_sweep(model, batch, [1], 2, baseline=True, times=times)
    assert set(times) == {None, 1} and all(t > 0 for t in times.values())


def test_fast_sweep_leaves_model_untouched(model, batch):
    module = model.nn._module
    before = list(module.model.language_model.layers)
    hooks = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in before]
    mech.zero_mask_sweep(model, batch, [2], 2)
    after = list(module.model.language_model.layers)
    assert all(a is b for a, b in zip(before, after))
    assert hooks == [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in after]


def test_fast_sweep_rejects_bad_layers(model, batch):
    with pytest.raises(ValueError, match="out of range"):
        mech.zero_mask_sweep(model, batch, [model.n_layers], 2)
    with pytest.raises(ValueError, match="repeat"):
        mech.zero_mask_sweep(model, batch, [1, 1], 2)


@pytest.fixture(scope="module", params=["llava-1.5", "llava-next"])
def runner_model(request):
    module, processor = tiny_llava(request.param)
    return mech.load(module, processor=processor)


def chunk_paths(out):
    (manifest,) = out.glob("run-*.json")
    return [out / name for name in json.loads(manifest.read_text())["chunks"]]


def test_runner_fast_sweep_equals_naive_with_its_own_timing(runner_model, tmp_path):
    """mech.sweep(fast=True): same predictions, scores, new tokens and chunk fingerprints
    as naive runs but for the timing mode, so sweep seconds are never taken for
    standalone ones: both kinds of chunks live side by side in one folder."""
    model = runner_model
    samples = tiny_samples(5, sizes=[(40, 50), (30, 90), (64, 40), (50, 50), (90, 30)])
    named = {"baseline": None,
             **{mech.slug(mech.ZeroImage(layer=l)): mech.ZeroImage(layer=l) for l in range(model.n_layers)}}
    options = dict(batch_size=2, chunk_size=2, max_new_tokens=4, progress=False)
    fast = mech.sweep(model, samples, named, out=tmp_path, fast=True, **options)
    fast_files = {name: chunk_paths(tmp_path / name) for name in named}
    slow = mech.sweep(model, samples, named, out=tmp_path, **options)
    for name in named:
        a, b = fast[name], slow[name]
        assert a.predictions == b.predictions, name
        assert a.scores == b.scores, name
        assert [r.new_tokens for r in a.records] == [r.new_tokens for r in b.records], name
        assert [r.extras for r in a.records] == [r.extras for r in b.records], name
        assert {r.timing for r in a.records} == {"sweep"} and a.meta["timing"] == "sweep"
        assert b.computed == [0, 1, 2] and b.rejected == {}, name  # standalone times: computed
        store = mech.store.ChunkStore(tmp_path / name)
        for path in fast_files[name]:
            fa = json.loads(path.read_text())["fingerprint"]
            fb = {**fa, "generation": {**fa["generation"], "timing": "standalone"}}
            assert fa["generation"]["timing"] == "sweep"
            assert store.path(fb) != path and store.load(fb)[0] is not None, name
        assert len(list((tmp_path / name).glob("run-*.json"))) == 2
    assert len({tuple(r.predictions) for r in fast.values()}) > 1  # masking changed something
    again = mech.sweep(model, samples, named, out=tmp_path, fast=True, **options)
    assert all(r.reused == [0, 1, 2] and not r.computed for r in again.values())
    one = mech.slug(mech.ZeroImage(layer=1))
    back = mech.run(model, samples, mech.ZeroImage(layer=1), out=tmp_path / one, **options)  # standalone
    assert back.reused == [0, 1, 2] and back.predictions == slow[one].predictions
    assert "sweep" not in {r.timing for r in back.records}


def test_runner_fast_sweep_resumes_missing_chunks(runner_model, tmp_path):
    model = runner_model
    samples = tiny_samples(4)
    options = dict(batch_size=2, chunk_size=2, max_new_tokens=3, progress=False)
    named = {"baseline": None, "z0": mech.ZeroImage(layer=0), "z3": mech.ZeroImage(layer=3)}
    full = mech.sweep(model, samples, named, out=tmp_path, fast=True, **options)
    chunk_paths(tmp_path / "z3")[1].unlink()
    again = mech.sweep(model, samples, named, out=tmp_path, fast=True, **options)
    assert again["z3"].computed == [1] and again["z3"].reused == [0]
    assert again["baseline"].reused == [0, 1] and not again["baseline"].computed
    assert all(again[n].predictions == full[n].predictions for n in named)


def test_runner_fast_sweep_falls_back_for_other_interventions(runner_model):
    model = runner_model
    samples = tiny_samples(2)
    named = {"out": mech.ZeroImage(layer=1, at="output"), "knock": mech.Knockout(layers=[1])}
    fast = mech.sweep(model, samples, named, fast=True, batch_size=2, max_new_tokens=2, progress=False)
    assert all(r.meta["timing"] == "amortised" for r in fast.values())


def test_layer_masking_study_fast_equals_naive(runner_model, tmp_path):
    from studies import layer_masking

    samples = {"shapes": tiny_samples(3)}
    options = dict(batch_size=3, max_new_tokens=2, progress=False)
    fast = layer_masking.sweep(runner_model, samples, out=tmp_path / "a", **options)
    slow = layer_masking.sweep(runner_model, samples, out=tmp_path / "b", fast=False, **options)
    assert (fast["score"].values == slow["score"].values).all()
    assert (fast["new_tokens"].values == slow["new_tokens"].values).all()
    assert (fast["baseline_score"].values == slow["baseline_score"].values).all()


def test_bench_quick_runs(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"trace", "capture", "capture_eager", "contrastive", "sweep", "sweep_exact",
                                      "sweep_32", "memory_capture", "memory_eager", "generate_attention",
                                      "generate_attention_traces", "generate_capture", "cache", "patch"}
    assert result["results"]["generate_attention_traces"]["ids_equal_traces"]
    assert all(row["ratio"] > 0 for row in result["results"].values())
    assert result["machine"]["torch_threads"] == 1
    assert all(result["results"][k]["ids_equal_naive"] for k in ("sweep", "sweep_exact", "sweep_32"))
    assert all(0 < result["results"][k]["limit"] < 1 for k in ("sweep", "sweep_exact", "sweep_32"))
    assert result["results"]["sweep"]["templates"]["reused"] > 0
    assert len(result["depth_table"]) == 4 and all(r["limit_reuse"] < r["limit_first"] for r in result["depth_table"])


def test_bench_cache_memory_counts_the_asked_bytes():
    """The Cache memory row's reference (judged runs only: it needs two more fresh processes):
    what the cache path returns is its buffer, batch x layers x P x hidden, and the layout."""
    from bench.harness import QUICK
    from bench.memory import memory_child

    found = memory_child("cache", QUICK)
    assert found["result_bytes"] == 2 * 4 * 64 * 64 * 4 + 2 * 64 * 8 + 2 * 64  # and index (long), valid (bool)


def test_bench_gpu_script_runs_tiny_on_cpu():
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--reps", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep shared rows" in done.stdout


@pytest.mark.parametrize("path", ["naive", "exact", "shared"])
def test_bench_structural_limits_count_the_rows_the_layers_run(path):
    """`bench.sweep.row_layers` equals the prefill rows the decoder layers really see,
    counted by forward hooks over a two-batch sweep (decode steps left out)."""
    from bench import sweep as sweeps
    from bench.harness import QUICK, build

    model, _ = build(QUICK)
    batches = sweeps.batches(model, QUICK, 2)
    seen = {"rows": 0}

    def count(_, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        # a decode step: one new row per sequence (a shared sweep decodes its variants together)
        if not (hidden.shape[1] == 1 and hidden.shape[0] % batches[0].size == 0):
            seen["rows"] += hidden.shape[0] * hidden.shape[1]
    handles = [layer.register_forward_pre_hook(count, with_kwargs=True)
               for layer in model.nn._module.model.language_model.layers]
    try:
        if path == "naive":
            sweeps.naive_over_batches(model, batches, 2)
        else:
            sweeps.sweep_over_batches(model, batches, path == "shared", 2)
    finally:
        for handle in handles:
            handle.remove()
    assert seen["rows"] == sweeps.row_layers(batches, model.n_layers, path)


# -- shared image rows: equal to naive up to floating-point summation order ---------------

def _rows_alone(model, batch, images, layer, max_new_tokens):
    """Naive step scores of each row run in a batch of its own (no padding): how much the
    naive method itself moves when only the batch layout changes."""
    return [naive(model, model.prepare(prompts=[prompt], images=[image]), layer, max_new_tokens)[1][0]
            for prompt, image in zip(batch.prompts, images)]


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next"])
def test_shared_rows_sweep_within_naive_batch_layout_jitter(family):
    """Same ids as the naive runs; scores off by no more than the naive run's own change
    between a padded batch and rows run alone."""
    module, processor = tiny_llava(family, layers=4)
    model = mech.load(module, processor=processor)
    from tiny_models import QUESTIONS, random_images

    images = random_images(3, sizes=[(40, 50), (30, 90), (64, 40)])
    batch = model.prepare(questions=[QUESTIONS[0] + " and the square too", *QUESTIONS[1:]], images=images)
    assert len(set((batch.inputs["attention_mask"] == 0).sum(1).tolist())) > 1  # rows are padded differently
    if family == "llava-next":
        assert len(set(batch.image_counts.tolist())) > 1  # and hold different numbers of image tokens
    layers = list(range(model.n_layers))
    shared = mech.zero_mask_sweep(model, batch, layers, 5, return_scores=True, share_image_rows=True)
    for layer in layers:
        ids, scores = naive(model, batch, layer, 5)
        assert torch.equal(shared[layer][0], ids), layer
        # a row alone stops at its end-of-sequence token; a batch goes on for the others
        jitter = max((a - s[:len(a)]).abs().max().item()
                     for a, s in zip(_rows_alone(model, batch, images, layer, 5), scores))
        off = (shared[layer][1] - scores).abs().max().item()
        assert off <= max(2 * jitter, 1e-6 * scores.abs().max().item()), (layer, off, jitter)


def test_shared_rows_sweep_on_the_trained_tiny_model():
    """On the embedded model (sharp logits, real answers) every layer's ids are the naive ones."""
    model = mech.load("tiny")
    samples = mech.datasets.shapes("test", n=6, seed=3)
    batch = model.prepare(samples)
    shared = mech.zero_mask_sweep(model, batch, None, 3, share_image_rows=True)
    exact = mech.zero_mask_sweep(model, batch, None, 3)
    assert all(torch.equal(shared[layer], exact[layer]) for layer in exact)
    assert len({tuple(ids.flatten().tolist()) for ids in exact.values()}) > 1


def test_shared_rows_sweep_without_padding(model, batch):
    """One row, or rows of equal length: no attention mask reaches the layers (SDPA's
    causal flag), and the rows after the image still see only what they may."""
    skip_without_shared_rows(model)
    from tiny_models import random_images

    for prepared in (model.prepare(prompts=batch.prompts[:1], images=random_images(1)),
                     model.prepare(prompts=[batch.prompts[0]] * 2, images=random_images(2, seed=1))):
        assert bool(prepared.inputs["attention_mask"].all())
        shared = mech.zero_mask_sweep(model, prepared, None, 4, return_scores=True, share_image_rows=True)
        for layer, (ids, scores) in shared.items():
            reference = naive(model, prepared, layer, 4)
            assert torch.equal(ids, reference[0]), layer
            assert torch.allclose(scores, reference[1], rtol=0, atol=1e-6), layer


def test_shared_rows_refuses_rows_with_different_text_before_the_image(model):
    skip_without_shared_rows(model)
    from tiny_models import random_images

    mark = model.family.placeholder
    batch = model.prepare(prompts=[f"USER: {mark}\nwhat? ASSISTANT:", f"USER: look {mark}\nwhat? ASSISTANT:"],
                          images=random_images(2))
    with pytest.raises(ValueError, match="differ in the text before the image.*bitwise-exact"):
        mech.zero_mask_sweep(model, batch, [1], 2, share_image_rows=True)


def test_runner_shared_sweep_keeps_its_own_chunks(runner_model, tmp_path):
    model = runner_model
    samples = tiny_samples(4, sizes=[(40, 50), (30, 90), (64, 40), (50, 50)])
    named = {"baseline": None, "z1": mech.ZeroImage(layer=1), "z2": mech.ZeroImage(layer=2)}
    options = dict(batch_size=2, chunk_size=2, max_new_tokens=4, progress=False)
    shared = mech.sweep(model, samples, named, out=tmp_path, fast="shared", **options)
    exact = mech.sweep(model, samples, named, fast=True, **options)
    assert all(shared[n].predictions == exact[n].predictions for n in named)
    assert shared["z1"].meta["image_rows"] == "shared" and shared["baseline"].meta["image_rows"] == "per sample"
    again = mech.sweep(model, samples, named, out=tmp_path, fast=True, **options)
    assert again["baseline"].reused == [0, 1]  # the clean run is the same arithmetic
    assert again["z1"].computed == [0, 1] and again["z2"].computed == [0, 1]  # bitwise runs redo theirs
    assert chunk_paths(tmp_path / "z1+shared-rows")[0].exists()  # and leave the shared ones be
    assert mech.sweep(model, samples, named, out=tmp_path, fast="shared", **options)["z2"].reused == [0, 1]
    with pytest.raises(ValueError, match="fast='approx'"):
        mech.sweep(model, samples, named, fast="approx", **options)


# -- run-level image rows: one template per (layer, image-token count, prefix) ------------

def _two_batches(model, family):
    from tiny_models import QUESTIONS, random_images

    sizes = [(40, 50), (30, 90), (64, 40), (50, 50)] if family == "llava-next" else None
    images = random_images(4, seed=5, sizes=sizes)
    questions = [QUESTIONS[0] + " and the square too", *QUESTIONS[1:3], QUESTIONS[0]]
    return (model.prepare(questions=questions[:2], images=images[:2]),
            model.prepare(questions=questions[2:], images=images[2:]))


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next"])
def test_run_level_templates_are_independent_of_batch_order(family):
    """A template kept from another batch gives the same bits as one computed for this
    batch: ids and step scores of each batch do not depend on which batch ran first."""
    module, processor = tiny_llava(family, layers=4)
    model = mech.load(module, processor=processor)
    first, second = _two_batches(model, family)
    layers = list(range(model.n_layers))

    def run(order):
        templates = mech.ImageRowTemplates(model)
        out = [mech.zero_mask_sweep(model, b, layers, 4, return_scores=True, share_image_rows=True,
                                    templates=templates) for b in order]
        return out, templates.stats()

    (a1, a2), stats = run([first, second])
    (b2, b1), _ = run([second, first])
    alone = [mech.zero_mask_sweep(model, b, layers, 4, return_scores=True, share_image_rows=True)
             for b in (first, second)]
    for mine, other, fresh in ((a1, b1, alone[0]), (a2, b2, alone[1])):
        for layer in layers:
            assert torch.equal(mine[layer][0], other[layer][0]) and torch.equal(mine[layer][1], other[layer][1])
            assert torch.equal(mine[layer][0], fresh[layer][0]) and torch.equal(mine[layer][1], fresh[layer][1])
    counts = {int(c) for b in (first, second) for c in b.image_counts}
    assert stats["computed"] == len(layers) * len(counts) and stats["kept"] == stats["computed"]
    if family == "llava-1.5":  # every row has 576-style equal counts: the second batch reuses all
        assert stats["reused"] == len(layers)
    cfg = model.nn._module.config.text_config
    head = cfg.hidden_size // cfg.num_attention_heads
    expected = sum(2 * cfg.num_key_value_heads * n * head * 4 * (model.n_layers - layer)
                   for layer in layers for n in counts)
    assert stats["bytes"] == expected


def test_template_rows_equal_a_zero_masked_unpadded_prompt(model):
    """The template is the image rows of a plain unpadded forward with the image tokens
    zeroed at layer L (an independent computation: the whole prompt at once, a hook)."""
    skip_without_shared_rows(model)
    from mech.shared_rows import shared_layout
    from tiny_models import random_images

    batch = model.prepare(prompts=[model.prompt("what colour is the square?")], images=random_images(1))
    layout = shared_layout(batch)
    module, n = model.nn._module, int(batch.image_counts[0])
    start = len(layout["prefix_ids"])
    templates = mech.ImageRowTemplates(model)
    for layer in range(model.n_layers):
        def zero(_, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = hidden.clone()
            hidden[:, start:start + n] = 0
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        handle = module.model.language_model.layers[layer].register_forward_pre_hook(zero, with_kwargs=True)
        try:
            with torch.no_grad():
                cache = module(**batch.inputs, use_cache=True).past_key_values
        finally:
            handle.remove()
        template = templates.get(layer, n, layout["prefix_ids"])
        assert sorted(template) == list(range(layer, model.n_layers))
        for j, (keys, values) in template.items():
            ref_k = cache.layers[j].keys[:, :, start:start + n]
            ref_v = cache.layers[j].values[:, :, start:start + n]
            assert torch.allclose(keys, ref_k, rtol=0, atol=1e-5 * ref_k.abs().max().item()), (layer, j)
            assert torch.allclose(values, ref_v, rtol=0, atol=1e-5 * ref_v.abs().max().item()), (layer, j)


def test_templates_memory_bound_changes_nothing_but_memory(model, batch):
    """``max_bytes=0`` keeps nothing (every template recomputed) and gives the same bits."""
    skip_without_shared_rows(model)
    kept, none = mech.ImageRowTemplates(model), mech.ImageRowTemplates(model, max_bytes=0)
    for _ in range(2):
        a = mech.zero_mask_sweep(model, batch, None, 3, return_scores=True, share_image_rows=True, templates=kept)
        b = mech.zero_mask_sweep(model, batch, None, 3, return_scores=True, share_image_rows=True, templates=none)
        assert all(torch.equal(a[l][1], b[l][1]) for l in a)
    keys = model.n_layers * len(set(batch.image_counts.tolist()))
    assert none.stats()["kept"] == 0 and none.stats()["bytes"] == 0 and none.stats()["not_kept"] == 2 * keys
    assert kept.stats()["reused"] == keys and kept.stats()["bytes"] > 0
    with pytest.raises(ValueError, match="max_bytes=-1"):
        mech.ImageRowTemplates(model, max_bytes=-1)
    with pytest.raises(ValueError, match="templates= is for share_image_rows"):
        mech.zero_mask_sweep(model, batch, [1], 2, templates=kept)


def test_runner_shared_sweep_shuffled_and_restarted_equals_uninterrupted(runner_model, tmp_path):
    """Batches in another order, or a run stopped after one chunk and restarted, give the
    same prediction per sample as one uninterrupted run; the run reports its templates."""
    model = runner_model
    samples = tiny_samples(6, seed=2, sizes=[(40, 50), (30, 90), (64, 40), (50, 50), (60, 30), (45, 45)])
    named = {"baseline": None, **{f"z{l}": mech.ZeroImage(layer=l) for l in range(model.n_layers)}}
    options = dict(batch_size=2, chunk_size=2, max_new_tokens=4, progress=False, fast="shared")
    whole = mech.sweep(model, samples, named, out=tmp_path / "whole", **options)
    shuffled = mech.sweep(model, samples[4:] + samples[:2] + samples[2:4], named, **options)
    mech.sweep(model, samples[:2], named, out=tmp_path / "restart", **options)  # "stopped" after chunk 0
    restarted = mech.sweep(model, samples, named, out=tmp_path / "restart", **options)
    assert restarted["z1"].reused == [0] and restarted["z1"].computed == [1, 2]
    for name in named:
        by_id = {r.id: r.prediction for r in whole[name].records}
        assert {r.id: r.prediction for r in shuffled[name].records} == by_id, name
        assert {r.id: r.prediction for r in restarted[name].records} == by_id, name
    stats = whole["z1"].meta["image_row_templates"]
    assert stats["computed"] == stats["kept"] > 0 and stats["reused"] > 0
    assert "image_row_templates" not in whole["baseline"].meta


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next"])
@pytest.mark.parametrize("step", [0, 1])
def test_variants_decoded_together_equal_each_decoded_alone(family, step):
    """Decoding the variants as one batch gives each variant's own generate output: the
    same ids (and length) when rows end on their first or a later token, scores within
    summation order up to each row's end."""
    module, processor = tiny_llava(family, layers=4)
    model = mech.load(module, processor=processor)
    batch, _ = _two_batches(model, family)
    run = lambda together: mech.zero_mask_sweep(model, batch, None, 5, return_scores=True,  # noqa: E731
                                                share_image_rows=True, decode_together=together)
    alone = run(False)
    # make a token the model does generate at `step` the end of sequence, so rows end early
    eos = int(alone[1][0][0, batch.seq_len + step])
    old = module.generation_config.eos_token_id
    module.generation_config.eos_token_id = eos
    try:
        alone, together = run(False), run(True)
    finally:
        module.generation_config.eos_token_id = old
    assert any(ids.shape[1] < batch.seq_len + 5 or (ids[:, batch.seq_len:] == eos).any() for ids, _ in alone.values())
    for layer, (ids, scores) in alone.items():
        assert torch.equal(together[layer][0], ids), layer
        assert together[layer][1].shape == scores.shape
        new = ids[:, batch.seq_len:]
        for r in range(len(new)):
            ends = (new[r] == eos).nonzero()
            last = int(ends[0]) + 1 if len(ends) else new.shape[1]
            a, b = together[layer][1][r, :last], scores[r, :last]
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * b.abs().max().item()), (layer, r)


def test_variants_decoded_together_in_groups_when_the_buffer_is_bounded(model, batch):
    """A decode buffer too small for every variant decodes them in groups (or alone),
    with the same ids; its memory is reported with the templates'."""
    skip_without_shared_rows(model)
    alone = mech.zero_mask_sweep(model, batch, None, 4, share_image_rows=True, decode_together=False)
    cfg = model.nn._module.config.text_config
    one = 2 * model.n_layers * 4 * batch.size * cfg.num_key_value_heads * (batch.seq_len + 4) * \
        (cfg.hidden_size // cfg.num_attention_heads)
    for fit in (1, 2, 3):
        templates = mech.ImageRowTemplates(model)
        templates.decode_buffer.max_bytes = fit * one
        grouped = mech.zero_mask_sweep(model, batch, None, 4, share_image_rows=True, templates=templates)
        assert all(torch.equal(grouped[l], alone[l]) for l in alone), fit
        assert templates.stats()["decode_buffer_bytes"] == (0 if fit == 1 else fit * one)
