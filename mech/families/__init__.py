"""Family adapters: what one architecture family needs beyond mech's shared code paths.

Every primitive, the runner and the studies are written once, against `Family`; each
family module declares what differs (hub classes, where the decoder layers are, the image
placeholder, position ids, the query/key the attention scores use, the modules of the named
hook points of `mech.hooks`, which fast sweep applies) in a few lines. ``FAMILIES`` maps each Hugging Face class name to its adapter.

========================  ==============================================  ==========================
family                    classes                                         adapter
========================  ==============================================  ==========================
llava-1.5, llava-next     ``LlavaForConditionalGeneration``, ``LlavaNext…``  `mech.families.llava`
llava-onevision           ``LlavaOnevisionForConditionalGeneration``        `mech.families.llava_onevision`
qwen2-vl, qwen2.5-vl      ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VL…``  `mech.families.qwen2_vl`
gemma3                    ``Gemma3ForConditionalGeneration``                `mech.families.gemma3`
internvl                  ``InternVLForConditionalGeneration``              `mech.families.internvl`
========================  ==============================================  ==========================
"""

from __future__ import annotations

import torch

from .base import Family
from .gemma3 import GEMMA3
from .internvl import INTERNVL
from .llava import LLAVA_15, LLAVA_NEXT
from .llava_onevision import LLAVA_ONEVISION
from .qwen2_vl import QWEN2_5_VL, QWEN2_VL

__all__ = ["Family", "FAMILIES", "BY_NAME", "MODEL_TYPES", "family_of", "supported"]

_ALL = (LLAVA_15, LLAVA_NEXT, LLAVA_ONEVISION, QWEN2_VL, QWEN2_5_VL, GEMMA3, INTERNVL)
FAMILIES: dict[str, Family] = {f.architecture: f for f in _ALL}
BY_NAME: dict[str, Family] = {f.name: f for f in _ALL}
# config.json's model_type of each supported class
MODEL_TYPES: dict[str, str] = {f.model_type: f.architecture for f in _ALL}


def supported() -> str:
    return ", ".join(f"{a} ({f.name})" for a, f in FAMILIES.items())


def family_of(module: torch.nn.Module) -> Family:
    """The adapter of ``module``'s class; ValueError listing the supported ones otherwise."""
    name = type(module).__name__
    if name not in FAMILIES:
        raise ValueError(f"unsupported architecture {name}; mech supports {supported()}")
    return FAMILIES[name]
