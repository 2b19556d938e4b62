"""LLaVA-1.5 and LLaVA-1.6/NeXT (``llava-hf``): the reference families."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Family


@dataclass(frozen=True)
class Llava15(Family):
    def image_tokens(self, model, height=None, width=None) -> int:
        """Fixed: every image is resized to the tower's square input."""
        vision = model.config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        return n if model.config.vision_feature_select_strategy == "default" else n + 1  # "full": CLS kept


@dataclass(frozen=True)
class LlavaNext(Family):
    def image_views(self, model, size, inputs, index, row_images=1):
        """A ``"base"`` view (the whole image squeezed to the tower's input) and the anyres
        ``"tiles"`` view: the image resized into the best grid resolution and padded
        centred (the processor's arithmetic), the model's unpadding of the feature grid
        (its arithmetic), a newline token after each row."""
        return anyres_views(self, model, size)

    def tiles_shape(self, model, rows: int, cols: int) -> tuple[int, int]:
        """The token grid of the unpadded tiles view (OneVision may shrink it)."""
        return rows, cols


def anyres_views(family: LlavaNext, model, size) -> list:
    """LLaVA-NeXT's and OneVision's views of one image (`LlavaNext.image_views`)."""
    import math

    from transformers.image_processing_utils import select_best_resolution

    from ..grid import View, resized_box

    ip, vision = model.processor.image_processor, model.config.vision_config
    h, w = size
    side, crop = vision.image_size // vision.patch_size, vision.image_size
    bh, bw = select_best_resolution((h, w), ip.image_grid_pinpoints)
    # resized into the best resolution (get_patch_output_size), padded centred (_pad_for_patching)
    nh, nw = (min(math.ceil(h * bw / w), bh), bw) if bw / w < bh / h else (bh, min(math.ceil(w * bh / h), bw))
    top, left = (bh - nh) // 2, (bw - nw) // 2
    rows, cols = bh // crop * side, bw // crop * side  # the padded canvas's feature grid
    r0, c0 = 0, 0
    if w / h > cols / rows:  # unpad_image
        r0 = (rows - int(round(h * (cols / w), 7))) // 2
    else:
        c0 = (cols - int(round(w * (rows / h), 7))) // 2
    unit = crop / side  # canvas pixels per feature
    to_image = lambda t, l, hh, ww: resized_box((t - top, l - left), (nh / h, nw / w), (hh, ww))  # noqa: E731
    box = to_image(r0 * unit, c0 * unit, (rows - 2 * r0) * unit, (cols - 2 * c0) * unit)
    tiles = tuple(to_image(i * crop, j * crop, crop, crop) for i in range(bh // crop) for j in range(bw // crop))
    shape = family.tiles_shape(model, rows - 2 * r0, cols - 2 * c0)
    return [View("base", side, side, (0.0, 0.0, float(w), float(h))),
            View("tiles", *shape, box, newline=True, tiles=tiles, first_tile=1)]


LLAVA_15 = Llava15("llava-1.5", "LlavaForConditionalGeneration", "llava",
                   hub_ids=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"))
LLAVA_NEXT = LlavaNext("llava-next", "LlavaNextForConditionalGeneration", "llava_next",
                       hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"))
