"""Headroom and controls: cluttered shapes sets, question types, per-type discovery, the
controls study."""

import json

import numpy as np
import pytest
import xarray as xr

import mech
from mech.datasets.shapes import CLUTTER, shapes
from studies import cli, controls, layers


@pytest.mark.parametrize("kind", ["dots", "speckle"])
def test_clutter_draws_over_the_clean_scenes(kind):
    clean, cluttered = shapes("test", 20), shapes("test", 20, clutter=kind)
    assert [s.question for s in clean] == [s.question for s in cluttered]
    assert [s.answers for s in clean] == [s.answers for s in cluttered]
    assert all(s.dataset == f"shapes-{kind}" and s.id.startswith(f"shapes-{kind}-") for s in cluttered)
    changed = [np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).sum(-1) > 0
               for a, b in zip(clean, cluttered)]
    assert all(c.any() for c in changed)
    if kind == "dots":  # only empty cells get dots: every object pixel is as it was
        for sample, diff in zip(clean, changed):
            for obj in sample.extras["scene"].objects:
                cell = diff[obj.row * 16:(obj.row + 1) * 16, obj.col * 16:(obj.col + 1) * 16]
                assert not cell.any()
    assert [s.id for s in shapes("test", 5, clutter=kind)] == [s.id for s in cluttered[:5]]  # prefix-wise


def test_crowded_scenes_and_types():
    crowd = shapes("test", 40, clutter="crowd")
    assert all(5 <= s.extras["n_objects"] <= 7 for s in crowd)
    assert {s.question_type for s in crowd} == {"color", "shape", "exist", "spatial"}  # no count past 4
    assert all(s.question_type == s.extras["question_type"] for s in shapes("test", 10))
    with pytest.raises(ValueError, match="clutter 'fog'"):
        shapes("test", 2, clutter="fog")
    assert set(CLUTTER) == {"dots", "speckle", "crowd"}
    for kind in CLUTTER:
        assert len(mech.datasets.load(f"shapes-{kind}", limit=3)) == 3
        assert mech.metrics.score(f"shapes-{kind}", "red", ("red",) * 10) == 1.0


def test_question_types_reach_records_and_datasets():
    model = mech.load("tiny")
    results = mech.run(model, shapes("test", 10), batch_size=10, progress=False)
    assert [r.question_type for r in results.records] == [s.question_type for s in shapes("test", 10)]
    assert list(results.to_xarray()["question_type"].values[:5]) == ["color", "shape", "count", "exist", "spatial"]


def test_discovery_per_question_type():
    rng = np.random.default_rng(0)
    n = 200
    early = [0.3, 0.9, 0.9, 0.9, 0.9, 0.9]             # fused at layer 0, nothing later
    late = [0.3, 0.6, 0.6, 0.6, 0.6, 0.95]             # a second look at layer 4, after a flat stretch
    u = rng.random((2, n))
    score = np.concatenate([(u[0][None] < np.array(early)[:, None]), (u[1][None] < np.array(late)[:, None])], 1)
    baseline = np.concatenate([u[0] < early[-1], u[1] < late[-1]]).astype(float)  # unmasked = last layer
    ds = xr.Dataset({"score": (("layer", "sample"), score.astype(float)),
                     "baseline_score": ("sample", baseline)},
                    coords={"layer": np.arange(6), "sample": [f"s{i}" for i in range(2 * n)],
                            "question_type": ("sample", ["early"] * n + ["late"] * n)})
    found = layers.discover_by_type(mech.comparisons.per_dataset({"shapes": ds}))
    assert found["early"]["review"] is None and 0 in found["early"]["fusion"]
    assert found["late"]["review"] == 4
    assert found["late"]["n"] == n


def test_controls_study(checkpoint, tmp_path):
    ds = controls.main(["--model", checkpoint, "--limit", "6", "--batch-size", "3", "--no-progress",
                        "--out", str(tmp_path), "--review", "4", "--rho", "0.2,0.8", "--mask-at", "input,attention",
                        "--seeds", "2"])
    settings = {str(s) for s in ds["table_setting"].values}
    assert settings == {f"review4|{m}|rho{r}|lam0.1" for m in ("input", "attention") for r in ("0.2", "0.8")}
    assert ds["table_difference"].dims == ("table_row", "table_setting", "control")
    assert list(ds["control"].values) == list(controls.CONTROLS)
    assert int((ds["selection"] == "random").sum()) == 2 * 4  # two seeds per setting
    assert (ds["table_changed"] >= 0).all() and (ds["table_n_samples"] == 6).all()
    reopened = xr.open_dataset(tmp_path / "controls.nc")
    assert json.loads(reopened.attrs["settings"])[0]["review"] == 4
    reopened.close()
    with pytest.raises(cli.UsageError, match="--mask-at middle"):
        controls.main(["--model", checkpoint, "--out", str(tmp_path), "--mask-at", "input,middle"])
    with pytest.raises(cli.UsageError, match="--controls best"):
        controls.main(["--model", checkpoint, "--out", str(tmp_path), "--controls", "best"])
