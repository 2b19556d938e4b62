"""The synthetic shapes VQA set: determinism, disjoint splits, answers true to the scene."""

import numpy as np
import pytest

from mech.datasets import SHAPES_VOCABULARY, Sample, shapes
from mech.datasets.shapes import (COLORS, QUESTION_TYPES, SHAPES, Obj, Scene, questions, render,
                                  scene_in_split, split_rng)


def _key(s: Sample):
    return s.image.tobytes(), s.question, s.answers


def test_same_seed_same_samples_and_prefix_stable():
    a, b = shapes("test", n=25, seed=3), shapes("test", n=25, seed=3)
    assert [_key(x) for x in a] == [_key(x) for x in b]
    assert [_key(x) for x in shapes("test", n=10, seed=3)] == [_key(x) for x in a[:10]]
    assert [_key(x) for x in shapes("test", n=25, seed=4)] != [_key(x) for x in a]


def test_sample_format():
    for s in shapes("validation", n=10):
        assert isinstance(s, Sample) and s.dataset == "shapes"
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
        assert len(s.answers) == 10 and len(set(s.answers)) == 1
        assert s.extras["question_type"] in QUESTION_TYPES
        assert set(s.question.rstrip("?").split()) <= set(SHAPES_VOCABULARY)
        assert s.answers[0] in SHAPES_VOCABULARY


def test_splits_disjoint():
    seen = {}
    for split in ("train", "validation", "test"):
        images = {s.image.tobytes() for s in shapes(split, n=300, seed=0)}
        for other, imgs in seen.items():
            assert not images & imgs, (split, other)
        seen[split] = images
    # by construction: a split only keeps scenes hashing into its own buckets, whatever the seed
    rng = split_rng("test", 123)
    assert all(scene_in_split(rng, "test").bucket() == 9 for _ in range(50))
    with pytest.raises(ValueError):
        shapes("dev", n=1)


def test_question_types_balanced_and_answers_match_scene():
    samples = shapes("test", n=100, seed=1)
    assert [s.extras["question_type"] for s in samples[:5]] == list(QUESTION_TYPES)
    for s in samples:
        scene, qtype, answer = s.extras["scene"], s.extras["question_type"], s.answers[0]
        pairs = {(o.color, o.shape) for o in scene.objects}
        if qtype == "exist":
            words = s.question.rstrip("?").split()
            assert ((words[-2], words[-1]) in pairs) == (answer == "yes")
        else:
            assert (s.question, answer) in questions(scene, qtype)
        assert s.image.tobytes() == render(scene).tobytes()


SCENE = Scene((Obj("circle", "red", 0, 0, 6), Obj("square", "blue", 0, 2, 6),
               Obj("triangle", "green", 2, 3, 6)))


def test_hand_built_scene_answers():
    assert set(questions(SCENE, "color")) == {("what color is the circle?", "red"),
                                              ("what color is the square?", "blue"),
                                              ("what color is the triangle?", "green")}
    assert ("what shape is blue?", "square") in questions(SCENE, "shape")
    assert questions(SCENE, "count") == [("how many shapes are there?", "3")]
    # circle is leftmost, triangle has two objects to its left: only the square has a unique neighbour
    assert set(questions(SCENE, "spatial")) == {("what is left of the square?", "circle"),
                                                ("what is right of the square?", "triangle")}
    for seed in range(20):
        (yes_q, yes), (no_q, no) = questions(SCENE, "exist", np.random.default_rng(seed))
        assert (yes, no) == ("yes", "no")
        assert yes_q in {"is there a red circle?", "is there a blue square?", "is there a green triangle?"}
        assert no_q not in {yes_q, "is there a red circle?", "is there a blue square?",
                            "is there a green triangle?"}


def test_ambiguous_questions_are_never_asked():
    twins = Scene((Obj("circle", "red", 1, 0, 6), Obj("circle", "red", 1, 1, 6),
                   Obj("square", "blue", 1, 3, 6)))
    assert questions(twins, "color") == [("what color is the square?", "blue")]
    assert questions(twins, "shape") == [("what shape is blue?", "square")]
    assert questions(twins, "spatial") == []  # the only unique reference has two objects left of it


def test_rendering_puts_colours_in_cells():
    pixels = np.asarray(render(SCENE))
    assert tuple(pixels[8, 8]) == COLORS["red"]  # centre of cell (0, 0)
    assert tuple(pixels[8, 40]) == COLORS["blue"]  # cell (0, 2)
    assert tuple(pixels[42, 56]) == COLORS["green"]  # lower half of the triangle in cell (2, 3)
    assert tuple(pixels[56, 8]) == (255, 255, 255)  # empty cell (3, 0)


def test_all_words_in_vocabulary():
    for word in (*SHAPES, *COLORS, "yes", "no", "1", "4", "left", "right"):
        assert word in SHAPES_VOCABULARY
