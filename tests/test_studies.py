"""Each study end to end on a small random checkpoint: the netCDF files and figures."""

import json

import numpy as np
import pytest
import xarray as xr

import mech

from studies import cli, hellinger_profile, layer_masking, layers, mask_ratio, pre_layer, review_layer, strategies

ARGS = ["--limit", "6", "--batch-size", "3", "--max-new-tokens", "2", "--no-progress"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def common_attrs_ok(ds, study):
    assert ds.attrs["study"] == study
    for key in ("model", "family", "decoder_layers", "prompt_template", "datasets", "limit", "seed",
                "max_new_tokens", "command", "created"):
        assert key in ds.attrs, key
    assert {"torch", "transformers", "nnsight"} <= set(json.loads(ds.attrs["versions"]))


def test_review_layer_writes_everything(checkpoint, out, capsys):
    review_layer.main(["--model", checkpoint, "--out", str(out), *ARGS])
    printed = capsys.readouterr().out
    assert "layers (" in printed and "no intervention" in printed and "contrastive" in printed
    for name in ("review_layer", "layer_masking", "hellinger_profile"):
        assert (out / f"{name}.nc").exists()
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0

    ds = xr.open_dataset(out / "layer_masking.nc")
    assert ds["score"].dims == ("dataset", "layer", "sample")
    assert list(ds["layer"].values) == list(range(6))
    assert ds["accuracy_ci"].dims == ("dataset", "layer", "bound")
    assert ds["inverse_time"].attrs["units"] == "1/s" and ds["accuracy"].attrs["units"] == "fraction"
    assert (ds["accuracy_ci"].sel(bound="low") <= ds["accuracy"] + 1e-12).all()
    common_attrs_ok(ds, "layer_masking")
    assert "review_layer" in ds.attrs and "layers_source" in ds.attrs

    ds = xr.open_dataset(out / "hellinger_profile.nc")
    assert ds["hellinger"].dims == ("dataset", "layer", "sample")
    h = ds["hellinger"].values
    assert np.all((h >= 0) & (h <= 1 + 1e-6)) and np.allclose(h[:, -1], 0, atol=1e-6)

    ds = xr.open_dataset(out / "review_layer.nc")
    assert ds["score"].dims == ("dataset", "run", "sample")
    assert list(ds["selection"].values) == ["contrastive", "random", "random", "random"]
    assert list(ds["dataset"].values) == ["shapes", "shapes-dots"]
    assert ds["table1_difference_ci"].dims == ("table1_row", "bound")
    assert 0 <= float(ds["table1_p_value"].sel(table1_row="shapes")) <= 1
    assert ds["controls_difference"].dims == ("controls_row", "table_setting", "control")
    assert list(ds["control"].values) == ["random"]
    assert int(ds["controls_changed"].sel(controls_row="shapes").item()) >= 0
    common_attrs_ok(ds, "review_layer")
    assert ds.attrs["rho"] == 0.2 and ds.attrs["lam"] == 0.1 and ds.attrs["mask_at"] == "normed"
    by_type = json.loads(ds.attrs["discovery_by_question_type"])
    assert set(by_type) <= {"color", "shape", "count", "exist", "spatial"}


def test_rerun_reuses_every_chunk(checkpoint, out, capsys):
    """A second run of the main job recomputes nothing (resume through the runner)."""
    before = {p: p.stat().st_mtime_ns for p in (out / "chunks").rglob("*") if p.is_file() and "chunk" in p.name}
    review_layer.main(["--model", checkpoint, "--out", str(out), *ARGS])
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before and before == after


def test_other_studies(checkpoint, out):
    base = ["--model", checkpoint, "--out", str(out), *ARGS, "--review", "5"]
    ds = strategies.main(base)
    assert ds["accuracy"].dims == ("dataset", "strategy") and "all" in ds["strategy"].values
    ds = pre_layer.main(base)
    assert ds["frequency"].dims == ("dataset", "layer")
    assert np.allclose(ds["frequency"].sum("layer"), 1)
    assert int(ds["count"].sum()) == 6 * ds.sizes["dataset"]
    ds = mask_ratio.main([*base, "--rho", "0,0.5,1"])
    assert list(ds["ratio"].values) == [0, 0.5, 1] and ds["ratio"].attrs["units"] == "fraction"
    for name in ("strategies", "pre_layer", "mask_ratio"):
        reopened = xr.open_dataset(out / f"{name}.nc")
        common_attrs_ok(reopened, name)
        assert reopened.attrs["review_layer"] == 5 and reopened.attrs["layers_source"] == "given"


def synthetic_masking(accuracy, n=400, seed=0):
    """A layer-masking Dataset with Bernoulli per-sample scores at given per-layer accuracies."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    score = (u[None, :] < np.asarray(accuracy)[:, None]).astype(float)  # nested: monotone in accuracy
    ds = xr.Dataset({"score": (("layer", "sample"), score),
                     "baseline_score": ("sample", (u < 0.97).astype(float))},
                    coords={"layer": np.arange(len(accuracy)), "sample": [f"s{i}" for i in range(n)]})
    return mech.comparisons.per_dataset({"shapes": ds})


class Args:
    review = post = fusion = None
    seed = 0


class EightLayers:
    n_layers = 8

    def check_layer(self, layer, what="layer"):
        return layer


def test_discovered_layers_or_an_honest_fallback():
    dip = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6, 0.9]  # a drop at 6 after a flat stretch
    chosen = layers.resolve(Args(), EightLayers(), synthetic_masking(dip))
    assert (chosen.source, chosen.review, chosen.post) == ("discovered", 6, 5)
    rising = [0.12, 0.30, 0.30, 0.34, 0.38, 0.59, 0.79, 0.79]
    chosen = layers.resolve(Args(), EightLayers(), synthetic_masking(rising))
    assert chosen.source == "fallback" and "no review layer found" in chosen.reason
    assert chosen.review == 5  # the paper's relative depth, capped three from the end, said so
    assert "relative depth" in chosen.reason and "three from the end" in chosen.reason


@pytest.mark.parametrize("n", [5, 8, 12, 24, 28, 32, 34, 40, 80])
def test_fallback_review_layer_keeps_the_papers_relative_depth(n):
    """At the paper's depth (29 of 32) wherever that leaves three layers after it."""
    import mech

    review = mech.default_review_layer(n)
    assert review <= n - 3
    assert review == n - 3 or abs(review / n - 29 / 32) <= 0.5 / n
    assert mech.default_review_layer(32) == 29


def test_cli_rejects_bad_options(tmp_path):
    with pytest.raises(cli.UsageError, match="--batch-size 0"):
        layer_masking.main(["--batch-size", "0", "--out", str(tmp_path)])
    with pytest.raises(cli.UsageError, match="exclude each other"):
        layer_masking.main(["--naive-sweep", "--share-image-rows", "--out", str(tmp_path)])
    with pytest.raises(cli.UsageError, match="--datasets nope: unknown"):
        hellinger_profile.main(["--datasets", "shapes,nope", "--out", str(tmp_path)])
    (tmp_path / "file").write_text("")
    with pytest.raises(cli.UsageError, match="is a file"):
        review_layer.main(["--out", str(tmp_path / "file")])


def test_layer_masking_with_shared_image_rows(checkpoint, tmp_path):
    """--share-image-rows: the same accuracies as the bitwise sweep, chunks kept apart."""
    args = ["--model", checkpoint, *ARGS]
    exact = layer_masking.main([*args, "--out", str(tmp_path)])
    shared = layer_masking.main([*args, "--out", str(tmp_path), "--share-image-rows"])
    assert (exact["score"].values == shared["score"].values).all()
    assert exact.attrs["sweep"].startswith("bitwise") and "shared" in shared.attrs["sweep"]
    assert sorted(p.name for p in (tmp_path / "chunks" / "shapes").glob("*+shared-rows")) == \
        sorted(p.name + "+shared-rows" for p in (tmp_path / "chunks" / "shapes").glob("zeroimage-*")
               if not p.name.endswith("+shared-rows"))


def test_question_types_select_the_shapes_questions(tmp_path):
    """--question-types: only those types are asked (e.g. the ones a model was trained on),
    the dataset says so; bad values and non-shapes datasets are refused before model work."""
    from studies import inputs

    parser = cli.CURRENT.get("parser") or cli.parser("layer_masking", "")
    args = parser.parse_args(["--question-types", "color,spatial", "--limit", "8"])
    samples = inputs.load_samples(args)
    assert {s.extras["question_type"] for d in samples.values() for s in d} == {"color", "spatial"}
    assert [s.id for s in samples["shapes"]] != [s.id for s in mech.datasets.load("shapes", limit=8)]
    for bad, match in ((["--question-types", "colour"], "--question-types colour: unknown colour"),
                       (["--question-types", "color", "--datasets", "shapes,easyvqa"], "not easyvqa")):
        with pytest.raises(cli.UsageError, match=match):
            layer_masking.main([*bad, "--out", str(tmp_path)])
