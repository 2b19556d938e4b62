"""Tiny random models of every family and samples for tests (see mech.zoo.random_vlm)."""

from mech.zoo.random_llava import WORDS, random_images, random_llava  # noqa: F401
from mech.zoo.random_vlm import random_vlm

QUESTIONS = ["what color is the circle?", "what shape is red?", "is the square blue?"]


def tiny_llava(family: str = "llava-1.5", attn: str = "sdpa", layers: int = 4, seed: int = 0):
    """``(module, processor)`` of ``family`` with random weights; identical weights for any ``attn``."""
    return random_vlm(family, attn=attn, layers=layers, seed=seed)


def tiny_samples(n: int, seed: int = 0, dataset: str = "shapes", sizes=None):
    """``n`` synthetic `Sample`s with random images, cycling `QUESTIONS` and mixed gold answers."""
    from mech.datasets import Sample

    answers = ["square", "blue", "yes", "circle"]
    images = random_images(n, seed=seed, sizes=sizes)
    return [Sample(f"{dataset}-{i:03d}", dataset, images[i], QUESTIONS[i % len(QUESTIONS)],
                   (answers[i % len(answers)],) * 10) for i in range(n)]


def skip_without_shared_rows(model):
    """Skip a shared-image-rows test on a family it does not apply to (test_families checks
    that such a family gets the error that says why)."""
    import pytest

    if model.family.shared_rows:
        pytest.skip(f"shared image rows do not apply to {model.family.name}")
