"""Scaling (and zeroing) the image tokens at one decoder layer: `ScaleImage`, `ZeroImage`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..checks import number
from .base import Intervention, Step, check_location
from .masks import image_multiplier, suppress_keys


@dataclass(frozen=True)
class ScaleImage(Intervention):
    """Scale the image tokens at decoder ``layer``, where ``at`` says (`LOCATIONS`):

    * ``"input"``: multiply the hidden states entering the layer (the residual stream);
      the layer's input RMSNorm divides a per-token scale back out (RMSNorm(w h) =
      RMSNorm(h) for w > 0), so only later layers see it;
    * ``"normed"``: multiply the input-RMSNorm output, so the layer's own queries, keys
      and values see it (the residual stream is untouched);
    * ``"attention"``: multiply the attention every query gives each image token, before
      normalisation, at this layer and every later one (``log w`` added to the logits;
      ``w = 0`` removes the tokens), for the prompt and every generated token;
    * ``"output"``: multiply the hidden states leaving the layer.

    ``weights``: a scalar, or one weight per image token ``[batch, n_image]`` in the
    batch's padded image layout (a soft mask). Padded slots are ignored.
    """

    layer: int
    weights: Any = 0.0
    at: str = "input"

    def validate(self, model) -> None:
        model.check_layer(self.layer)
        check_location(self.at)
        if self.at == "attention" and isinstance(self.weights, torch.Tensor) and bool((self.weights < 0).any()):
            raise ValueError("weights at='attention' multiply attention: they must be >= 0")
        if self.at == "attention" and not isinstance(self.weights, torch.Tensor):
            number("weights", self.weights, low=0, meaning="at='attention' it multiplies attention")
        if isinstance(self.weights, torch.Tensor):
            if self.weights.dim() not in (0, 2):
                raise ValueError(f"weights must be a scalar or [batch, n_image], got shape "
                                 f"{tuple(self.weights.shape)}")
            if not bool(torch.isfinite(self.weights).all()):
                raise ValueError("weights hold NaN or infinite values: every weight must be a finite number")
        else:
            number("weights", self.weights, meaning="the factor on image-token hidden states")

    def steps(self, model, batch, result):
        if self.at == "attention":
            return self.attention_steps(model, batch)

        def scale(hidden, _):
            return hidden * image_multiplier(batch, self.weights, hidden)
        return [Step(self.layer, self.at, scale)]

    @property
    def acts_on_generation(self) -> bool:
        return self.at == "attention"

    def attention_steps(self, model, batch):
        suppress = suppress_keys(batch, self.weights)
        return [Step(layer, "attention_inputs", suppress) for layer in range(self.layer, model.n_layers)]

    def decode_steps(self, model, batch, result, step):
        return self.attention_steps(model, batch) if self.at == "attention" else []


@dataclass(frozen=True)
class ZeroImage(ScaleImage):
    """Zero the image-token hidden states at the input (or output) of decoder ``layer``.

    The paper's layer-wise zero-masking: during generate it acts on the prefill, the only
    forward that holds image tokens.
    """

    layer: int
    weights: Any = field(default=0.0, init=False)
    at: str = "input"


