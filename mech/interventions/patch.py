"""Activation patching: `Patch`, one named activation replaced by another input's.

The source is either a second batch run in the same forward (`mech.join` puts both in
one batch: no second pass, no second request under ``remote=``), or what `mech.Cache`
recorded in an earlier run::

    both = mech.join(model, corrupted, clean)          # target rows, then source rows
    with model.trace(both):
        mech.apply(model, both, mech.Patch("resid_pre", layers=[3], positions="image", source=clean))
        logits = model.logits.save()                   # rows of `corrupted` patched from `clean`

Row ``i`` of the target takes row ``i`` of the source, slot ``j`` of its positions slot
``j`` of the source's (the j-th image token, the last token, the j-th question token):
each pair must hold as many positions. Source rows are never edited, so patching several
layers takes every value from the unpatched source run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import positions as pos
from ..batch import Batch
from ..hooks import hook_point
from ..join import Part, part_rows
from .base import Intervention, Step
from .cache import check_image_embeds, layer_list


def _rows(value: torch.Tensor, rows: range, new: torch.Tensor) -> torch.Tensor:
    """``value`` with its ``rows`` replaced by ``new`` (a new tensor)."""
    return torch.cat([value[:rows.start], new, value[rows.stop:]])


@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """Replace hook point ``name`` (`mech.hooks`) at ``positions`` (`mech.positions`) of
    ``layers`` (None: every layer; ``image_embeds`` has none) by the source's.

    ``source``: a `mech.Batch` joined into the traced batch (``mech.join(model, target,
    source)``), or the result of a `mech.Cache` of ``name`` at those layers from an earlier
    run (its rows are the target's, its positions counted alike). ``target``: the joined
    part to patch (default: the first part that is not the source; with a cache, the whole
    batch or, in a join, the first part).

    Composes with every intervention: its edit runs where the others' do, in the order
    given to `mech.apply`, and a `mech.Cache` at the same site records the patched value.
    Acts on the prefill, like every edit of image-token states.
    """

    name: str = "resid_pre"
    layers: Sequence[int] | None = None
    positions: Any = "image"
    source: Any = None
    target: Any = None

    def validate(self, model) -> None:
        point = hook_point(self.name, writable=True)
        if point.per_layer:
            layer_list(model, self.layers, "Patch")
        elif self.layers is not None:
            raise ValueError(f"Patch({self.name!r}): image_embeds have no layer; leave layers=None")
        pos.check(self.positions)
        check_image_embeds((self.name,), self.positions, "Patch")
        if isinstance(self.source, dict):
            if self.name not in self.source or "valid" not in self.source:
                raise ValueError(f"Patch(source=...) holds no {self.name!r}: give the result of "
                                 f"mech.Cache({self.name!r}, ...) or a joined Batch")
        elif not isinstance(self.source, (Batch, Part)):
            raise ValueError(f"Patch(source={type(self.source).__name__}): give a Batch joined into the traced one "
                             "(mech.join(model, target, source)) or a mech.Cache result")

    def __getstate__(self):
        # A remote trace ships the intervention: a joined part travels as its name (the
        # traced batch holds its rows), not as a second copy of its inputs.
        return {k: Part(v.extras["part"]) if isinstance(v, Batch) and "part" in v.extras else v
                for k, v in self.__dict__.items()}

    def rows(self, batch: Batch) -> tuple[range, range | None]:
        """``(target rows, source rows)`` in ``batch``; source rows are None for a cache."""
        parts = [range(s, s + n) for s, n, _ in batch.extras.get("parts", ())]
        source = None
        if isinstance(self.source, (Batch, Part)):
            source = part_rows(batch, self.source)
            if source is None:
                raise ValueError("Patch(source=batch): that batch is not part of the traced one; trace "
                                 "mech.join(model, target, source) so both run in one forward")
        if self.target is not None:
            target = part_rows(batch, self.target)
            if target is None:
                raise ValueError("Patch(target=batch): that batch is not part of the traced one (mech.join)")
        else:
            others = [r for r in parts if r != source]
            target = others[0] if others else range(batch.size)
        return target, source

    def steps(self, model, batch, result):
        point = hook_point(self.name)
        target, source = self.rows(batch)
        index, valid = pos.select(batch, self.positions)
        t_index = index[target.start:target.stop]
        if source is not None:
            if len(source) != len(target):
                raise ValueError(f"Patch: the source has {len(source)} rows and the target {len(target)}; "
                                 "row i of the target takes row i of the source")
            s_index, s_valid = index[source.start:source.stop], valid[source.start:source.stop]
            layers = None
        else:
            s_valid = self.source["valid"]
            layers = self.source.get("layers")
            if s_valid.shape[0] != len(target):
                raise ValueError(f"Patch: the cache holds {s_valid.shape[0]} rows and the target {len(target)}")
        t_valid = valid[target.start:target.stop]
        if t_valid.shape != s_valid.shape or not torch.equal(t_valid.cpu(), s_valid.cpu()):
            counts = t_valid.sum(-1).tolist(), s_valid.sum(-1).tolist()
            raise ValueError(f"Patch(positions={self.positions!r}): target rows hold {counts[0]} positions and "
                             f"the source's {counts[1]}; each pair must hold as many (the j-th replaces the j-th)")
        wanted = layer_list(model, self.layers, "Patch") if point.per_layer else [-1]
        if layers is not None and point.per_layer:
            missing = sorted(set(wanted) - set(layers))
            if missing:
                raise ValueError(f"Patch: the cache has no {self.name!r} at layers {missing}; it holds "
                                 f"{layers}")

        def patch(value, state):
            if source is not None:
                new = pos.gather(value[source.start:source.stop], s_index)
            else:
                cached = self.source[self.name]
                if point.per_layer:
                    cached = cached[:, layers.index(state["layer"])]
                new = cached.flatten(2).to(value.device)  # attn.z: heads back into one dim
            return _rows(value, target, pos.scatter(value[target.start:target.stop], t_index, new))
        return [Step(layer, point.site, patch) for layer in wanted]
