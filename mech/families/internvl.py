"""InternVL (``-hf`` checkpoints): ``<IMG_CONTEXT>`` tokens per tile between ``<img>`` and
``</img>``, on a Qwen2 (or Llama) decoder with 1-D rotary and a causal mask."""

from .base import Family

INTERNVL = Family("internvl", "InternVLForConditionalGeneration", "internvl", placeholder="<IMG_CONTEXT>",
                  hub_ids=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
                  processor_class="InternVLProcessor")
