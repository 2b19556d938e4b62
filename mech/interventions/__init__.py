"""The primitives that act inside one nnsight trace or generate, one per module.

* `base`: hook sites, `Step`, `apply` (steps of any interventions merged into model order,
  on the prefill and, in a generate, on every generation step), the `Intervention` base;
* `masks`: the mask arithmetic the editing primitives share;
* `scale`: `ScaleImage`, `ZeroImage` (layer-wise zero-masking);
* `knockout`: `Knockout`;
* `capture`: `CaptureImageAttention`;
* `contrastive_mask`: `ContrastiveMask`, `default_review_layer`;
* `cache`: `Cache` (named activations at chosen positions, `mech.hooks`);
* `patch`: `Patch` (activation patching from a joined batch or a cache);
* `lens`: `LogitLens`.
"""

from .base import (LOCATIONS, SITES, Intervention, Step, apply, check_location, generation_eos, generation_steps,
                   run_steps)
from .cache import Cache
from .capture import CaptureImageAttention, capture_steps, check_method
from .contrastive_mask import DEFAULT_MASK_AT, MASK_AT, REVIEW_DEPTH, REVIEW_FROM_END, ContrastiveMask, default_review_layer
from .knockout import QUERIES, Knockout
from .lens import LogitLens
from .masks import additive_causal_mask, image_multiplier, key_weights, suppress_keys
from .patch import Patch
from .scale import ScaleImage, ZeroImage

# An intervention's type enters every chunk fingerprint as ``module.Class``: the public
# module, not the file it is defined in, so that moving code never orphans stored chunks.
for _cls in (Intervention, ScaleImage, ZeroImage, Knockout, CaptureImageAttention, ContrastiveMask, Step, Cache, Patch,
             LogitLens):
    _cls.__module__ = __name__
del _cls

__all__ = ["apply", "generation_steps", "generation_eos", "run_steps", "Intervention", "Step", "SITES", "LOCATIONS", "check_location",
           "ScaleImage", "ZeroImage", "Knockout", "QUERIES", "CaptureImageAttention", "capture_steps",
           "check_method", "ContrastiveMask", "default_review_layer", "MASK_AT", "DEFAULT_MASK_AT",
           "REVIEW_DEPTH", "REVIEW_FROM_END", "image_multiplier", "suppress_keys", "key_weights",
           "additive_causal_mask", "Cache", "Patch", "LogitLens"]
