"""The clean/corrupted pairs, and the patching and logit-lens studies end to end on a saved
random LLaVA (every number checked against what must hold whatever the weights)."""

import numpy as np
import pytest
import torch

import mech
from mech.datasets.shapes import questions
from studies import cli


def test_pairs_change_the_asked_object_and_nothing_else():
    pairs = mech.datasets.pairs(n=12, seed=3)
    assert [p.clean.id for p in pairs[:5]] == [p.clean.id for p in mech.datasets.pairs(n=5, seed=3)]
    for p in pairs:
        clean, corrupted = p.clean.extras["scene"], p.corrupted.extras["scene"]
        differs = [i for i, (a, b) in enumerate(zip(clean.objects, corrupted.objects)) if a != b]
        assert differs == [p.object] and clean.jitter == corrupted.jitter
        a, b = clean.objects[p.object], corrupted.objects[p.object]
        assert getattr(a, p.changed) != getattr(b, p.changed)
        assert (a.shape, a.color)[p.changed == "shape"] == (b.shape, b.color)[p.changed == "shape"]
        assert p.clean.question == p.corrupted.question and p.clean.answers != p.corrupted.answers
        # the corrupted answer is the one the corrupted scene gives to that question
        assert (p.clean.question, p.corrupted.answers[0]) in questions(corrupted, p.changed)
        assert mech.datasets.asked_object(p.corrupted) == p.object
    assert {p.changed for p in pairs} == {"color", "shape"}
    assert np.asarray(pairs[0].clean.image).tobytes() != np.asarray(pairs[0].corrupted.image).tobytes()


def test_patching_study_restores_what_must_be_restored(checkpoint, tmp_path):
    from studies import patching

    ds = patching.main(["--model", checkpoint, "--limit", "4", "--batch-size", "4", "--out", tmp_path,
                        "--no-progress"])
    assert (tmp_path / "patching.nc").exists() and (tmp_path / "patching.png").exists()
    first = ds.sel(layer=0)
    patched = first["logit_diff_patched"]
    # At the input of layer 0 the image is the only difference between the two runs: all its
    # tokens give the clean run back, the text tokens (identical there) nothing. (The other
    # image tokens differ too: the vision tower mixes every patch.)
    assert np.allclose(patched.sel(group="image"), ds["logit_diff_clean"], atol=1e-4)
    for group in ("question", "last"):
        assert np.allclose(patched.sel(group=group), ds["logit_diff_corrupted"], atol=1e-4), group
    assert not np.allclose(ds["logit_diff_clean"], ds["logit_diff_corrupted"])  # the pairs differ
    with pytest.raises(cli.UsageError, match="--datasets vqav2"):
        patching.main(["--model", checkpoint, "--datasets", "vqav2", "--out", tmp_path])


def test_logit_lens_study_ends_at_the_models_own_prediction(checkpoint, tmp_path):
    from studies import logit_lens

    ds = logit_lens.main(["--model", checkpoint, "--limit", "5", "--out", tmp_path, "--no-progress"])
    assert (tmp_path / "logit_lens.nc").exists() and (tmp_path / "logit_lens.png").exists()
    model = mech.load(checkpoint)
    samples = mech.datasets.load("shapes", limit=5, seed=0)
    batch = model.prepare(samples)
    with torch.no_grad():
        last = model.nn._module(**batch.inputs).logits[:, -1].float()
    for b, sample in enumerate(samples):
        answer = model.processor.tokenizer(sample.answers[0], add_special_tokens=False)["input_ids"][0]
        assert ds["answer_rank"].values[b, -1] == int((last[b] > last[b, answer]).sum())
    assert bool(ds["has_object"].any()) and np.isfinite(ds["mean_object_rank"].sel(subset="all")).all()
    with pytest.raises(cli.UsageError, match="--show-layers 9"):
        logit_lens.main(["--model", checkpoint, "--show-layers", "1,9", "--out", tmp_path])
