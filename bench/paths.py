"""The paths the benchmarks time: mech's toolkit paths and the plain Hugging Face /
PyTorch anchors they are timed against.

"Plain forward" is the Hugging Face module called directly under ``torch.no_grad()``;
the sweep's anchor is one plain ``generate`` per layer with a forward pre-hook.
"""

from __future__ import annotations

import torch


def plain_forward(model, batch, **kwargs):
    """The anchor: logits ``[batch, seq, vocab]`` of the Hugging Face module called directly."""
    with torch.no_grad():
        return model.nn._module(**batch.inputs, **kwargs).logits


def traced(model, batch, *interventions):
    """``(logits [batch, seq, vocab], what mech.apply returned or None)`` of one nnsight
    trace with ``interventions``."""
    import mech

    results = None
    with torch.no_grad(), model.trace(batch):
        if interventions:
            results = mech.apply(model, batch, *interventions)
        logits = model.logits.save()
    return logits, results


def capture(model, batch, layers):
    """A trace capturing image attention at ``layers``."""
    import mech

    return traced(model, batch, mech.CaptureImageAttention(layers=layers))


def contrastive(model, batch):
    """A trace with `mech.ContrastiveMask` (one forward pass)."""
    import mech

    return traced(model, batch, mech.ContrastiveMask())


def cache_image_residuals(model, batch):
    """A trace with `mech.Cache` of the residual stream entering every layer at the image
    tokens: ``(logits, {"resid_pre": [batch, layers, n_image, hidden], ...})``."""
    import mech

    return traced(model, batch, mech.Cache("resid_pre", positions="image"))


def source_batch(model, batch):
    """A second batch for patching: the same prompts (so the same lengths) with other images."""
    from mech.zoo.random_llava import random_images

    return model.prepare(prompts=batch.prompts, images=random_images(batch.size, seed=1))


def patch(model, joined, source, layers):
    """One trace over the target and source rows (`mech.join`), `mech.Patch` writing the
    source's residual stream at the image tokens into the target's at ``layers``."""
    import mech

    return traced(model, joined, mech.Patch("resid_pre", layers=layers, positions="image", source=source))


def two_plain_forwards(model, target, source):
    """The anchor of patching: the target and the source, one plain forward each."""
    return plain_forward(model, target), plain_forward(model, source)


def naive_zero_sweep(model, batch, layers, max_new_tokens):
    """The anchor: one plain Hugging Face generate per layer, image tokens zeroed at the
    layer's input by a forward pre-hook; ``{layer: ids [batch, seq + new]}``."""
    from mech.interventions import image_multiplier

    module = model.nn._module
    out = {}
    for layer in layers:
        state = {"prefill": True}

        def zero(_, args, state=state):
            if state["prefill"]:
                state["prefill"] = False
                return (args[0] * image_multiplier(batch, 0.0, args[0]), *args[1:])
        handle = module.model.language_model.layers[layer].register_forward_pre_hook(zero)
        try:
            with torch.no_grad():
                out[layer] = module.generate(**batch.generate_inputs, max_new_tokens=max_new_tokens,
                                             do_sample=False,
                                             pad_token_id=model.processor.tokenizer.pad_token_id)
        finally:
            handle.remove()
    return out


# -- generation steps ----------------------------------------------------------------------

def generated(model, batch, max_new_tokens, *interventions, remote=False):
    """``(new ids [batch, new], results or None)`` of one ``model.generate`` of exactly
    ``max_new_tokens`` (``min_new_tokens`` holds EOS off, so every path times the same
    number of steps), ``interventions`` on every generation step."""
    import mech

    options = {"remote": remote} if remote else {}
    results = None
    with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                         **options) as tr:
        if interventions:
            results = mech.apply(model, batch, *interventions, max_new_tokens=max_new_tokens)
        ids = tr.result.save()
    return ids[:, batch.seq_len:], results


def per_token_traces(model, batch, interventions, max_new_tokens: int, *, remote=False, min_new_tokens=0):
    """The anchor of the generation-step rows, and the reference the tests hold the one
    generate to: greedy generation as mech ran it before its edits moved onto nnsight's
    step iteration, one nnsight trace per token over a KV cache saved out of the last
    (``nnsight.save(past_key_values)``), the prefill with each intervention's `steps` and
    every later forward with its `decode_steps`; with ``remote=`` every token is a request
    that carries the cache. ``(new ids [batch, new], prefill results)``; padding after a
    row's EOS as ``generate`` pads; ``min_new_tokens`` keeps EOS off as ``generate``'s does."""
    import nnsight
    from transformers import DynamicCache

    from mech.decoding import eos_ids
    from mech.interventions import apply, run_steps

    interventions = list(interventions)
    eos = torch.tensor(sorted(eos_ids(model)))
    pad = model.processor.tokenizer.pad_token_id
    options = {"remote": remote} if remote else {}
    inputs = dict(batch.inputs)
    mask = inputs["attention_mask"]
    position = model.family.last_position(model, batch)
    cache = DynamicCache()
    done = torch.zeros(batch.size, dtype=torch.bool)
    new, results = [], None
    with torch.no_grad():
        for step in range(max_new_tokens):
            with model.nn.trace(**inputs, past_key_values=cache, use_cache=True, **options):
                if step == 0:
                    results = apply(model, batch, *interventions) if interventions else None
                elif interventions:
                    rows = [results] if len(interventions) == 1 else list(results)
                    run_steps(model, [s for iv, r in zip(interventions, rows)
                                      for s in iv.decode_steps(model, batch, r, step)])
                logits = model.logits[:, -1].save()
                cache = nnsight.save(model.nn.output.past_key_values)
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            token = logits.argmax(-1).cpu()
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done |= torch.isin(token, eos)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            position = position + 1
            inputs = {"input_ids": token[:, None].to(mask.device), "attention_mask": mask, "position_ids": position}
    return torch.stack(new, 1), results
