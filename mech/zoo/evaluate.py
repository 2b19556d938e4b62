"""Greedy-generation accuracy of a LLaVA model on shapes samples, per question type.

``predict`` is plain ``model.generate`` on ``processor`` outputs (left padding, greedy);
the first decoded word is the prediction. ``mask_image=True`` zeroes every image-token
hidden state at the input of decoder layer 0 (prefill only: later steps hold no image
tokens), which should push accuracy down to the text-only prior.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import contextmanager

import torch

PROMPT = "USER: <image>\n{question} ASSISTANT:"


@contextmanager
def image_tokens_zeroed(model, input_ids_holder: dict):
    """Zeroes image-token rows ``(B, T, D)`` entering decoder layer 0 while active."""
    layer0 = model.model.language_model.layers[0]
    image_id = model.config.image_token_id

    def hook(module, args, kwargs):
        ids = input_ids_holder.get("ids")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if ids is None or hidden.shape[1] != ids.shape[1]:
            return None  # decoding step: no image tokens left
        hidden = hidden.masked_fill((ids == image_id).unsqueeze(-1), 0.0)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
            return args, kwargs
        return (hidden, *args[1:]), kwargs

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def predict(model, processor, samples, batch_size: int = 50, mask_image: bool = False) -> list[str]:
    """First word of the greedy answer for each sample (lower-cased)."""
    processor.tokenizer.padding_side = "left"
    preds, holder = [], {}
    ctx = image_tokens_zeroed(model, holder) if mask_image else contextmanager(lambda: (yield))()
    with ctx:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            inputs = processor(text=[PROMPT.format(question=s.question) for s in chunk],
                               images=[s.image for s in chunk], return_tensors="pt", padding=True)
            holder["ids"] = inputs["input_ids"]
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            preds += [(t.split() or [""])[0].lower() for t in texts]
    return preds


def accuracy_by_type(samples, preds) -> dict[str, float]:
    """Exact-match accuracy per ``extras["question_type"]`` plus ``"overall"``."""
    hit, tot = defaultdict(int), defaultdict(int)
    for s, p in zip(samples, preds):
        for key in (s.extras["question_type"], "overall"):
            tot[key] += 1
            hit[key] += p == s.answers[0]
    return {k: hit[k] / tot[k] for k in tot}


def prior_by_type(samples) -> dict[str, float]:
    """Best text-only accuracy per type: answer each exact question string with its most
    frequent gold answer, fitted on ``samples`` themselves (so an upper bound on what
    the question alone can give; e.g. "left of the triangle" is never "triangle")."""
    by = defaultdict(Counter)
    for s in samples:
        by[(s.extras["question_type"], s.question)][s.answers[0]] += 1
    hit, tot = defaultdict(int), defaultdict(int)
    for (qtype, _), c in by.items():
        for key in (qtype, "overall"):
            hit[key] += c.most_common(1)[0][1]
            tot[key] += sum(c.values())
    return {k: hit[k] / tot[k] for k in tot}
