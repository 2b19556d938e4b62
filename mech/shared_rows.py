"""Masked image rows are the same for every sample: compute them once for the whole run.

Once the image tokens are zeroed at the input of decoder layer L, nothing about the image
is left in them: from layer L on, the state of image token ``i`` depends only on ``i``,
on the fixed text before the image (``"USER:"`` in LLaVA-1.5, ``"[INST]"`` in
LLaVA-NeXT/Mistral) and on the other zeroed image tokens. So in a zero-masking variant,
the image rows of layers ``>= L`` (576 of a ~650-token LLaVA-1.5 prompt) are one
computation shared by every sample of the run, not one per sample.

`ImageRowTemplates` computes them once per (layer L, image-token count, text before the
image), on a canonical unpadded row (the *template*): the prefix alone through the
language model, then the zeroed image rows on top of its keys and values. The template
depends on nothing else, so batch order, restarts and shards do not change it.
`SharedImageRows` then runs each sample's layers ``>= L`` on the rows after the image
only, with the template's keys and values standing in for the image in the cache.

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

__all__ = ["ImageRowTemplates", "SharedImageRows", "shared_layout"]

DEFAULT_MAX_BYTES = 4 * 2**30


class SharedLayoutError(ValueError):
    """The batch's rows do not share the text before a contiguous image block."""


def shared_layout(batch: Batch) -> dict:
    """Where each row's padding, fixed prefix and image block lie.

    Returns ``{"pad": [batch] long, "prefix_ids": tuple, "counts": [batch] long, "start":
    s0}``: row ``b`` is ``pad[b]`` pad tokens, the prefix tokens ``prefix_ids`` shared by
    all rows, its ``counts[b]`` image tokens, then its text;
    ``s0`` is the first position after the image in the row where it ends earliest (rows
    from ``s0`` on are computed per sample). Raises `SharedLayoutError` when rows do not
    look like that.
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
    return {"pad": pad, "prefix_ids": prefixes.pop(), "counts": counts, "start": int((first + counts).min())}


class ImageRowTemplates:
    """The zeroed image rows' keys and values, computed once per run and reused.

    ``templates.get(L, n, prefix_ids)`` is ``{j: (keys, values)}`` for every layer
    ``j >= L``, each ``[1, kv_heads, n, head_dim]``: the image rows of the unpadded prompt
    ``prefix_ids`` + ``n`` image tokens, its image tokens zeroed at the input of layer L.
    It is computed from that key alone (the prefix run on its own, then the zeroed rows
    on top of the prefix's keys and values), so it is the same whichever batch asks first.
    Templates are kept up to ``max_bytes`` (keys and values of all of them together);
    past that they are computed each time and not kept: the same numbers, more work.
    `stats` says how much is kept and reused. Call `get` outside any layer swap: it runs
    the language model's real layers.

    Args:
        model: a `mech.Model` (local weights).
        max_bytes: the most template memory to keep (default 4 GiB; 0 keeps none).
    """

    def __init__(self, model, max_bytes: int = DEFAULT_MAX_BYTES):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes!r}: give a whole number of bytes >= 0 (0 keeps none)")
        if model.family.shared_rows:
            raise ValueError(f"image-row templates do not apply to {model.family.name}: {model.family.shared_rows}")
        self.language = model.family.language_model(model.nn._module)
        self.max_bytes = max_bytes
        from .decode_together import DecodeBuffer

        self.decode_buffer = DecodeBuffer()  # the run's, reused batch after batch
        self._kept: dict[tuple, dict] = {}
        self._prefixes: dict[tuple, dict] = {}
        self.bytes = self.computed = self.reused = self.not_kept = 0

    def get(self, layer: int, count: int, prefix_ids: tuple) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        key = (layer, count, tuple(prefix_ids))
        if key in self._kept:
            self.reused += 1
            return self._kept[key]
        template = self._template(*key)
        self.computed += 1
        size = sum(k.nbytes + v.nbytes for k, v in template.values())
        if self.bytes + size <= self.max_bytes:
            self._kept[key], self.bytes = template, self.bytes + size
        else:
            self.not_kept += 1
        return template

    def stats(self) -> dict:
        """``{"kept", "bytes", "max_bytes", "computed", "reused", "not_kept",
        "decode_buffer_bytes"}`` so far (``computed`` counts template computations,
        ``reused`` the times one was kept; the decode buffer is `mech.decode_together`'s)."""
        return {"kept": len(self._kept), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "computed": self.computed, "reused": self.reused, "not_kept": self.not_kept,
                "decode_buffer_bytes": self.decode_buffer.bytes}

    def _prefix_kv(self, prefix_ids: tuple) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values ``[1, kv_heads, p, head_dim]`` per layer: the prefix run alone."""
        if prefix_ids not in self._prefixes:
            from transformers import DynamicCache

            cache = DynamicCache()
            if prefix_ids:
                ids = torch.tensor([prefix_ids], device=self.language.embed_tokens.weight.device)
                self.language(input_ids=ids, past_key_values=cache, use_cache=True)
            self._prefixes[prefix_ids] = {j: (layer.keys, layer.values) for j, layer in enumerate(cache.layers)}
        return self._prefixes[prefix_ids]

    def _template(self, layer: int, count: int, prefix_ids: tuple) -> dict:
        from transformers import DynamicCache

        prefix, p = self._prefix_kv(prefix_ids), len(prefix_ids)
        weight = self.language.embed_tokens.weight
        hidden = weight.new_zeros(1, count, weight.shape[1])
        positions = torch.arange(p, p + count, device=weight.device)[None]
        embeddings = self.language.rotary_emb(hidden, position_ids=positions)
        visible = torch.arange(p + count, device=weight.device)[None, :] <= positions[0][:, None]
        cache, kv = DynamicCache(), {}
        decoder = self.language.layers
        for j in range(layer, len(decoder)):
            if p:
                cache.update(*prefix[j], j)
            hidden = decoder[j](hidden, attention_mask=visible[None, None], position_ids=positions,
                                past_key_values=cache, use_cache=True, position_embeddings=embeddings)
            kv[j] = (cache.layers[j].keys[:, :, p:].clone(), cache.layers[j].values[:, :, p:].clone())
        return kv


class SharedImageRows:
    """The prefill of layers ``>= layer`` of a zero-masking variant, image rows shared.

    Args:
        templates: the run's `ImageRowTemplates`.
        layout: `shared_layout` of the batch.
        layer: L, the layer whose input has its image tokens zeroed.
        clean_kv: ``{layer: (keys, values, seen)}`` of the batch's clean prefill, each
            ``[batch, kv_heads, seq, head_dim]``, for every layer ``>= L``.
    """

    def __init__(self, templates: ImageRowTemplates, layout: dict, layer: int, clean_kv: dict):
        self.decoder, self.layout, self.layer = templates.language.layers, layout, layer
        rows = {n: templates.get(layer, n, layout["prefix_ids"]) for n in sorted(set(layout["counts"].tolist()))}
        self.prefix_kv = {j: self._prefix(j, *clean_kv[j][:2], rows) for j in range(layer, len(self.decoder))}

    def _prefix(self, j: int, keys: torch.Tensor, values: torch.Tensor, rows: dict):
        """Keys and values ``[batch, kv_heads, s0, head_dim]`` of every row before ``s0``:
        the batch's clean run for padding and prefix, the row's template for its image."""
        s0, p = self.layout["start"], len(self.layout["prefix_ids"])
        keys, values = keys[:, :, :s0].clone(), values[:, :, :s0].clone()
        for b, (pad, count) in enumerate(zip(self.layout["pad"].tolist(), self.layout["counts"].tolist())):
            width = s0 - pad - p  # <= count: s0 is where the earliest image block ends
            tk, tv = rows[count][j]
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
