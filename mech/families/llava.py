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


LLAVA_15 = Llava15("llava-1.5", "LlavaForConditionalGeneration", "llava",
                   hub_ids=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"))
LLAVA_NEXT = Family("llava-next", "LlavaNextForConditionalGeneration", "llava_next",
                    hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"))
