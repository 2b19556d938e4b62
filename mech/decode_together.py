"""The decode steps of a shared sweep's variants, run as one batch.

After its prefill, every zero-masking variant of a batch decodes the same way: one new
token per row per step through every layer. On a CPU such a small step costs mostly
per-call overhead, so the variants' steps run together as one batch of
``variants * batch`` rows. Each variant's prefill writes its keys and values straight
into its rows of one preallocated buffer (`DecodeBuffer`), and ``generate`` continues
all of them from that buffer, each step writing in place. Concatenating the variants'
caches instead (or Hugging Face's ``DynamicCache``, which copies the whole cache per
step) costs more than the stacking saves: measured, a 32-layer batch got twice as slow.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

DEFAULT_MAX_BYTES = 2 * 2**30


class _InPlace(DynamicLayer):
    """A cache layer whose keys and values are the first ``length`` positions of a
    buffer ``[rows, kv_heads, capacity, head_dim]``; updates write into it in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self._k, self._v = keys, values
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        length, new = self.keys.shape[-2], key_states.shape[-2]
        if length + new > self._k.shape[2]:
            raise RuntimeError(f"decode buffer full: {length} + {new} positions, room for {self._k.shape[2]}")
        self._k[:, :, length:length + new] = key_states
        self._v[:, :, length:length + new] = value_states
        self.keys, self.values = self._k[:, :, :length + new], self._v[:, :, :length + new]
        return self.keys, self.values


class DecodeBuffer:
    """Keys and values for the rows of variants decoded together, per layer, kept
    across batches (a fresh multi-hundred-megabyte allocation per batch pays its page
    faults every time) and grown when a batch needs more; at most ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes, self._k, self._v = max_bytes, None, None

    @property
    def bytes(self) -> int:
        return 0 if self._k is None else sum(t.nbytes for t in self._k + self._v)

    def variants_that_fit(self, layers: int, shape: tuple, like: torch.Tensor) -> int:
        """How many variants of ``shape`` ``(batch, kv_heads, capacity, head_dim)`` per
        layer fit in ``max_bytes``."""
        one = 2 * layers * like.element_size() * shape[0] * shape[1] * shape[2] * shape[3]
        return max(1, self.max_bytes // one)

    def caches(self, layers: int, variants: int, shape: tuple, like: torch.Tensor):
        """``([DynamicCache] per variant, empty; stacked(length) -> DynamicCache)``."""
        batch, heads, capacity, dim = shape
        rows = variants * batch
        old = None if self._k is None else self._k[0]
        if old is None or len(self._k) != layers or old.shape[0] < rows or old.shape[2] < capacity or \
                old.shape[1] != heads or old.shape[3] != dim or old.dtype != like.dtype or old.device != like.device:
            self._k = self._v = None  # freed before the new one is made
            self._k = [like.new_empty(rows, heads, capacity, dim) for _ in range(layers)]
            self._v = [like.new_empty(rows, heads, capacity, dim) for _ in range(layers)]

        def cache(lo: int, hi: int, length: int) -> DynamicCache:
            made = DynamicCache()
            made.layers = [_InPlace(k[lo:hi, :, :capacity], v[lo:hi, :, :capacity], length)
                           for k, v in zip(self._k, self._v)]
            return made
        return [cache(v * batch, (v + 1) * batch, 0) for v in range(variants)], \
            lambda length: cache(0, rows, length)


def decode_together(module, prefilled: dict, stacked_cache, mask: torch.Tensor, max_new_tokens: int, pad,
                    scores: bool, clock) -> dict:
    """Continue every variant's greedy generation from its one-token prefill, stacked.

    ``prefilled``: ``{key: generate output}`` with one new token each, in the order of
    their rows in ``stacked_cache(seq)``; ``mask``: ``[batch, seq]``. Each variant is
    cut back to what its own ``generate`` returns: a row that ended on its first token
    is padded after it, and the variant stops at the step where all its rows have ended.
    Step scores after a row's end are the stacked run's (they decide nothing). The decode
    seconds are shared equally by the variants in ``clock``.
    """
    keys = list(prefilled)
    rows, seq = mask.shape
    eos = module.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=mask.device)
    ids = torch.cat([prefilled[k].sequences for k in keys])
    stacked = torch.cat([mask] * len(keys))
    stacked = torch.cat([stacked, stacked.new_ones(len(ids), 1)], 1)
    with clock("decode"):
        out = module.generate(input_ids=ids, attention_mask=stacked, past_key_values=stacked_cache(seq),
                              max_new_tokens=max_new_tokens - 1, do_sample=False, pad_token_id=pad,
                              return_dict_in_generate=True, output_scores=scores)
    share = clock.seconds.pop("decode") / len(keys)
    results = {}
    for v, key in enumerate(keys):
        sequences = out.sequences[v * rows:(v + 1) * rows].clone()
        new = sequences[:, seq:]
        ended = torch.isin(new, eos)
        first_end = torch.where(ended.any(1), ended.int().argmax(1), new.shape[1])
        for r in range(rows):  # after its end a row's own generate feeds and emits padding
            new[r, int(first_end[r]) + 1:] = pad
        length = int(first_end.max()) + 1 if bool(ended.any(1).all()) else new.shape[1]
        sequences = sequences[:, :seq + length]
        clock.seconds[key] += share
        if scores:
            steps = torch.stack([prefilled[key].scores[0], *(s[v * rows:(v + 1) * rows] for s in out.scores)], 1)
            results[key] = (sequences, steps[:, :length])
        else:
            results[key] = sequences
    return results
