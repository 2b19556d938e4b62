"""Bad input gets a ValueError that names the problem and the fix."""

import re

import pytest
import torch

import mech
from tiny_models import random_images


def test_prompt_without_image(model):
    with pytest.raises(ValueError, match=f"no {re.escape(model.family.placeholder)} placeholder"):
        model.prepare(prompts=["USER: what color? ASSISTANT:"], images=random_images(1))


def test_image_count_mismatch(model):
    mark = re.escape(model.family.placeholder)
    with pytest.raises(ValueError, match=f"1 {mark} placeholders but 2 images"):
        model.prepare(prompts=[model.prompt("what color?")], images=random_images(2))


@pytest.mark.parametrize("intervention", [
    mech.ZeroImage(layer=4), mech.ZeroImage(layer=-1), mech.ScaleImage(layer=9, weights=0.5),
    mech.Knockout(layers=[1, 7]), mech.CaptureImageAttention(layers=[4]),
    mech.ContrastiveMask(review=4),
])
def test_layer_out_of_range_names_valid_range(model, batch, intervention):
    with pytest.raises(ValueError, match=r"out of range: valid decoder layers are 0\.\.3"):
        intervention.validate(model)


@pytest.mark.parametrize("rho", [-0.1, 1.5, float("nan"), float("inf")])
def test_rho_outside_unit_interval(model, rho):
    with pytest.raises(ValueError, match=r"rho=.*: must be a finite number in \[0, 1\]"):
        mech.ContrastiveMask(review=3, rho=rho).validate(model)


@pytest.mark.parametrize("lam", [-0.5, float("nan"), float("inf")])
def test_lambda_must_be_finite_and_not_negative(model, lam):
    with pytest.raises(ValueError, match=r"lam=.*: must be a finite number >= 0"):
        mech.ContrastiveMask(review=3, lam=lam).validate(model)


@pytest.mark.parametrize("weights", [float("nan"), float("inf"), torch.tensor([[1.0, float("nan")]])])
def test_scale_weights_must_be_finite(model, weights):
    with pytest.raises(ValueError, match="finite"):
        mech.ScaleImage(layer=1, weights=weights).validate(model)


@pytest.mark.parametrize("kwargs", [dict(repetition_penalty=float("nan")), dict(repetition_penalty=0),
                                    dict(relative_top=float("nan")), dict(relative_top=1.5)])
def test_dola_parameters_must_be_finite_and_in_range(model, kwargs):
    with pytest.raises(ValueError, match="must be a finite number"):
        mech.DoLa(**kwargs).validate(model)


def test_empty_candidate_set(model):
    with pytest.raises(ValueError, match="candidate set .* is empty"):
        mech.ContrastiveMask(review=3, candidates=[]).validate(model)
    with pytest.raises(ValueError, match="candidate set 'deep' is empty"):
        mech.ContrastiveMask(review=2, candidates="deep").validate(model)  # post 1 < n/2


def test_candidates_at_or_above_post(model):
    with pytest.raises(ValueError, match=r"candidate layers \[2\] are not below the post-integrated layer 2"):
        mech.ContrastiveMask(review=3, candidates=[0, 2]).validate(model)


def test_post_not_before_review(model):
    with pytest.raises(ValueError, match="must come before the review layer"):
        mech.ContrastiveMask(review=2, post=2).validate(model)


def test_bad_options(model):
    with pytest.raises(ValueError, match="at='middle'"):
        mech.ZeroImage(layer=1, at="middle").validate(model)
    with pytest.raises(ValueError, match="query='all'"):
        mech.Knockout(layers=[1], query="all").validate(model)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        mech.CaptureImageAttention(layers=[1], method="eager").validate(model)
    with pytest.raises(ValueError, match="heads='sum'"):
        mech.CaptureImageAttention(layers=[1], heads="sum").validate(model)


def test_missing_tiny_model_message(tmp_path, monkeypatch):
    monkeypatch.setattr(mech.model, "TINY_PATH", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="python -m mech.zoo.train"):
        mech.load("tiny")
