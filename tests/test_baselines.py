"""The Table-2 study end to end on a small saved random checkpoint."""

import json

import numpy as np
import xarray as xr

from studies import baselines


def test_baselines_writes_the_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--model", checkpoint, "--out", str(out), "--limit", "4", "--batch-size", "2",
            "--max-new-tokens", "2", "--no-progress", "--review", "5", "--vicrop-crop-size", "32",
            "--datasets", "shapes"]
    baselines.main(args)
    printed = capsys.readouterr().out
    for label in ("no intervention", "DoLa", "ViCrop", "contrastive attention"):
        assert label in printed
    for suffix in ("nc", "png", "pdf"):
        assert (out / f"baselines.{suffix}").stat().st_size > 0
    ds = xr.open_dataset(out / "baselines.nc")
    assert ds["score"].dims == ("dataset", "system", "sample")
    assert list(ds["system"].values) == ["dola", "vicrop", "contrastive"]
    assert list(ds["dataset"].values) == ["shapes"] and ds.sizes["sample"] == 4
    assert ds["baseline_score"].dims == ("dataset", "sample")
    assert ds["accuracy_ci"].dims == ("dataset", "system", "bound")
    assert ds["difference_ci"].dims == ("system", "row", "bound")
    assert ((ds["p_value"] >= 0) & (ds["p_value"] <= 1)).all()
    assert ds["dola_premature_count"].dims == ("dataset", "premature_layer")
    assert list(ds["premature_layer"].values) == [3, 5]  # "high" for 6 layers
    assert int(ds["dola_premature_count"].sum()) >= int(ds["new_tokens"].sel(system="dola").sum())
    np.testing.assert_allclose(ds["table_accuracy"].sel(row="shapes"), ds["accuracy"].sel(dataset="shapes"))
    assert ds.attrs["study"] == "baselines" and ds.attrs["review_layer"] == 5
    assert ds.attrs["vicrop_layer"] == 3 and json.loads(ds.attrs["dola_candidates"]) == [3, 5]
    assert "DoLa(" in ds.attrs["dola"] and "ViCrop(" in ds.attrs["vicrop"]
    assert {"torch", "transformers", "nnsight"} <= set(json.loads(ds.attrs["versions"]))
