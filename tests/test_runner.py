"""mech.run against plain HF generate, resume after a real SIGKILL, chunk checks, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import mech
from reference import hooks, multiplier, scale_hook
from runner_child import INTERVENTION, SETTINGS
from tiny_models import tiny_llava, tiny_samples

TESTS = Path(__file__).resolve().parent
NEW_TOKENS = 4


def chunk_paths(out: Path) -> list[Path]:
    """The chunk files of the one run in ``out``, in order (from its manifest)."""
    (manifest,) = out.glob("run-*.json")
    return [out / name for name in json.loads(manifest.read_text())["chunks"]]


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5")
    return mech.load(module, processor=processor)


@pytest.fixture(scope="module")
def samples():
    return tiny_samples(6)


def reference_predictions(model, samples, batch_size, zero_layer=None):
    """Plain ``module.generate`` on the processor's own batches, hooks for ZeroImage."""
    module, processor = model.nn._module, model.processor
    layers = module.model.language_model.layers
    out = []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo:lo + batch_size]
        prompts = [f"USER: <image>\n{mech.prompts.question_prompt(s)} ASSISTANT:" for s in chunk]
        inputs = processor(text=prompts, images=[s.image for s in chunk], return_tensors="pt",
                           padding=True)
        seq = inputs["input_ids"].shape[1]
        handles = []
        if zero_layer is not None:
            mult = multiplier(inputs["input_ids"], model.image_token_id, 0.0)
            handles.append(scale_hook(layers, zero_layer, "input", mult, seq))
        with hooks(*handles), torch.no_grad():
            ids = module.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        texts = processor.tokenizer.batch_decode(ids[:, seq:], skip_special_tokens=True)
        out += [t.strip() for t in texts]  # the whole continuation, stripped (lmms-eval)
    return out


@pytest.mark.parametrize("intervention", [None, mech.ZeroImage(layer=1)], ids=["none", "zero1"])
def test_predictions_match_plain_generate(llava, samples, intervention):
    zero = None if intervention is None else intervention.layer
    got = {}
    for batch_size in (1, 3):
        results = mech.run(llava, samples, intervention, batch_size=batch_size,
                           max_new_tokens=NEW_TOKENS, progress=False)
        got[batch_size] = results.predictions
        assert got[batch_size] == reference_predictions(llava, samples, batch_size, zero)
        for record, sample in zip(results.records, samples):
            assert record.score == mech.metrics.score("shapes", record.prediction, sample.answers)
            assert record.scores == {p: mech.metrics.score("shapes", record.prediction, sample.answers, protocol=p)
                                     for p in mech.metrics.PROTOCOLS}
            assert 0 <= record.new_tokens <= NEW_TOKENS and record.seconds > 0
            assert record.timing == ("per-sample" if batch_size == 1 else "amortised")
        assert results.meta["timing"] == ("per-sample" if batch_size == 1 else "amortised")
    assert got[1] == got[3]
    if intervention is not None:  # the edit must change something, or equality proves little
        assert got[1] != mech.run(llava, samples, max_new_tokens=NEW_TOKENS, progress=False).predictions


def test_new_tokens_stop_at_eos(llava, samples):
    results = mech.run(llava, samples, batch_size=3, max_new_tokens=NEW_TOKENS, progress=False)
    batch = llava.prepare(samples[:3], question_prompt=mech.prompts.question_prompt)
    with torch.no_grad():
        ids = llava.nn._module.generate(**batch.generate_inputs, max_new_tokens=NEW_TOKENS,
                                        do_sample=False, pad_token_id=0)[:, batch.seq_len:]
    for row, record in zip(ids.tolist(), results.records):
        expected = row.index(2) if 2 in row else len(row)  # tiny models: eos id 2
        assert record.new_tokens == expected
    assert {r.new_tokens for r in results.records} != {NEW_TOKENS}  # some row did stop early


def test_extras_per_sample_independent_of_batching():
    """ContrastiveMask results split per sample, padded image slots trimmed (NeXT rows
    have different image-token counts), equal at batch sizes 1 and 3."""
    module, processor = tiny_llava("llava-next")
    model = mech.load(module, processor=processor)
    samples = tiny_samples(3, sizes=[(40, 50), (30, 90), (64, 40)])
    runs = [mech.run(model, samples, mech.ContrastiveMask(review=3), batch_size=b, max_new_tokens=2,
                     progress=False) for b in (1, 3)]
    assert runs[0].predictions == runs[1].predictions
    counts = model.prepare(samples).image_counts.tolist()
    assert len(set(counts)) > 1
    for one, three, count in zip(runs[0].records, runs[1].records, counts):
        assert set(one.extras) == {"pre_layer", "distance", "scores", "weights"}
        assert isinstance(one.extras["pre_layer"], int) and len(one.extras["weights"]) == count
        assert one.extras["pre_layer"] == three.extras["pre_layer"]
        assert one.extras["scores"] == pytest.approx(three.extras["scores"], abs=1e-6)
    ds = runs[1].to_xarray()
    assert ds.sizes["sample"] == 3 and ds["inverse_time"].attrs["units"] == "1/s"
    assert ds.attrs["timing"] == "amortised" and "extra_pre_layer" in ds


def test_kill_and_restart_resumes_without_recomputing(llava, tmp_path):
    n, out = 8, tmp_path / "run"
    expected = mech.run(llava, tiny_samples(n), INTERVENTION, **SETTINGS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, str(TESTS / "runner_child.py"), str(out), str(n)]

    child = subprocess.Popen(command + ["0.3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("run-*.json")) or not chunk_paths(out)[0].exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child wrote no chunk in time"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    child.stdout.close(), child.stderr.close()
    chunks = chunk_paths(out)
    assert len(chunks) == n // SETTINGS["chunk_size"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in chunks if p.exists()}
    assert 1 <= len(before) < len(chunks), f"kill landed outside the run: {sorted(before)}"

    done = subprocess.run(command + ["0"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ChunkWarning" not in done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    finished = sorted(i for i, p in enumerate(chunks) if p.name in before)
    assert resumed["reused"] == finished
    assert resumed["computed"] == [i for i in range(len(chunks)) if i not in finished]
    assert {name: (out / name).stat().st_ino for name in before} == {k: v[0] for k, v in before.items()}
    assert {name: (out / name).stat().st_mtime_ns for name in before} == {k: v[1] for k, v in before.items()}
    same = ("id", "prediction", "score", "new_tokens", "extras")
    assert ([{k: r[k] for k in same} for r in resumed["records"]]
            == [{k: v for k, v in asdict(r).items() if k in same} for r in expected.records])


def test_corrupt_and_foreign_chunks_are_recomputed(llava, samples, tmp_path):
    settings = dict(batch_size=1, chunk_size=2, max_new_tokens=NEW_TOKENS, progress=False)
    first = mech.run(llava, samples, mech.ZeroImage(layer=1), out=tmp_path, **settings)
    assert first.computed == [0, 1, 2] and first.reused == []
    corrupt, _, foreign = chunk_paths(tmp_path)
    corrupt.write_text(corrupt.read_text()[:200])  # a truncated write
    other = tmp_path / "other"
    mech.run(llava, samples, mech.ZeroImage(layer=2), out=other, **settings)
    foreign.write_bytes(chunk_paths(other)[2].read_bytes())
    with pytest.warns(mech.ChunkWarning) as caught:
        again = mech.run(llava, samples, mech.ZeroImage(layer=1), out=tmp_path, **settings)
    messages = [str(w.message) for w in caught]
    assert any(str(corrupt) in m and "corrupt" in m for m in messages)
    assert any(str(foreign) in m and "foreign" in m and "intervention" in m for m in messages)
    assert again.computed == [0, 2] and again.reused == [1] and sorted(again.rejected) == [0, 2]
    assert again.predictions == first.predictions
    assert json.loads(foreign.read_text())["fingerprint"]["intervention"][0]["params"]["layer"] == 1


def test_settings_change_gets_chunks_of_its_own(llava, samples, tmp_path):
    settings = dict(batch_size=3, chunk_size=3, progress=False)
    two = mech.run(llava, samples, out=tmp_path, max_new_tokens=2, **settings)
    three = mech.run(llava, samples, out=tmp_path, max_new_tokens=3, **settings)
    assert three.computed == [0, 1] and three.rejected == {}
    assert mech.run(llava, samples, out=tmp_path, max_new_tokens=3, **settings).reused == [0, 1]
    assert mech.run(llava, samples, out=tmp_path, max_new_tokens=2, **settings).reused == [0, 1]
    assert len(list(tmp_path.glob("chunk-*.json"))) == 4 and len(list(tmp_path.glob("run-*.json"))) == 2
    assert two.predictions != three.predictions


def test_sweep_uses_one_folder_per_intervention(llava, samples, tmp_path):
    ivs = [None, mech.ZeroImage(layer=1), mech.ZeroImage(layer=2)]
    results = mech.sweep(llava, samples[:2], ivs, out=tmp_path, batch_size=2, max_new_tokens=2,
                         progress=False)
    names = list(results)
    assert names[0] == "baseline" and names[1].startswith("zeroimage-layer1-") and len(set(names)) == 3
    assert names == [mech.slug(iv) for iv in ivs]  # stable across calls
    assert all(chunk_paths(tmp_path / name)[0].exists() for name in names)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(samples=[]), ValueError, "empty"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(batch_size=2, chunk_size=3), ValueError, "multiple"),
    (dict(intervention=mech.ScaleImage(layer=1, weights=torch.ones(1, 16))), ValueError, "tied to one batch"),
    (dict(intervention=mech.ZeroImage(layer=9)), ValueError, "out of range"),
])
def test_bad_input_errors(llava, samples, kwargs, error, match):
    args = dict(samples=samples[:1], progress=False) | kwargs
    with pytest.raises(error, match=match):
        mech.run(llava, args.pop("samples"), **args)


def test_out_that_is_a_file_errors(llava, samples, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        mech.run(llava, samples[:1], out=path, progress=False)


def test_duplicate_ids_error(llava, samples):
    with pytest.raises(ValueError, match="unique"):
        mech.run(llava, [samples[0], samples[0]], progress=False)


def test_results_load_reads_a_finished_folder(llava, samples, tmp_path):
    done = mech.run(llava, samples, mech.ContrastiveMask(review=3), out=tmp_path, batch_size=3,
                    max_new_tokens=2, extras="pre_layer", progress=False)
    loaded = mech.Results.load(tmp_path)
    assert [asdict(r) for r in loaded.records] == [asdict(r) for r in done.records]
    assert set(loaded.records[0].extras) == {"pre_layer"} and loaded.meta["timing"] == "amortised"
    first = chunk_paths(tmp_path)[0]
    first.unlink()
    with pytest.raises(ValueError, match=f"{first.name}: missing"):
        mech.Results.load(tmp_path)


def test_remote_local_run_equals_local_run():
    """The runner's remote path (nnsight remote="local") gives the same records."""
    import mech
    from tiny_models import tiny_llava, tiny_samples

    module, processor = tiny_llava()
    model = mech.load(module, processor=processor)
    samples = tiny_samples(4)
    intervention = mech.ContrastiveMask(review=3)
    local = mech.run(model, samples, intervention, batch_size=2, max_new_tokens=2, progress=False)
    remote = mech.run(model, samples, intervention, batch_size=2, max_new_tokens=2, progress=False,
                      remote="local")
    assert [r.prediction for r in local.records] == [r.prediction for r in remote.records]
    assert [r.extras for r in local.records] == [r.extras for r in remote.records]
    assert remote.meta["remote"] == "local"
