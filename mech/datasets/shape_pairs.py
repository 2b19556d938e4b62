"""Clean/corrupted pairs of shapes scenes for activation patching, and where an object is.

`pairs` draws shapes test scenes with a colour or shape question and changes exactly the
asked object's colour (``"what color is the circle?"``) or shape (``"what shape is red?"``):
the corrupted scene answers differently and differs from the clean one nowhere else (same
objects, cells, radii and jitter), so whatever patching the clean run's activations into
the corrupted one restores comes from the asked object. `asked_object` names the object a
question is about (the answer's object for spatial questions), `object_box` where it is
drawn and `covered_tokens` the image tokens whose patches it overlaps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from .sample import Sample
from .shapes import COLORS, IMAGE_SIZE, SHAPES, SPLITS, Scene, questions, render, scene_in_split, split_rng

CHANGED = {"color": "color", "shape": "shape"}  # question type -> the attribute a pair changes
_PAIR_STREAM = 0x9A125  # a seed stream of its own: pairs never replay shapes()' own draws


@dataclass(frozen=True)
class Pair:
    """One clean/corrupted pair: ``object`` is the asked object's index in both scenes,
    ``changed`` the attribute that differs (``"color"`` or ``"shape"``)."""

    clean: Sample
    corrupted: Sample
    object: int
    changed: str


def asked_object(sample: Sample) -> int | None:
    """Index in ``sample.extras["scene"]`` of the object the question is about (colour and
    shape questions: the asked object; spatial and relcolor: the answer's object), or None
    (count, existence)."""
    scene, question = sample.extras.get("scene"), sample.question
    if scene is None:
        return None
    objs = scene.objects
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        hits = [i for i, o in enumerate(objs) if o.shape == m.group(1)]
    elif m := re.fullmatch(r"what shape is (\w+)\?", question):
        hits = [i for i, o in enumerate(objs) if o.color == m.group(1)]
    elif m := re.fullmatch(r"what (?:color )?is (left|right) of the (\w+)\?", question):
        ref = [o for o in objs if o.shape == m.group(2)]
        if len(ref) != 1:
            return None
        hits = [i for i, o in enumerate(objs) if o is not ref[0]
                and (o.col < ref[0].col if m.group(1) == "left" else o.col > ref[0].col)]
    else:
        return None
    return hits[0] if len(hits) == 1 else None


def object_box(scene: Scene, index: int) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` pixels of object ``index``'s drawn extent in the 64 px
    image (half-open: the pixels ``left <= x < right``)."""
    obj = scene.objects[index]
    dx, dy = (scene.jitter or ((0, 0),) * len(scene.objects))[index]
    cell = IMAGE_SIZE / scene.grid
    cx, cy = (obj.col + 0.5) * cell + dx, (obj.row + 0.5) * cell + dy
    return (cx - obj.radius, cy - obj.radius, cx + obj.radius, cy + obj.radius)


def covered_tokens(token_boxes, box):
    """``[n]`` bool: which image tokens' boxes (``[n, 4]`` image pixels, a batch row's
    `mech.grid.ImageGrid.box`; NaN for newline tokens) overlap ``box``."""
    import torch

    boxes = torch.as_tensor(token_boxes, dtype=torch.float64)
    left, top, right, bottom = box
    return (boxes[:, 0] < right) & (boxes[:, 2] > left) & (boxes[:, 1] < bottom) & (boxes[:, 3] > top)


def pairs(split: str = "test", n: int = 100, seed: int = 0, types: tuple[str, ...] = ("color", "shape")) -> list[Pair]:
    """``n`` clean/corrupted pairs of ``split``, question types cycling through ``types``
    (``"color"``, ``"shape"``), deterministic and prefix-stable in ``(split, n, seed)``.

    The new colour (shape) is drawn among those no object of the scene has, so the
    corrupted answer is new to the scene too. Both samples are dataset ``"shapes"``;
    ``extras`` hold the scene, ``object`` and ``pair``."""
    unknown = [t for t in types if t not in CHANGED]
    if unknown or not types:
        raise ValueError(f"types={types!r}: pairs change the asked object's colour or shape; use 'color', 'shape'")
    split_rng(split, seed)  # checks the split
    rng = np.random.default_rng([seed, SPLITS.index(split), _PAIR_STREAM])
    out = []
    for i in range(n):
        qtype = types[i % len(types)]
        while True:
            scene = scene_in_split(rng, split)
            asked = questions(scene, qtype, rng)
            if asked:
                question, answer = asked[int(rng.integers(len(asked)))]
                clean = Sample("", "shapes", None, question, (answer,) * 10, extras={"scene": scene})
                index = asked_object(clean)
                taken = {getattr(o, qtype) for o in scene.objects}
                free = [v for v in (COLORS if qtype == "color" else SHAPES) if v not in taken]
                if index is not None and free:
                    break
        new = free[int(rng.integers(len(free)))]
        objects = list(scene.objects)
        objects[index] = replace(objects[index], **{qtype: new})
        corrupted_scene = replace(scene, objects=tuple(objects))
        samples = []
        for kind, s, a in (("clean", scene, answer), ("corrupted", corrupted_scene, new)):
            samples.append(Sample(f"shapes-pairs-{split}-{seed}-{i:05d}-{kind}", "shapes", render(s), question,
                                  (a,) * 10, extras={"question_type": qtype, "scene": s, "object": index, "pair": i,
                                                     "n_objects": len(s.objects)}, question_type=qtype))
        out.append(Pair(samples[0], samples[1], index, qtype))
    return out
