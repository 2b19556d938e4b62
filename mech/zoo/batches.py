"""Training batches for the tiny model: multi-turn LLaVA-1.5 sequences built from token
ids directly (no per-sample processor call), with loss on answers only.

A sequence is ``USER: <image>*N q1 ASSISTANT: a1 </s> USER: q2 ASSISTANT: a2 </s> ...``,
exactly the tokens ``processor("USER: <image>\\n{q1} ASSISTANT:")`` gives for the first turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..datasets.shapes import COLORS, IMAGE_SIZE, QUESTION_TYPES, SHAPES, Scene, questions, render, scene_in_split, split_rng

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass(frozen=True)
class Stage:
    """Scene distribution of one curriculum stage (see ``shapes.random_scene``)."""
    name: str
    n_min: int = 1
    n_max: int = 4
    grid: int = 4
    r_min: int = 5
    r_max: int = 7
    jitter: int = 1

    def scene_kw(self) -> dict:
        return dict(n_min=self.n_min, n_max=self.n_max, grid=self.grid,
                    r_min=self.r_min, r_max=self.r_max, jitter=self.jitter)


def pixel_values(images) -> torch.Tensor:
    """PIL 64x64 RGB images -> CLIP-normalised ``(B, 3, 64, 64)`` float32, as the
    processor computes it (its resize and crop are no-ops at 64x64)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) * np.float32(1 / 255)
    arr = (arr - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


class Batcher:
    """Draws training batches from the train split's seed stream.

    ``batch(stage, size, turns)`` -> ``(input_ids (B, T), labels (B, T), pixel_values
    (B, 3, 64, 64), patch_labels (B, P, 2))``; right padded (causal attention never looks
    at the padding, so no attention mask is needed), labels ``-100`` except answer words
    and their ``</s>``. ``patch_labels[..., 0]`` is the shape (0 empty, 1 + index in
    ``SHAPES``) and ``[..., 1]`` the colour (0 empty, 1 + index in ``COLORS``) of the
    object in the grid cell under each of the P image patches (row-major).
    """

    def __init__(self, tokenizer, seed: int, n_image_tokens: int, max_exist: int | None = None,
                 types: tuple[str, ...] = QUESTION_TYPES):
        self.tok = tokenizer
        self.max_exist = max_exist
        self.types = tuple(types)
        self.rng = split_rng("train", seed)
        self.image = [tokenizer.convert_tokens_to_ids("<image>")] * n_image_tokens
        side = int(round(n_image_tokens ** 0.5))
        self.patch_centers = (np.arange(side) + 0.5) * (IMAGE_SIZE / side)  # pixels
        self.user = self.ids("USER:")
        self.newline = self.ids("\n")  # [] unless the tokenizer keeps newlines (`build_tokenizer`)
        self.assistant = self.ids("ASSISTANT:")
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    @lru_cache(maxsize=None)
    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def turns(self, scene: Scene, k: int) -> list[tuple[str, str]]:
        """Up to ``k`` distinct questions, types drawn evenly among those the scene allows."""
        pool = {t: questions(scene, t, self.rng) for t in self.types}
        out = []
        while len(out) < k:
            types = [t for t in self.types if pool[t]]
            if not types:
                break
            qtype = types[self.rng.integers(len(types))]
            qs = pool[qtype]
            out.append(qs.pop(int(self.rng.integers(len(qs)))))
            if qtype == "exist" and self.max_exist is not None:
                n_exist = sum(a in ("yes", "no") for _, a in out)
                if n_exist >= self.max_exist:
                    pool["exist"] = []
        return out

    def patch_labels(self, scene: Scene) -> np.ndarray:
        """``(P, 2)`` shape/colour ids of the object in the cell under each patch."""
        cell = (self.patch_centers // (IMAGE_SIZE / scene.grid)).astype(int)
        grid = np.zeros((scene.grid, scene.grid, 2), dtype=np.int64)
        for o in scene.objects:
            grid[o.row, o.col] = SHAPES.index(o.shape) + 1, list(COLORS).index(o.color) + 1
        return grid[cell[:, None], cell[None, :]].reshape(-1, 2)

    def batch(self, stage: Stage, size: int, turns: int):
        images, seqs, labs, patches = [], [], [], []
        for _ in range(size):
            scene = scene_in_split(self.rng, "train", **stage.scene_kw())
            images.append(render(scene))
            patches.append(self.patch_labels(scene))
            head = list(self.user) + self.image + list(self.newline)
            seq, lab = head, [-100] * len(head)
            for j, (q, a) in enumerate(self.turns(scene, turns)):
                prompt = (self.user if j else []) + self.ids(q) + self.assistant
                answer = self.ids(a) + [self.eos]
                seq += prompt + answer
                lab += [-100] * len(prompt) + answer
            seqs.append(seq)
            labs.append(lab)
        width = max(map(len, seqs))
        ids = torch.full((size, width), self.pad, dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labs)):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(l)] = torch.tensor(l)
        return ids, labels, pixel_values(images), torch.from_numpy(np.stack(patches))
