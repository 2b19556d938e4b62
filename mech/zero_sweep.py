"""A layer-wise zero-masking sweep that does not redo what it already knows.

Zeroing the image tokens at the input of decoder layer L leaves layers ``< L`` exactly
as in the clean (unmasked) run. So `zero_mask_sweep` runs the clean generate once,
keeping the hidden states entering every layer and the prompt's key/value cache of every
layer, and then, for each variant L, runs Hugging Face's own ``generate`` again with

* no pixel values (the vision tower is not run again),
* layers ``< L`` replaced, for the prefill only, by stand-ins that push the clean run's
  key/value states of that layer into the new cache and compute nothing,
* the input of layer L replaced by the clean hidden state entering L with its image
  tokens zeroed (the same multiplication `mech.ZeroImage` performs),

so only layers ``>= L`` of the prefill are computed; the decode steps run through every
layer and read the cache, exactly as in the naive run. Every tensor op that remains is
the one the naive run (``mech.run(model, samples, mech.ZeroImage(layer=L))``) performs,
on the same shapes, so the generated ids and step scores are bitwise equal to it (the
tests check this for LLaVA-1.5 and LLaVA-NeXT, left-padded batches).

Work: one full prefill plus ``sum_L (n_layers - L)`` layer prefills instead of
``n_layers`` full ones (and the vision tower once): about ``1/2 + 3/(2 n)`` of the naive
sweep's prefill for a sweep over all ``n`` layers, plus the decode steps, which both pay.
The bitwise sweep runs its variants one after the other, never stacked into one batch:
stacking changes the matrix shapes, and with them the floating-point results. The shared
sweep, whose contract is summation order anyway, decodes its variants together
(`mech.decode_together`): the prefills stay one per variant, the decode steps run as one
batch from one preallocated cache.

``share_image_rows=True`` goes further (`mech.shared_rows`): once zeroed, the image rows
of layers ``>= L`` are the same for every sample, so they are computed once for the run
(per layer, image-token count and text before the image, on one unpadded template row,
kept in an `ImageRowTemplates` passed from batch to batch), and each sample runs only its
rows after the image. Each variant then costs about ``n_text / seq`` of its remaining
work; the results equal the naive run's up to floating-point summation order (ids equal,
scores within the naive run's own change under a different batch layout), not bit for
bit.

Only the local Hugging Face module is used (no nnsight trace), so this does not run on
NDIF; `mech.sweep(..., fast=True)` falls back to naive runs where it does not apply.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch

from .batch import Batch

__all__ = ["zero_mask_sweep", "SweepTimes"]


class _CachedLayer(torch.nn.Module):
    """Stands in for decoder layer ``index``: in the prefill it only pushes the clean
    run's key/value states of that layer into the cache; later calls run the real layer."""

    def __init__(self, layer: torch.nn.Module, index: int, keys: torch.Tensor, values: torch.Tensor,
                 seen: int | None = None):
        super().__init__()
        self._real = [layer]  # a list: not registered as a submodule
        self.index, self.keys, self.values, self.seen = index, keys, values, seen
        self.prefill = True

    def forward(self, hidden_states, *args, **kwargs):
        if not self.prefill:
            return self._real[0](hidden_states, *args, **kwargs)
        self.prefill = False
        cache = kwargs["past_key_values"]
        cache.update(self.keys, self.values, self.index)
        if self.seen is not None:  # a sliding-window layer keeps its window but counts every token
            cache.layers[self.index].cumulative_length = self.seen
        return hidden_states  # never read: the input of layer L is replaced


@contextmanager
def _swapped(layers: torch.nn.ModuleList, stand_ins: dict[int, torch.nn.Module]):
    originals = {i: layers[i] for i in stand_ins}
    try:
        for i, module in stand_ins.items():
            layers[i] = module
        yield
    finally:
        for i, module in originals.items():
            layers[i] = module


@contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SweepTimes(dict):
    """``{key: seconds}`` of each generate call of a `zero_mask_sweep` (``None`` is the
    clean run: vision tower, full prefill, decode; a layer its incremental run)."""


def _generate(module, inputs: dict, max_new_tokens: int, pad_token_id, scores: bool):
    out = module.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                          pad_token_id=pad_token_id, return_dict_in_generate=True,
                          output_scores=scores)
    return out


def zero_mask_sweep(model, batch: Batch, layers: Iterable[int] | None = None, max_new_tokens: int = 8,
                    *, baseline: bool = False, return_scores: bool = False, times: dict | None = None,
                    share_image_rows: bool = False, templates=None, decode_together: bool = True):
    """Greedy generation with the image tokens zeroed at the input of each layer in ``layers``.

    Equal, bit for bit, to one ``model.generate`` per layer with
    ``mech.ZeroImage(layer=L)`` applied (what ``mech.run`` does), at a fraction of the
    prefill work (see the module docstring).

    Args:
        model: a `mech.Model` with its processor (local weights).
        batch: a `Batch` from ``model.prepare`` (left-padded).
        layers: 0-based decoder layers (default: all).
        max_new_tokens: generation length cap.
        baseline: also return the clean run's output under the key ``None`` (it is
            computed anyway).
        return_scores: return ``(ids, scores)`` per key, scores ``[batch, new, vocab]``
            float logits of each greedy step (``generate``'s ``output_scores``).
        times: a dict to receive the wall seconds of each generate call by key.
        share_image_rows: compute the zeroed image rows of layers ``>= L`` once instead of
            once per sample (`mech.shared_rows`): much less work, results equal to the
            naive run's up to floating-point summation order instead of bitwise.
            Raises ValueError when rows do not share the text before one image block.
        templates: with ``share_image_rows``, the run's `mech.ImageRowTemplates`, so
            later batches reuse the image rows earlier ones computed (default: a new
            one, kept for this call only).
        decode_together: with ``share_image_rows``, run the variants' decode steps as one
            batch (`mech.decode_together`; as many variants at a time as its buffer of
            at most 2 GiB holds): the same ids, step scores within summation order up to
            each row's end of sequence; fewer, larger calls.
    Returns:
        ``{layer: ids}`` (``[batch, seq + new]``, prompt included, like ``model.generate``),
        in the order of ``layers``, or ``{layer: (ids, scores)}``.
    """
    from .interventions import image_multiplier

    if model.processor is None:
        raise ValueError("zero_mask_sweep needs the model's processor (for the pad token)")
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} repeat a layer")
    module = model.nn._module
    decoder = model.family.decoder_layers(module)
    pad = model.processor.tokenizer.pad_token_id
    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)
    clock = _Clock(sync)

    # The clean run, keeping each layer's input hidden state and prompt key/value states.
    entering: dict[int, torch.Tensor] = {}
    cached: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    needed = set(layers)
    below = model.n_layers if share_image_rows else max(layers, default=0)
    if templates is not None and not share_image_rows:
        raise ValueError("templates= is for share_image_rows=True; the bitwise sweep computes every row")
    if share_image_rows:
        from .shared_rows import ImageRowTemplates, SharedLayoutError, shared_layout

        if model.family.shared_rows:
            raise ValueError(f"share_image_rows does not apply to {model.family.name}: {model.family.shared_rows}; "
                             "run without it (the bitwise-exact sweep)")

        templates = ImageRowTemplates(model) if templates is None else templates

        try:
            layout = shared_layout(batch)
        except SharedLayoutError as error:
            raise ValueError(f"share_image_rows: {error}, so the zeroed image rows are not the same for "
                             "every row; run without share_image_rows (bitwise-exact sweep)") from None

    def keep_input(index):
        def hook(_, args, kwargs):
            if index not in entering:
                entering[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def keep_cache(index):
        def hook(_, args, kwargs, output):
            if index not in cached:
                layer = kwargs["past_key_values"].layers[index]
                cached[index] = (layer.keys, layer.values, getattr(layer, "cumulative_length", None))
        return hook

    handles = [decoder[i].register_forward_pre_hook(keep_input(i), with_kwargs=True) for i in needed]
    handles += [decoder[i].register_forward_hook(keep_cache(i), with_kwargs=True) for i in range(below)]
    with torch.no_grad(), _hooks(handles), clock(None):
        # Without the baseline only the prefill matters: one new token, no decode forward.
        clean = _generate(module, batch.generate_inputs, max_new_tokens if baseline else 1, pad,
                          return_scores)
    results = {}
    if baseline:
        results[None] = _output(clean, return_scores)

    text_inputs = model.family.text_inputs(batch.generate_inputs)

    def variant(layer, new_tokens, cache=None):
        stand_ins = {i: _CachedLayer(decoder[i], i, *cached[i]) for i in range(layer)}
        masked = entering[layer] * image_multiplier(batch, 0.0, entering[layer])
        with torch.no_grad(), clock(layer):
            if share_image_rows:  # layers >= L run the rows after the image; no input to replace
                from .shared_rows import SharedImageRows

                shared = SharedImageRows(templates, layout, layer, cached)
                stand_ins.update({j: shared.stand_in(j, masked if j == layer else None)
                                  for j in range(layer, len(decoder))})
                handles = []
            else:
                handles = [decoder[layer].register_forward_pre_hook(_prefill_input(masked), with_kwargs=True)]
            with _hooks(handles), _swapped(decoder, stand_ins):
                inputs = text_inputs if cache is None else {**text_inputs, "past_key_values": cache}
                return _generate(module, inputs, new_tokens, pad, return_scores)

    group = 1
    # No layers: no variant to decode, so nothing to group (and no cache to size it by).
    if share_image_rows and decode_together and max_new_tokens > 1 and layers:
        from .decode_together import DecodeBuffer, decode_together as run_together

        buffer = templates.decode_buffer if templates is not None else DecodeBuffer()
        keys = cached[layers[0]][0]
        shape = (batch.size, keys.shape[1], batch.seq_len + max_new_tokens, keys.shape[3])
        group = buffer.variants_that_fit(model.n_layers, shape, keys)
    out = None
    for lo in range(0, len(layers), group):
        part = layers[lo:lo + group]
        if len(part) == 1:
            # `out` is released only once the next variant's is made: freeing a variant's
            # cache before the next generate allocates its own measured 5-8% slower here
            out = variant(part[0], max_new_tokens)
            results[part[0]] = _output(out, return_scores)
            continue
        caches, stacked = buffer.caches(model.n_layers, len(part), shape, keys)
        prefilled = {layer: variant(layer, 1, cache) for layer, cache in zip(part, caches)}
        with torch.no_grad():
            results.update(run_together(module, prefilled, stacked, text_inputs["attention_mask"],
                                        max_new_tokens, pad, return_scores, clock))
    results = {key: results[key] for key in ([None] if baseline else []) + layers}
    if times is not None:
        times.update(clock.seconds)
    return results


def _prefill_input(masked: torch.Tensor):
    """A forward pre-hook that hands the layer ``masked`` as its input in the prefill only."""
    state = {"prefill": True}

    def replace_input(_, args, kwargs):
        if not state["prefill"]:
            return None
        state["prefill"] = False
        if args:
            return (masked, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": masked}
    return replace_input


def _output(out, scores: bool):
    ids = out.sequences
    return (ids, torch.stack(out.scores, 1)) if scores else ids


class _Clock:
    def __init__(self, sync):
        self.sync, self.seconds = sync, SweepTimes()

    @contextmanager
    def __call__(self, key):
        import time

        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[key] = time.perf_counter() - start
