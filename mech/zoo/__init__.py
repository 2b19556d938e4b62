"""The embedded tiny LLaVA and random-weight models with offline processors.

``random_vlm(family, ...)`` -> ``(module, processor)``: the exact Hugging Face class of any
supported family (`mech.families`) with seeded random weights and a processor built
offline, for tests, benchmarks and trying mech without a download:
``mech.load(module, processor=processor)``, or ``mech.load("random:<family>")``.
``random_llava`` is the LLaVA-1.5/NeXT one with more size options (benchmarks).
"""

from .processor import LLAVA_CHAT_TEMPLATE, build_processor, build_tokenizer
from .random_llava import random_images, random_llava
from .random_vlm import FAMILY_NAMES, random_vlm

__all__ = ["random_vlm", "random_llava", "random_images", "build_processor", "build_tokenizer",
           "LLAVA_CHAT_TEMPLATE", "FAMILY_NAMES"]
