"""Masked image rows are the same for every sample: compute them once per batch.

Once the image tokens are zeroed at the input of decoder layer L, nothing about the image
is left in them: from layer L on, the state of image token ``i`` depends only on ``i``,
on the fixed text before the image (``"USER:"`` in LLaVA-1.5, ``"[INST]"`` in
LLaVA-NeXT/Mistral) and on the other zeroed image tokens. So in a zero-masking variant,
the image rows of layers ``>= L`` (576 of a ~650-token LLaVA-1.5 prompt) are one
computation shared by the whole batch, not one per sample.

`SharedImageRows` computes them once, on a single unpadded row (the *template*), and
then runs each sample's layers ``>= L`` on the rows after the image only, with the
template's keys and values standing in for the image in the cache.

Equality: the results are the naive run's up to floating-point summation order. A
sample's naive image rows depend, in their last bits, on how much left padding its batch
gives it (the attention kernel sums over differently aligned key blocks), so no
computation shared across differently padded rows can be bit-identical to them; the
generated ids are equal and step logits agree to about 1e-6 of their scale (the tests
bound the difference by the naive run's own batch-layout jitter). `zero_mask_sweep`
uses this only when asked (``share_image_rows=True``); its default is bitwise exact.
"""

from __future__ import annotations

import torch

from .batch import Batch

__all__ = ["SharedImageRows", "shared_layout"]


class SharedLayoutError(ValueError):
    """The batch's rows do not share the text before a contiguous image block."""


def shared_layout(batch: Batch) -> dict:
    """Where each row's padding, fixed prefix and image block lie.

    Returns ``{"pad": [batch] long, "prefix": p, "counts": [batch] long, "start": s0}``:
    row ``b`` is ``pad[b]`` pad tokens, the ``p`` prefix tokens shared by all rows, its
    ``counts[b]`` image tokens, then its text; ``s0`` is the first position after the
    image in the row where it ends earliest (rows from ``s0`` on are computed per sample).
    Raises `SharedLayoutError` when rows do not look like that.
    """
    mask = batch.inputs["attention_mask"]
    ids = batch.inputs["input_ids"]
    pad = (mask == 0).sum(1)
    counts = batch.image_counts
    first = batch.image_index[:, 0]
    if (counts == 0).any():
        raise SharedLayoutError("a row has no image tokens")
    for b in range(batch.size):
        n = int(counts[b])
        if not torch.equal(mask[b, int(pad[b]):], torch.ones_like(mask[b, int(pad[b]):])):
            raise SharedLayoutError("rows are not left-padded")
        if not torch.equal(batch.image_index[b, :n], first[b] + torch.arange(n, device=first.device)):
            raise SharedLayoutError("a row's image tokens are not one contiguous block")
    prefixes = {tuple(ids[b, int(pad[b]):int(first[b])].tolist()) for b in range(batch.size)}
    if len(prefixes) != 1:
        raise SharedLayoutError("rows differ in the text before the image")
    return {"pad": pad, "prefix": int(first[0] - pad[0]), "counts": counts,
            "start": int((first + counts).min())}


class SharedImageRows:
    """The prefill of layers ``>= layer`` of a zero-masking variant, image rows shared.

    Args:
        decoder: the language model's decoder layers (``ModuleList``).
        rotary: the language model's rotary embedding module.
        layout: `shared_layout` of the batch.
        layer: L, the layer whose input has its image tokens zeroed.
        entering: ``[batch, seq, hidden]`` clean hidden state entering layer L.
        clean_kv: ``{layer: (keys, values)}`` of the clean prefill, each
            ``[batch, kv_heads, seq, head_dim]``, for every layer ``>= L``.
    """

    def __init__(self, decoder, rotary, layout: dict, layer: int, entering: torch.Tensor, clean_kv: dict):
        self.decoder, self.layout, self.layer = decoder, layout, layer
        self.template = self._template(rotary, entering, clean_kv)
        self.prefix_kv = {j: self._prefix(j, *clean_kv[j]) for j in range(layer, len(decoder))}

    def _template(self, rotary, entering, clean_kv) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values ``[1, kv_heads, n_image, head_dim]`` of the zeroed image rows,
        per layer ``>= L``, computed once on one unpadded row."""
        from transformers import DynamicCache

        p, n = self.layout["prefix"], int(self.layout["counts"].max())
        b = int(self.layout["counts"].argmax())
        pad = int(self.layout["pad"][b])
        hidden = entering.new_zeros(1, n, entering.shape[-1])
        positions = torch.arange(p, p + n, device=hidden.device)[None]
        embeddings = rotary(hidden, position_ids=positions)
        visible = torch.arange(p + n, device=hidden.device)[None, :] <= positions[0][:, None]
        cache, kv = DynamicCache(), {}
        for j in range(self.layer, len(self.decoder)):
            keys, values = clean_kv[j]
            cache.update(keys[b:b + 1, :, pad:pad + p], values[b:b + 1, :, pad:pad + p], j)
            hidden = self.decoder[j](hidden, attention_mask=visible[None, None], position_ids=positions,
                                     past_key_values=cache, use_cache=True, position_embeddings=embeddings)
            kv[j] = (cache.layers[j].keys[:, :, p:], cache.layers[j].values[:, :, p:])
        return kv

    def _prefix(self, j: int, keys: torch.Tensor, values: torch.Tensor):
        """Keys and values ``[batch, kv_heads, s0, head_dim]`` of every row before ``s0``:
        the clean run's for padding and prefix, the template's for the image."""
        s0, p = self.layout["start"], self.layout["prefix"]
        keys, values = keys[:, :, :s0].clone(), values[:, :, :s0].clone()
        tk, tv = self.template[j]
        for b, pad in enumerate(self.layout["pad"].tolist()):
            width = s0 - pad - p
            keys[b, :, pad + p:] = tk[0, :, :width]
            values[b, :, pad + p:] = tv[0, :, :width]
        return keys, values

    def stand_in(self, j: int, masked: torch.Tensor | None = None) -> torch.nn.Module:
        """A module for decoder layer ``j >= L`` whose first call runs the rows from ``s0``
        on (``masked``: layer L's input, image tokens zeroed) and whose later calls
        (decoding) run the real layer."""
        return _RowsLayer(self, j, masked)


class _RowsLayer(torch.nn.Module):
    def __init__(self, shared: SharedImageRows, index: int, masked):
        super().__init__()
        self._shared, self._real = [shared], [shared.decoder[index]]
        self.index, self.masked, self.prefill = index, masked, True

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                position_embeddings=None, **kwargs):
        real = self._real[0]
        if not self.prefill:
            return real(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, position_embeddings=position_embeddings, **kwargs)
        self.prefill = False
        s0 = self._shared[0].layout["start"]
        rows = (self.masked if self.masked is not None else hidden_states)[:, s0:]
        seq = hidden_states.shape[1]
        if attention_mask is None:  # no padding: SDPA's is_causal would align the rows wrongly
            attention_mask = torch.ones(seq, seq, dtype=torch.bool, device=rows.device).tril()[None, None]
        past_key_values.update(*self._shared[0].prefix_kv[self.index], self.index)
        cos, sin = position_embeddings
        out = real(rows, attention_mask=attention_mask[:, :, s0:], position_ids=position_ids[:, s0:],
                   past_key_values=past_key_values, position_embeddings=(cos[:, s0:], sin[:, s0:]), **kwargs)
        return torch.cat([hidden_states[:, :s0], out], 1)
