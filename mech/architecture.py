"""The layers of the ``mech`` package, bottom first (ARCHITECTURE.md): a module may import
from its own layer or those below, never above. Data only: `tools.architecture` checks the
import graph against it, and `mech.codebase` digests the layers that make records."""

from __future__ import annotations

# A module's layer is that of the longest entry its dotted name equals or starts with; the
# package __init__ files re-export their layer's public names.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rules", ("mech.architecture", "mech.checks", "mech.hub", "mech.stats", "mech.metrics", "mech.generation",
               "mech.prompts", "mech.datasets", "mech.store", "mech.parallel", "mech.progress", "mech.codebase",
               "mech.writes")),
    ("model", ("mech.families", "mech.templates", "mech.batch", "mech.grid", "mech.hooks", "mech.positions",
               "mech.join", "mech.zoo.processor", "mech.zoo.random_llava", "mech.zoo.random_vlm", "mech.zoo.tiny",
               "mech.model", "mech.model_files", "mech.remote")),
    ("primitives", ("mech.attention", "mech.contrastive", "mech.interventions")),
    ("decoders", ("mech.decoding", "mech.dola", "mech.vicrop", "mech.decode_together", "mech.shared_rows",
                  "mech.zero_sweep")),
    ("runner", ("mech.results", "mech.runner")),
    ("analysis", ("mech.comparisons", "mech.discovery", "mech.plots", "mech.lmms")),
    # the package's public face, and the commands written against it as a user would
    ("package", ("mech", "mech.demo", "mech.zoo")),
)


def up_to(layer: str) -> tuple[str, ...]:
    """The entries of every layer from the bottom through ``layer``."""
    names = [name for name, _ in LAYERS]
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; layers are {names}")
    return tuple(entry for _, entries in LAYERS[:names.index(layer) + 1] for entry in entries)
