"""Greedy generation one traced forward per token, for interventions that act on every
generated token (``ScaleImage(at="attention")``, ``ContrastiveMask(mask_at="attention")``).

``model.generate`` runs all its forwards inside one trace, and mech's interventions
act on its first (the prefill). An edit of the attention toward image tokens must also
act on every later forward, whose queries read the image tokens from the cache. So the
prefill runs as one trace with each intervention's `steps`, and every new token as one
more trace, over the kept cache, with its `decode_steps`::

    new_ids, results = mech.stepwise.generate(model, batch, [mech.ContrastiveMask(mask_at="attention")], 8)

Greedy choice, EOS and padding are those of ``model.generate`` (tokens after a row's EOS
are padding); without interventions the ids equal ``model.generate``'s.
"""

from __future__ import annotations

import nnsight
import torch

from .decoding import eos_ids
from .interventions import apply, apply_decode

__all__ = ["generate", "edits_generation"]


def edits_generation(interventions) -> bool:
    """Whether any of ``interventions`` acts on the forwards after the prefill."""
    return any(getattr(iv, "edits_generation", False) for iv in interventions)


def generate(model, batch, interventions, max_new_tokens: int, *, remote=False):
    """``(new_ids [batch, new], results)``: greedy generation of ``batch`` with every
    intervention acting on the prefill and, through its `decode_steps`, on each later
    forward. ``results`` are `mech.apply`'s for the prefill (one dict, or a tuple)."""
    from transformers import DynamicCache

    interventions = list(interventions)
    eos = torch.tensor(sorted(eos_ids(model)))
    pad = model.processor.tokenizer.pad_token_id
    options = {"remote": remote} if remote else {}
    inputs = dict(batch.inputs)
    mask = inputs["attention_mask"]
    position = model.family.last_position(model, batch)
    cache = DynamicCache()
    done = torch.zeros(batch.size, dtype=torch.bool)
    new = []
    results = None
    with torch.no_grad():
        for step in range(max_new_tokens):
            with model.nn.trace(**inputs, past_key_values=cache, use_cache=True, **options):
                if step == 0:
                    results = apply(model, batch, *interventions) if interventions else None
                elif interventions:
                    apply_decode(model, batch, interventions, results)
                logits = model.logits[:, -1].save()
                cache = nnsight.save(model.nn.output.past_key_values)
            token = logits.argmax(-1).cpu()
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done |= torch.isin(token, eos)
            if bool(done.all()):
                break
            device = mask.device
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            position = position + 1
            inputs = {"input_ids": token[:, None].to(device), "attention_mask": mask, "position_ids": position}
    return torch.stack(new, 1), results
