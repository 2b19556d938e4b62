"""Tiny random LLaVA-1.5 and LLaVA-NeXT models and samples for tests (see mech.zoo.random_llava)."""

from mech.zoo.random_llava import WORDS, random_images, random_llava  # noqa: F401

QUESTIONS = ["what color is the circle?", "what shape is red?", "is the square blue?"]


def tiny_llava(family: str = "llava-1.5", attn: str = "sdpa", layers: int = 4, seed: int = 0):
    """``(module, processor)`` with random weights; identical weights for any ``attn``."""
    return random_llava(family, attn=attn, layers=layers, seed=seed)


def tiny_samples(n: int, seed: int = 0, dataset: str = "shapes", sizes=None):
    """``n`` synthetic `Sample`s with random images, cycling `QUESTIONS` and mixed gold answers."""
    from mech.datasets import Sample

    answers = ["square", "blue", "yes", "circle"]
    images = random_images(n, seed=seed, sizes=sizes)
    return [Sample(f"{dataset}-{i:03d}", dataset, images[i], QUESTIONS[i % len(QUESTIONS)],
                   (answers[i % len(answers)],) * 10) for i in range(n)]
