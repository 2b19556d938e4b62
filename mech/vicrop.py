"""ViCrop (Zhang et al., ICLR 2025: "MLLMs Know Where to Look"), relative-attention variant.

For each sample:

1. A(q): the last prompt token's attention to the image tokens at ``layer`` (default:
   layer 14 of 32, ViCrop's LLaVA-1.5 choice, at the same relative depth), mean over
   heads, captured under SDPA through `mech.CaptureImageAttention`; A(g) the same under
   the generic prompt "Write a general description of the image.". The relative map is
   ``A(q) / A(g)`` on the ``sqrt(n) x sqrt(n)`` patch grid. (mech renormalises A over
   the image tokens; that multiplies the ratio by one constant per sample, which changes
   neither the window sums' argmax nor the choice of scale below.)
2. The crop box (`crop_box`), ViCrop's adaptive search: for each ratio r in
   ``RATIOS = (1, 1.2, 1.4, 1.6, 1.8, 2)`` a square crop of side ``crop_size * r``
   original pixels (``crop_size``: the vision tower's input resolution, 336 for LLaVA-1.5),
   i.e. a window of ``min(int(side / cell), grid)`` patches per axis; the window with
   the largest attention sum (sliding over every position); a scale whose window covers
   the whole grid is skipped (at r = 1 ViCrop then keeps the full image). The scale kept
   is the one whose best window stands out most: ``(best sum - mean of the four
   neighbouring windows' sums) / window area``. The box is the square of that side
   centred on the window, shifted to lie inside the image (and clipped if larger).
3. Generation with both images: the prompt's ``<image>`` becomes
   ``<image>\\n<image>`` (the original, then the crop).

Grid -> original pixels: LLaVA-1.5's processor resizes the shortest edge to the tower's
resolution and centre-crops a square, so the patch grid covers the central
``min(W, H)`` square of the original image (`grid_region`); a processor without centre
crop stretches the whole image onto the grid. Boxes are in original-image pixels
``(x1, y1, x2, y2)``, integers, and may reach outside the central square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .interventions import CaptureImageAttention, apply
from .templates import IMAGE_TOKEN
from .decoding import Decoder

GENERAL_PROMPT = "Write a general description of the image."
RATIOS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
VICROP_LAYER, VICROP_LAYERS = 14, 32  # LLaVA-1.5-7B in ViCrop


def default_attention_layer(n_layers: int) -> int:
    """Layer 14 of 32 (0-based) at the same relative depth."""
    return min(n_layers - 1, max(0, round(VICROP_LAYER / VICROP_LAYERS * n_layers)))


def grid_region(image_processor, width: int, height: int) -> tuple[float, float, float, float]:
    """``(x0, y0, w, h)``: the part of a ``width x height`` original image that the patch
    grid covers, in original pixels."""
    size = image_processor.size
    crop = getattr(image_processor, "crop_size", None)
    shortest = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
    if getattr(image_processor, "do_center_crop", False) and shortest and crop:
        scale = shortest / min(width, height)
        w, h = min(width, crop["width"] / scale), min(height, crop["height"] / scale)
        return (width - w) / 2, (height - h) / 2, w, h
    return 0.0, 0.0, float(width), float(height)


def window_sums(att: np.ndarray, bw: int, bh: int) -> np.ndarray:
    """Sum of ``att [gh, gw]`` over every ``bh x bw`` window: ``[gh - bh + 1, gw - bw + 1]``."""
    c = np.pad(np.asarray(att, dtype=float).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[bh:, bw:] - c[:-bh, bw:] - c[bh:, :-bw] + c[:-bh, :-bw]


def crop_box(att: np.ndarray, image_size: tuple[int, int], crop_size: float,
             region: tuple[float, float, float, float] | None = None, ratios=RATIOS) -> tuple[tuple[int, ...], dict]:
    """ViCrop's adaptive box for attention map ``att [gh, gw]`` on an image of
    ``image_size = (W, H)`` whose grid covers ``region`` (default: the whole image).

    Returns ``((x1, y1, x2, y2), info)``; ``info``: ``ratio`` (0 for the full image),
    ``window`` ``(x, y, bw, bh)`` in patches, ``sharpness``.
    """
    att = np.asarray(att, dtype=float)
    gh, gw = att.shape
    W, H = image_size
    x0, y0, rw, rh = region or (0.0, 0.0, float(W), float(H))
    cell_w, cell_h = rw / gw, rh / gh
    best = None
    for ratio in ratios:
        side = crop_size * ratio
        bw, bh = min(int(side / cell_w), gw), min(int(side / cell_h), gh)
        if bw < 1 or bh < 1:
            bw, bh = max(bw, 1), max(bh, 1)
        if gw - bw < 1 and gh - bh < 1:
            if ratio == ratios[0]:
                return (0, 0, W, H), {"ratio": 0.0, "window": (0, 0, gw, gh), "sharpness": 0.0}
            continue
        sums = window_sums(att, bw, bh)
        y, x = np.unravel_index(np.argmax(sums), sums.shape)  # first maximum in row-major order
        around = [sums[y, x + d] for d in (-1, 1) if 0 <= x + d < sums.shape[1]]
        around += [sums[y + d, x] for d in (-1, 1) if 0 <= y + d < sums.shape[0]]
        sharpness = (sums[y, x] - np.mean(around)) / (bw * bh)
        if best is None or sharpness > best[0]:
            best = (sharpness, ratio, side, int(x), int(y), bw, bh)
    sharpness, ratio, side, x, y, bw, bh = best
    cx, cy = x0 + (x + bw / 2) * cell_w, y0 + (y + bh / 2) * cell_h
    half = side / 2
    cx, cy = min(max(cx, half), W - half), min(max(cy, half), H - half)
    box = (max(0, round(cx - half)), max(0, round(cy - half)), min(W, round(cx + half)), min(H, round(cy + half)))
    return box, {"ratio": float(ratio), "window": (x, y, bw, bh), "sharpness": float(sharpness)}


def two_image_prompt(prompt: str) -> str:
    """The prompt with its ``<image>`` replaced by the original and the crop."""
    return prompt.replace(IMAGE_TOKEN, f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}", 1)


@dataclass(frozen=True)
class ViCrop(Decoder):
    """ViCrop (rel-att) as a runner `Decoder`: ``mech.run(model, samples, decoder=mech.ViCrop())``.

    ``layer``: attention layer (default `default_attention_layer`); ``crop_size``: crop
    side at ratio 1 in original pixels (default: the vision tower's input resolution, as
    ViCrop); ``general_prompt``: ViCrop's generic question. LLaVA-1.5 only.

    Per-sample extras: ``box`` ``[x1, y1, x2, y2]`` (original pixels), ``crop_ratio``
    (0: the full image was kept), ``crop_fraction`` (box area / image area).
    """

    layer: int | None = None
    crop_size: int | None = None
    general_prompt: str = GENERAL_PROMPT

    @staticmethod
    def applies_to(model) -> bool:
        """ViCrop's crop box reads A(i) as one square patch grid per image: LLaVA-1.5 only."""
        return model.family.name == "llava-1.5"

    def attention_layer(self, model) -> int:
        layer = default_attention_layer(model.n_layers) if self.layer is None else self.layer
        return model.check_layer(layer, "ViCrop attention layer")

    def validate(self, model) -> None:
        if not self.applies_to(model):
            raise ValueError(f"ViCrop needs LLaVA-1.5's fixed square patch grid; {model.family.name} is not "
                             "supported")
        self.attention_layer(model)
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"crop_size={self.crop_size}: give a positive number of pixels")

    def boxes(self, model, images, prompts) -> tuple[list[tuple[int, ...]], list[dict]]:
        """Crop boxes for ``images`` asked ``prompts`` (full prompts, one ``<image>`` each)."""
        layer = self.attention_layer(model)
        n = len(images)
        batch = model.prepare(prompts=list(prompts) + [model.prompt(self.general_prompt)] * n,
                              images=list(images) * 2)
        with torch.no_grad(), model.trace(batch):
            captured = apply(model, batch, CaptureImageAttention(layers=[layer]))
        att = captured[layer].float().cpu()
        counts = batch.image_counts.tolist()
        crop_size = self.crop_size or model.config.vision_config.image_size
        boxes, infos = [], []
        for b, image in enumerate(images):
            k = counts[b]
            grid = math.isqrt(k)
            if grid * grid != k:
                raise ValueError(f"{k} image tokens do not form a square grid")
            relative = att[b, :k] / att[n + b, :k].clamp_min(torch.finfo(torch.float32).tiny)
            region = grid_region(model.processor.image_processor, *image.size)
            box, info = crop_box(relative.view(grid, grid).numpy(), image.size, crop_size, region)
            boxes.append(box)
            infos.append(info)
        return boxes, infos

    def generate(self, model, batch, max_new_tokens, samples):
        images = [s.image.convert("RGB") for s in samples]
        boxes, infos = self.boxes(model, images, batch.prompts)
        pairs = [im for image, box in zip(images, boxes) for im in (image, image.crop(box))]
        both = model.prepare(prompts=[two_image_prompt(p) for p in batch.prompts], images=pairs)
        with torch.no_grad(), model.generate(both, max_new_tokens=max_new_tokens) as tracer:
            ids = tracer.result.save()
        extras = [{"box": list(box), "crop_ratio": info["ratio"],
                   "crop_fraction": (box[2] - box[0]) * (box[3] - box[1]) / (image.size[0] * image.size[1])}
                  for box, info, image in zip(boxes, infos, images)]
        return ids[:, both.seq_len:], extras
