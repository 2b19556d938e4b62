"""LLaVA-OneVision: LLaVA-NeXT's layout (anyres tiles, ``<image>``) on a Qwen2 decoder;
1-D rotary and a causal mask, so every LLaVA path holds unchanged."""

from .base import Family

LLAVA_ONEVISION = Family("llava-onevision", "LlavaOnevisionForConditionalGeneration", "llava_onevision",
                         hub_ids=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                                  "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
                         processor_class="LlavaOnevisionProcessor")
