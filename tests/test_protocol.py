"""The generation protocol in the runner: per-dataset caps, both protocols' scores,
rescoring of reused chunks, and what studies record."""

import pytest
import xarray as xr

import mech
from tiny_models import tiny_llava, tiny_samples


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5")
    return mech.load(module, processor=processor)


def mixed(n=6):
    vqa = tiny_samples(n // 2, dataset="vqav2")
    doc = [s.__class__(f"doc-{s.id}", "docvqa", s.image, s.question, ("blue", "yes"), {})
           for s in tiny_samples(n // 2, seed=1, dataset="docvqa")]
    return [x for pair in zip(vqa, doc) for x in pair]


def test_each_dataset_generates_to_its_own_cap(llava):
    samples = mixed()
    assert mech.generation.settings("vqav2").max_new_tokens == 16
    assert mech.generation.settings("docvqa").max_new_tokens == 32
    auto = mech.run(llava, samples, batch_size=6, progress=False)
    assert auto.meta["max_new_tokens"] == {"vqav2": 16, "docvqa": 32}
    # A row cut at its cap is what a run at that cap generates for the same batch.
    for cap, dataset in ((16, "vqav2"), (32, "docvqa")):
        fixed = mech.run(llava, samples, batch_size=6, max_new_tokens=cap, progress=False)
        rows = [i for i, s in enumerate(samples) if s.dataset == dataset]
        assert [auto.records[i].prediction for i in rows] == [fixed.records[i].prediction for i in rows]
        assert all(auto.records[i].new_tokens <= cap for i in rows)
    # The random model does not stop early, so the caps are what ended generation.
    assert max(r.new_tokens for r in auto.records if r.dataset == "docvqa") == 32


def test_records_hold_both_protocols(llava):
    samples = mixed(4)
    for protocol in mech.metrics.PROTOCOLS:
        results = mech.run(llava, samples, batch_size=2, max_new_tokens=3, protocol=protocol, progress=False)
        for record, sample in zip(results.records, samples):
            expected = {p: mech.metrics.score(sample.dataset, record.prediction, sample.answers, protocol=p)
                        for p in mech.metrics.PROTOCOLS}
            assert record.scores == expected and record.score == expected[protocol]
        assert results.meta["protocol"] == protocol
    with pytest.raises(ValueError, match="protocol"):
        mech.run(llava, samples, protocol="vqa", progress=False)


def test_switching_protocol_regenerates_nothing(llava, tmp_path):
    samples = tiny_samples(4)
    # Unanimous gold answers: "official" compares raw strings, lmms-eval normalises.
    samples = [s.__class__(s.id, "vqav2", s.image, s.question, ("Yes.",) * 10, {}) for s in samples]
    first = mech.run(llava, samples, out=tmp_path, batch_size=2, max_new_tokens=2, progress=False)
    again = mech.run(llava, samples, out=tmp_path, batch_size=2, max_new_tokens=2, protocol="official",
                     progress=False)
    assert again.computed == [] and again.reused == [0]
    assert [r.score for r in again.records] == [
        mech.metrics.score("vqav2", r.prediction, ("Yes.",) * 10, protocol="official") for r in first.records]
    loaded = mech.Results.load(tmp_path, protocol="lmms-eval")
    assert [r.score for r in loaded.records] == [r.score for r in first.records]


def test_datasets_record_protocol_generation_and_template(checkpoint, tmp_path):
    from studies import layer_masking

    ds = layer_masking.main(["--model", checkpoint, "--limit", "4", "--batch-size", "4", "--out", str(tmp_path),
                             "--no-progress", "--protocol", "official"])
    assert ds.attrs["protocol"] == "official"
    assert "a013f00" in ds.attrs["scorers"]
    generation = __import__("json").loads(ds.attrs["generation"])
    assert generation["shapes"]["max_new_tokens"] == 16 and generation["shapes"]["stop_strings_applied"] is False
    assert ds.attrs["prompt_template_source"] == "processor chat template"
    assert ds.attrs["prompt_template"] == mech.load(checkpoint).template
    assert "mean_new_tokens" in ds and ds["new_tokens"].attrs["units"] == "tokens"
    saved = xr.open_dataset(tmp_path / "layer_masking.nc")
    assert saved.attrs["protocol"] == "official"
    saved.close()
