"""InternVL (``-hf`` checkpoints): ``<IMG_CONTEXT>`` tokens per tile between ``<img>`` and
``</img>``, on a Qwen2 (or Llama) decoder with 1-D rotary and a causal mask."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Family


@dataclass(frozen=True)
class InternVL(Family):
    def image_views(self, model, size, inputs, index, row_images=1):
        """The image resized (aspect not kept) onto the processor's best grid of square
        tiles (``get_optimal_tiled_canvas``) and cut into them, plus a thumbnail of the
        whole image when there is more than one tile; each tile's patches pixel-shuffled
        2 x 2 into tokens, row-major within the tile, tile after tile."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        from ..grid import View

        ip, config = model.processor.image_processor, model.config
        h, w = size
        image, patch = (config.vision_config.image_size, config.vision_config.patch_size)
        image, patch = (image[0] if isinstance(image, (list, tuple)) else image,
                        patch[0] if isinstance(patch, (list, tuple)) else patch)
        side = int(image // patch * config.downsample_ratio)
        whole = (0.0, 0.0, float(w), float(h))
        cols, rows = 1, 1
        if ip.crop_to_patches and ip.max_patches > 1:
            cols, rows = get_optimal_tiled_canvas((h, w), (ip.size.height, ip.size.width), ip.min_patches,
                                                  ip.max_patches)
        if cols * rows == 1:
            return [View("image", side, side, whole)]
        tiles = tuple((j * w / cols, i * h / rows, (j + 1) * w / cols, (i + 1) * h / rows)
                      for i in range(rows) for j in range(cols))
        return [View("tiles", rows * side, cols * side, whole, tile_rows=side, tile_cols=side, tiles=tiles),
                View("thumbnail", side, side, whole, first_tile=rows * cols)]


INTERNVL = InternVL("internvl", "InternVLForConditionalGeneration", "internvl", placeholder="<IMG_CONTEXT>",
                    hub_ids=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
                    processor_class="InternVLProcessor")
