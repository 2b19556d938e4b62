"""Studies through nnsight's remote path, and the message for a model NDIF does not serve."""

import nnsight
import numpy as np
import pytest
import xarray as xr

import mech
from mech.zoo.random_llava import random_llava
from studies import layer_masking


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random-llava-remote")
    module, processor = random_llava(layers=4, image_size=64, patch_size=16,
                                     words=mech.datasets.SHAPES_VOCABULARY)
    module.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_layer_masking_remote_local_equals_local(checkpoint, tmp_path):
    args = ["--model", checkpoint, "--limit", "4", "--batch-size", "2", "--max-new-tokens", "2", "--no-progress"]
    local = layer_masking.main([*args, "--out", str(tmp_path / "local")])
    remote = layer_masking.main([*args, "--out", str(tmp_path / "remote"), "--remote", "local"])
    for var in ("score", "new_tokens", "baseline_score", "accuracy"):
        np.testing.assert_array_equal(local[var].values, remote[var].values)
    assert xr.open_dataset(tmp_path / "remote" / "layer_masking.nc").attrs["remote"] == "local"


def test_unserved_model_gets_a_clear_message(monkeypatch):
    monkeypatch.setattr(nnsight, "is_model_running", lambda *a, **k: False)
    with pytest.raises(ValueError, match="NDIF does not serve 'llava-hf/not-a-model'.*nnsight.status"):
        mech.remote.require_served("llava-hf/not-a-model")
    for embedded in ("tiny", "tiny-review"):
        with pytest.raises(ValueError, match=f"tiny model '{embedded}' is not served by NDIF"):
            mech.remote.require_served(embedded)
    monkeypatch.setattr(nnsight, "is_model_running", lambda *a, **k: True)
    mech.remote.require_served("llava-hf/llava-1.5-7b-hf")  # served: no error
