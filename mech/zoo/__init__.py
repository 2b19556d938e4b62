"""The embedded tiny LLaVA and random-weight models with offline processors.

``random_llava(family, ...)`` -> ``(module, processor)``: exact Hugging Face classes with
seeded random weights and a processor built offline (``build_processor``), for tests,
benchmarks and trying mech without a download: ``mech.load(module, processor=processor)``.
"""

from .processor import LLAVA_CHAT_TEMPLATE, build_processor, build_tokenizer
from .random_llava import random_images, random_llava

__all__ = ["random_llava", "random_images", "build_processor", "build_tokenizer", "LLAVA_CHAT_TEMPLATE"]
