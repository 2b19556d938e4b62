"""Synthetic *shapes* VQA: 64x64 images of 1-4 coloured shapes, one-word answers.

A scene is a few objects (shape, colour, grid cell, radius) on a white canvas split into
a ``grid x grid`` lattice; each object sits in its own cell. Questions come in five types
(``QUESTION_TYPES``) and are only asked when their answer is unique by construction:

* ``color``   "what color is the circle?"        only if exactly one circle
* ``shape``   "what shape is red?"               only if exactly one red object
* ``count``   "how many shapes are there?"       answer "1".."4"
* ``exist``   "is there a blue square?"          yes/no, half and half
* ``spatial`` "what is left of the triangle?"    exactly one triangle and exactly one
  other object in a strictly smaller (left) / larger (right) grid column; answer its shape

Splits are disjoint by content: every scene is hashed and only kept by the split whose
bucket it falls in (80% train, 10% validation, 10% test), and each split draws from its
own seed stream, so no test image ever occurs in training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .sample import Sample

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 30),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
COUNT_WORDS = ("1", "2", "3", "4")
RELATIONS = ("left", "right")
QUESTION_TYPES = ("color", "shape", "count", "exist", "spatial")
# Types a model can be trained and tested on besides the default five (``types=``):
# "relcolor" asks the colour of the one object left/right of a shape, "what color is left
# of the circle?": a second hop after locating the reference object.
EXTRA_TYPES = ("relcolor",)
SPLITS = ("train", "validation", "test")
_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}

_QUESTION_WORDS = "what color is the shape how many shapes are there a of".split()
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys([*_QUESTION_WORDS, *SHAPES, *COLORS, *COUNT_WORDS, *RELATIONS, "yes", "no"])
)
"""Every word a question or answer uses (punctuation is the tokenizer's business)."""


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    row: int
    col: int
    radius: int  # half the extent in pixels


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    grid: int = 4
    jitter: tuple[tuple[int, int], ...] = ()  # per-object (dx, dy) pixel offsets

    def key(self) -> bytes:
        return repr((self.grid, self.objects, self.jitter)).encode()

    def bucket(self) -> int:
        return hashlib.blake2b(self.key(), digest_size=4).digest()[0] % 10


def render(scene: Scene) -> Image.Image:
    """Draws ``scene`` as a 64x64 RGB PIL image (white background)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIZE / scene.grid
    jitter = scene.jitter or ((0, 0),) * len(scene.objects)
    for obj, (dx, dy) in zip(scene.objects, jitter):
        cx, cy = (obj.col + 0.5) * cell + dx, (obj.row + 0.5) * cell + dy
        r, fill = obj.radius, COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=fill)
        elif obj.shape == "square":
            s = round(r * 0.9)  # same visual mass as the circle
            draw.rectangle([cx - s, cy - s, cx + s - 1, cy + s - 1], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r - 1), (cx - r, cy + r - 1)], fill=fill)
    return image


def random_scene(rng: np.random.Generator, n_min: int = 1, n_max: int = 4, grid: int = 4,
                 r_min: int = 5, r_max: int = 7, jitter: int = 1) -> Scene:
    """A scene of ``n_min..n_max`` objects in distinct cells, radius ``r_min..r_max`` px."""
    n = int(rng.integers(n_min, n_max + 1))
    # sorted so that one image has one scene key: object order must not move it across splits
    cells = np.sort(rng.choice(grid * grid, size=n, replace=False))
    objs = tuple(
        Obj(SHAPES[rng.integers(3)], list(COLORS)[rng.integers(len(COLORS))],
            int(c) // grid, int(c) % grid, int(rng.integers(r_min, r_max + 1)))
        for c in cells
    )
    offs = tuple((int(a), int(b)) for a, b in rng.integers(-jitter, jitter + 1, size=(n, 2)))
    return Scene(objs, grid, offs)


def questions(scene: Scene, qtype: str, rng: np.random.Generator | None = None) -> list[tuple[str, str]]:
    """All (question, answer) pairs of ``qtype`` that ``scene`` answers unambiguously.

    For ``exist`` it returns one "yes" and one "no" question when both exist (picking
    with ``rng`` among candidates; negatives share a colour or shape with the scene when
    possible, so that "no" needs the image and not just word frequencies).
    """
    objs = scene.objects
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    if qtype == "color":
        return [(f"what color is the {o.shape}?", o.color) for o in objs if shapes.count(o.shape) == 1]
    if qtype == "shape":
        return [(f"what shape is {o.color}?", o.shape) for o in objs if colors.count(o.color) == 1]
    if qtype == "count":
        return [("how many shapes are there?", COUNT_WORDS[len(objs) - 1])]
    if qtype == "exist":
        rng = rng or np.random.default_rng(0)
        present = sorted({(o.color, o.shape) for o in objs})
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        near = [(c, s) for c, s in absent if c in colors or s in shapes]
        pos = present[rng.integers(len(present))]
        pool = near if near and rng.random() < 0.75 else absent
        neg = pool[rng.integers(len(pool))]
        return [(f"is there a {pos[0]} {pos[1]}?", "yes"), (f"is there a {neg[0]} {neg[1]}?", "no")]
    if qtype in ("spatial", "relcolor"):
        out = []
        for ref in objs:
            if shapes.count(ref.shape) != 1:
                continue
            for rel in RELATIONS:
                hits = [o for o in objs if o is not ref and (o.col < ref.col if rel == "left" else o.col > ref.col)]
                if len(hits) == 1:
                    out.append((f"what is {rel} of the {ref.shape}?", hits[0].shape) if qtype == "spatial"
                               else (f"what color is {rel} of the {ref.shape}?", hits[0].color))
        return out
    raise ValueError(f"unknown question type {qtype!r}")


def split_rng(split: str, seed: int) -> np.random.Generator:
    """The seed stream of ``split``: disjoint streams per split for one ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng([seed, _SPLIT_STREAM[split], 0x5A11E5])


def scene_in_split(rng: np.random.Generator, split: str, **kw) -> Scene:
    """Draws scenes until one hashes into ``split``'s buckets (content-disjoint splits)."""
    while True:
        scene = random_scene(rng, **kw)
        if scene.bucket() in _BUCKETS[split]:
            return scene


CLUTTER = {
    "dots": "2-4 small dots (radius 2 px) of the palette's colours in empty grid cells",
    "speckle": "4% of the pixels set to random palette colours",
    "crowd": "5-7 objects per scene (training scenes hold 1-4); no count questions",
}
_CLUTTER_STREAM = {"dots": 1, "speckle": 2, "crowd": 3}


def add_clutter(image: Image.Image, scene: Scene, kind: str, rng: np.random.Generator) -> Image.Image:
    """A copy of ``image`` with ``kind`` distractors (see `CLUTTER`); objects stay untouched
    by the dots (they only go into empty cells), not by speckle."""
    image = image.copy()
    palette = list(COLORS.values())
    if kind == "dots":
        cell = IMAGE_SIZE / scene.grid
        taken = {(o.row, o.col) for o in scene.objects}
        empty = [(r, c) for r in range(scene.grid) for c in range(scene.grid) if (r, c) not in taken]
        draw = ImageDraw.Draw(image)
        for k in rng.choice(len(empty), size=min(len(empty), int(rng.integers(2, 5))), replace=False):
            r, c = empty[int(k)]
            cx = (c + 0.5) * cell + int(rng.integers(-3, 4))
            cy = (r + 0.5) * cell + int(rng.integers(-3, 4))
            draw.ellipse([cx - 2, cy - 2, cx + 1, cy + 1], fill=palette[int(rng.integers(len(palette)))])
    elif kind == "speckle":
        pixels = np.asarray(image).copy()
        hit = rng.random(pixels.shape[:2]) < 0.04
        colours = np.array(palette, dtype=np.uint8)[rng.integers(len(palette), size=int(hit.sum()))]
        pixels[hit] = colours
        image = Image.fromarray(pixels)
    elif kind != "crowd":
        raise ValueError(f"clutter {kind!r} is not known; use one of {', '.join(CLUTTER)}")
    return image


def is_shapes_set(name: str) -> bool:
    """Whether dataset ``name`` is one of the generated shapes sets (``shapes``, ``shapes-<clutter>``)."""
    return name == "shapes" or name.startswith("shapes-")


def shapes(split: str = "test", n: int = 300, seed: int = 0, clutter: str | None = None,
           types: tuple[str, ...] = QUESTION_TYPES) -> list[Sample]:
    """``n`` shapes-VQA samples of ``split``, question types cycling through
    ``QUESTION_TYPES`` (equal shares), deterministic in ``(split, n, seed)`` prefix-wise:
    ``shapes(s, 10)`` is the first 10 of ``shapes(s, 100)``. ``extras`` holds
    ``n_objects`` and the ``scene`` (objects with their grid cells; with the tiny model's
    8-px patches, cell (row, col) covers image tokens ``16 * row + 2 * col + {0, 1, 8, 9}``).

    ``types``: the question types to cycle through (`QUESTION_TYPES` and `EXTRA_TYPES`).

    ``clutter`` (`CLUTTER`): out-of-distribution test scenes with distractors, dataset
    ``"shapes-<kind>"``. ``"dots"`` and ``"speckle"`` are the clean set's scenes and
    questions with distractors drawn over them (a paired comparison); ``"crowd"`` draws
    scenes of 5-7 objects from a stream of its own.
    """
    if clutter is not None and clutter not in CLUTTER:
        raise ValueError(f"clutter {clutter!r} is not known; use one of {', '.join(CLUTTER)}")
    rng = split_rng(split, seed)
    if clutter == "crowd":
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], 0x5A11E5, _CLUTTER_STREAM["crowd"]])
    unknown = [t for t in types if t not in QUESTION_TYPES + EXTRA_TYPES]
    if unknown:
        raise ValueError(f"question types {unknown} are not known; use {QUESTION_TYPES + EXTRA_TYPES}")
    # another selection of types is another set of samples: its ids say which
    stem = "" if tuple(types) == QUESTION_TYPES else "+".join(types) + "-"
    types = [t for t in types if t != "count"] if clutter == "crowd" else list(types)
    dataset = "shapes" if clutter is None else f"shapes-{clutter}"
    out = []
    for i in range(n):
        qtype = types[i % len(types)]
        while True:
            if clutter == "crowd":
                scene = scene_in_split(rng, split, n_min=5, n_max=7)
            else:
                scene = scene_in_split(rng, split, n_min=2 if qtype in ("spatial", "relcolor") else 1)
            qa = questions(scene, qtype, rng)
            if qa:
                break
        if qtype == "exist":
            question, answer = qa[int(rng.integers(2))]
        else:
            question, answer = qa[int(rng.integers(len(qa)))]
        image = render(scene)
        if clutter is not None:
            image = add_clutter(image, scene, clutter, np.random.default_rng(
                [seed, _SPLIT_STREAM[split], i, _CLUTTER_STREAM[clutter]]))
        out.append(Sample(
            id=f"{dataset}-{split}-{seed}-{stem}{i:05d}", dataset=dataset, image=image,
            question=question, answers=(answer,) * 10,
            extras={"question_type": qtype, "n_objects": len(scene.objects), "scene": scene,
                    **({"clutter": clutter} if clutter else {})},
            question_type=qtype,
        ))
    return out
