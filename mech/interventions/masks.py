"""The mask arithmetic the editing primitives share: per-image-token multipliers on hidden
states, and additive attention biases toward image keys (prefill and decode steps alike)."""

from __future__ import annotations

from typing import Callable

import torch

from ..batch import Batch, scatter_image


def key_weights(batch: Batch, weights, total: int, length: int, device) -> torch.Tensor:
    """``[batch, length]`` multiplicative weight per key of a mask over the last ``length``
    of ``total`` positions (a sliding-window layer's cache keeps only its window):
    ``weights`` on the image tokens, 1 elsewhere (generated tokens too)."""
    if not isinstance(weights, torch.Tensor):
        weights = torch.full(batch.image_index.shape, float(weights))
    weights = weights.float().to(device)
    weights = torch.where(batch.image_valid.to(device), weights, torch.ones_like(weights))
    per_position = scatter_image(weights, batch.image_index.to(device), batch.seq_len, 1.0)
    per_position = torch.nn.functional.pad(per_position, (0, max(total - batch.seq_len, 0)), value=1.0)
    return per_position[:, total - length:total]


def suppress_keys(batch: Batch, weights) -> Callable:
    """A step on ``attention_inputs``: multiply the attention every query gives each key by
    its weight before normalisation, i.e. add ``log(weight)`` to the attention logits
    (weight 0 removes the key). Works on the bool (SDPA), additive (eager) or absent mask
    of the prefill and of decode steps alike, and on sliding-window layers, whose mask
    covers only the last keys."""
    def suppress(call, state):
        args, kwargs = call
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q_len = hidden.shape[1]
        cache = kwargs.get("past_key_values")
        # positions so far, this forward's included (the cache is updated inside attention)
        total = q_len if cache is None else cache.get_seq_length(state["layer"]) + q_len
        if mask is None:  # SDPA without padding passes no mask: make the one it implies
            if q_len == batch.seq_len:  # the prefill
                mask = additive_causal_mask(batch, hidden.dtype, hidden.device)
            else:  # new tokens: they see every key in the cache and themselves (causally)
                allowed = torch.ones(q_len, total, dtype=torch.bool, device=hidden.device).tril(total - q_len)
                mask = torch.zeros(hidden.shape[0], 1, q_len, total, dtype=hidden.dtype,
                                   device=hidden.device).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(hidden.dtype).min)
        low = torch.finfo(mask.dtype).min
        key = key_weights(batch, weights, total, mask.shape[-1], mask.device)
        bias = torch.where(key > 0, key.clamp_min(torch.finfo(torch.float32).tiny).log(),
                           torch.full_like(key, float("-inf")))
        mask = (mask.float() + bias[:, None, None, :]).clamp_min(low).to(mask.dtype)
        return args, {**kwargs, "attention_mask": mask}
    return suppress


def image_multiplier(batch: Batch, weights, like: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, 1]`` multiplier: ``weights`` on image tokens, 1 elsewhere."""
    if not isinstance(weights, torch.Tensor):
        weights = torch.full(batch.image_index.shape, float(weights))
    weights = weights.to(device=like.device, dtype=like.dtype)
    weights = torch.where(batch.image_valid.to(like.device), weights, torch.ones_like(weights))
    return scatter_image(weights, batch.image_index.to(like.device), like.shape[1], 1.0)[..., None]


# -- editing image-token hidden states -----------------------------------------



def additive_causal_mask(batch: Batch, dtype: torch.dtype, device) -> torch.Tensor:
    """``[batch, 1, seq, seq]`` additive mask (0 allowed, dtype-min blocked): causal + padding."""
    seq = batch.seq_len
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    keys = batch.inputs["attention_mask"].bool().to(device)
    allowed = causal[None, None] & keys[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)

