"""Qwen2-VL and Qwen2.5-VL: dynamic resolution and multimodal rotary positions (M-RoPE).

Image tokens (``<|image_pad|>``, one per 2 x 2 merged patch) sit between
``<|vision_start|>`` and ``<|vision_end|>``. The model computes its 3-D positions (time,
height, width of each image token) from ``input_ids``, ``image_grid_thw`` and
``mm_token_type_ids``, and only when ``position_ids`` is None: 1-D ids would silently give
image tokens text positions, so none are passed. Its rotary module folds the three
sections into ordinary ``cos``/``sin``, so attention recomputed from q/k (rotate-half)
holds as for Llama.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Family


@dataclass(frozen=True)
class Qwen2VL(Family):
    placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>"
    own_positions: bool = True  # the model's 3-D positions (see the module docstring)
    text_keys: tuple[str, ...] = ("input_ids", "attention_mask", "image_grid_thw", "mm_token_type_ids")
    shared_rows: str | None = ("its image rows' rotary positions depend on each image's grid (M-RoPE), so the "
                               "zeroed rows of one image size are not those of another")

    def last_position(self, model, batch):
        """From the model's own 3-D positions (``get_rope_index``, index arithmetic only):
        text after the image has equal time, height and width positions."""
        inputs = batch.inputs
        positions, _ = model.nn._module.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
        return positions[0, :, -1:]

    def image_views(self, model, size, inputs, index, row_images=1):
        """One view: the whole image, resized to the processor's ``image_grid_thw`` patches
        (no crop, no padding), one token per ``merge x merge`` patches, row-major."""
        from ..grid import View

        _, rows, cols = (int(x) for x in inputs["image_grid_thw"][index])
        merge = model.config.vision_config.spatial_merge_size
        return [View("image", rows // merge, cols // merge, (0.0, 0.0, float(size[1]), float(size[0])))]


QWEN2_VL = Qwen2VL("qwen2-vl", "Qwen2VLForConditionalGeneration", "qwen2_vl",
                   hub_ids=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
                   processor_class="Qwen2VLProcessor")
QWEN2_5_VL = Qwen2VL("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl",
                     hub_ids=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
                     processor_class="Qwen2_5_VLProcessor")
