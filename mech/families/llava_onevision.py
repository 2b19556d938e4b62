"""LLaVA-OneVision: LLaVA-NeXT's layout (anyres tiles, ``<image>``) on a Qwen2 decoder;
1-D rotary and a causal mask, so every LLaVA path holds unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .llava import LlavaNext


@dataclass(frozen=True)
class LlavaOnevision(LlavaNext):
    def image_views(self, model, size, inputs, index, row_images=1):
        """As LLaVA-NeXT's for a prompt's only image; an image among several is padded to a
        square (centred) and becomes one view and one newline token."""
        if row_images == 1:
            return super().image_views(model, size, inputs, index)
        from ..grid import View

        h, w = size
        side, square = model.config.vision_config.image_size // model.config.vision_config.patch_size, max(h, w)
        top, left = (square - h) // 2, (square - w) // 2
        box = (-float(left), -float(top), float(square - left), float(square - top))
        return [View("image", side, side, box), View("newline", 1, 0, box, newline=True, image=0)]

    def tiles_shape(self, model, rows, cols):
        """Shrunk (bilinear) when above ``anyres_max_N``'s N tiles' worth of tokens."""
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        most = int(model.config.vision_aspect_ratio.strip("anyres_max_"))  # the model's pack_image_features
        ratio = math.sqrt(rows * cols / (most * side ** 2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)


LLAVA_ONEVISION = LlavaOnevision("llava-onevision", "LlavaOnevisionForConditionalGeneration", "llava_onevision",
                                 hub_ids=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                                          "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
                                 processor_class="LlavaOnevisionProcessor")
