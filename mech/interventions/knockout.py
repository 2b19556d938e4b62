"""Attention knockout: block attention from chosen queries to the image tokens (`Knockout`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .base import Intervention, Step
from .masks import additive_causal_mask

QUERIES = ("last", "text")


@dataclass(frozen=True)
class Knockout(Intervention):
    """Block attention from query positions to the image tokens at ``layers``.

    ``query``: ``"last"`` (the last prompt token) or ``"text"`` (every text token after
    the image). Acts on the prefill; the attention mask of those layers is edited, so
    it works under SDPA and eager alike.
    """

    layers: Sequence[int]
    query: str = "last"

    def validate(self, model) -> None:
        if self.query not in QUERIES:
            raise ValueError(f"query={self.query!r}; use one of {QUERIES}")
        if not list(self.layers):
            raise ValueError("Knockout needs at least one layer")
        for layer in self.layers:
            model.check_layer(layer)

    def steps(self, model, batch, result):
        queries = batch.last_token if self.query == "last" else batch.text_after_image
        block = queries[:, None, :, None] & batch.image_mask[:, None, None, :]

        def knock(call, _):
            args, kwargs = call
            mask = kwargs.get("attention_mask")
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if mask is None:  # SDPA without padding passes no mask: make the causal one
                mask = additive_causal_mask(batch, hidden.dtype, hidden.device)
            blocked = block.to(mask.device)
            if mask.dtype == torch.bool:
                mask = mask & ~blocked
            else:
                mask = mask.masked_fill(blocked, torch.finfo(mask.dtype).min)
            return args, {**kwargs, "attention_mask": mask}

        return [Step(layer, "attention_inputs", knock) for layer in sorted(set(self.layers))]


# -- image-attention capture ---------------------------------------------------
