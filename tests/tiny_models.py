"""Tiny random LLaVA-1.5 and LLaVA-NeXT models for tests (see mech.zoo.random_llava)."""

from mech.zoo.random_llava import WORDS, random_images, random_llava  # noqa: F401

QUESTIONS = ["what color is the circle?", "what shape is red?", "is the square blue?"]


def tiny_llava(family: str = "llava-1.5", attn: str = "sdpa", layers: int = 4, seed: int = 0):
    return random_llava(family, attn=attn, layers=layers, seed=seed)
