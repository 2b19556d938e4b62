"""The runner's argument checks: every argument of `mech.run` / `mech.sweep` and every sample
is refused with one clear sentence before any model work."""

from __future__ import annotations

import torch

from .. import metrics
from ..datasets.sample import check_samples
from ..decoding import Decoder
from ..interventions import Intervention


def as_list(intervention) -> list:
    if intervention is None:
        return []
    if isinstance(intervention, Intervention):
        return [intervention]
    if isinstance(intervention, (list, tuple)):
        for iv in intervention:
            if not isinstance(iv, Intervention):
                raise TypeError(f"not an intervention: {iv!r}")
        return list(intervention)
    raise TypeError(f"intervention must be None, a mech intervention or a list of them, "
                    f"not {type(intervention).__name__}")


def check_args(model, samples, interventions, batch_size, max_new_tokens, chunk_size, protocol) -> None:
    metrics.check_protocol(protocol)
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value is None and name == "max_new_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    if chunk_size is not None and chunk_size % batch_size:
        # Batches never straddle chunks, so any other size would quietly shrink batches.
        raise ValueError(f"chunk_size={chunk_size} must be a multiple of batch_size={batch_size}")
    if not samples:
        raise ValueError("no samples to run: the sample list is empty")
    check_samples(samples)
    for sample in samples:
        if sample.dataset not in metrics.SCORERS:
            raise ValueError(f"sample {sample.id}: no scorer for dataset {sample.dataset!r}; known: "
                             f"{', '.join(sorted(metrics.SCORERS))} (add one with mech.datasets.register)")
    if model.processor is None:
        raise ValueError("the runner needs a model loaded with its processor")
    for iv in interventions:
        iv.validate(model)
        for f in getattr(iv, "__dataclass_fields__", {}).values():
            value = getattr(iv, f.name)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                raise ValueError(f"{type(iv).__name__}.{f.name} is a tensor of shape "
                                 f"{tuple(value.shape)}, tied to one batch; the runner builds its "
                                 f"own batches, so give a scalar")


def check_decoder(model, decoder, interventions, remote) -> None:
    if decoder is None:
        return
    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder must be a mech Decoder (e.g. mech.DoLa()), not {type(decoder).__name__}")
    if interventions:
        raise ValueError("a decoder runs its own generation: give either interventions or decoder=, not both")
    if remote:
        raise ValueError("decoders run locally: remote= is not supported with decoder=")
    decoder.validate(model)
