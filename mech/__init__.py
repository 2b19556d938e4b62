"""mech: where does vision meet language in a vision-language model (`mech.families`)?

The public API: `load` a model, `Model.prepare` a batch, and inside
``model.trace(batch)`` / ``model.generate(batch)`` `apply` interventions —
`ZeroImage`, `ScaleImage`, `Knockout`, `CaptureImageAttention`, `ContrastiveMask`, and
the analysis core: `Cache`, `Patch`, `LogitLens` at the named hook points of `mech.hooks`
and the positions of `mech.positions` (`join` puts two inputs in one forward for
patching); `run` them over samples (batched generate, scoring, timing, resumable chunk
files), or run a baseline `Decoder` instead of ``generate``: `DoLa`, `ViCrop`.
"""

__version__ = "0.1.0"

from . import attention, contrastive, datasets, generation, metrics, parallel, prompts, remote, templates
from . import comparisons, hooks, positions
from .batch import Batch
from .interventions import (Cache, CaptureImageAttention, ContrastiveMask, Intervention, Knockout, LogitLens,
                            Patch, ScaleImage, ZeroImage, apply, default_review_layer)
from .join import join
from .model import Model, load
from .runner import ContextWarning, Decoder, Record, Results, run, slug, sweep
from .dola import DoLa
from .vicrop import ViCrop
from .store import ChunkWarning
from .writes import WriteError
from .shared_rows import ImageRowTemplates
from .zero_sweep import zero_mask_sweep

# Intervention code runs inside traces; on an NDIF server mech is not installed, so
# its source ships with each request (see mech.remote.ship_by_value).
remote.ship_by_value(__name__)

__all__ = ["load", "Model", "Batch", "apply", "Intervention", "ZeroImage", "ScaleImage",
           "Knockout", "CaptureImageAttention", "ContrastiveMask", "default_review_layer",
           "attention", "contrastive", "datasets", "run", "sweep", "slug", "Record",
           "Results", "ChunkWarning", "ContextWarning", "WriteError", "remote", "__version__", "Decoder", "DoLa", "ViCrop",
           "zero_mask_sweep", "ImageRowTemplates", "generation", "metrics", "prompts", "templates", "parallel", "comparisons",
           "Cache", "Patch", "LogitLens", "join", "hooks", "positions"]
