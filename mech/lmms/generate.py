"""One batch of lmms-eval requests through mech: prompt, generate under the interventions,
decode, exactly as `mech.run` does for a batch of samples.

The prompt is the model's template around the task's text (`Model.prepare`), generation
greedy up to the cap or EOS with every intervention acting inside the one ``generate``
(on every generation step for those that act on generated tokens), and the answer the new
tokens before the first EOS, special tokens skipped. lmms-eval strips answers before scoring, as `mech.run` does.
"""

from __future__ import annotations

import torch

from ..interventions import apply

__all__ = ["answers"]


def answers(model, interventions, texts, images, max_new_tokens: int) -> list[tuple[str, int]]:
    """``(text, new tokens before EOS)`` for each (task text, image) pair."""
    batch = model.prepare(questions=list(texts), images=list(images))
    with torch.no_grad(), model.generate(batch, max_new_tokens=max_new_tokens) as tracer:
        if interventions:
            apply(model, batch, *interventions, max_new_tokens=max_new_tokens)
        ids = tracer.result.save()
    new = ids[:, batch.seq_len:]
    return decode(model, new.cpu())


def decode(model, new: torch.Tensor) -> list[tuple[str, int]]:
    """Each row of new ids ``[batch, new]`` cut at its first EOS (generate pads after it)."""
    tokenizer = model.processor.tokenizer
    stop = torch.isin(new, torch.tensor(sorted(eos_ids(model)), dtype=new.dtype))
    counts = torch.where(stop.any(1), stop.int().argmax(1), torch.tensor(new.shape[1])).tolist()
    return [(tokenizer.decode(row[:n], skip_special_tokens=True), n) for row, n in zip(new, counts)]


def eos_ids(model) -> set[int]:
    """The ids that end a generation: the model's generation config's and the tokenizer's."""
    eos = model.nn.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    tok = model.processor.tokenizer.eos_token_id
    return set(eos) | ({tok} if tok is not None else set())
