"""Planted fusion and review layers: where text tokens may read the image during training.

A *site* is a (decoder layer, text query position) at which a text token is allowed to
attend to image keys. Every other text -> image attention is forbidden; image -> image
and text -> text attention are always allowed (causal). The planted design:

* **fusion layers** ``F``: only the first ``summary_tokens`` text tokens after the image
  (the question's first word: "what" / "how" / "is", before the asked object is known)
  may read the image, so what they carry is a question-independent summary;
* **review layer** ``R``: only the answer position (the ``:`` of each ``ASSISTANT:``, the
  last prompt token at inference) may read the image, after the question is resolved.

During training the forbidden entries get an additive logit bias ``-bias`` (``inf``: a
hard mask) through a pre-hook on each layer's attention that swaps in a per-layer 4-D
mask, and the attention mass that still reaches forbidden image keys is penalised.
Annealing the bias to 0 leaves a plain checkpoint whose own weights keep the pattern: no
mask, no hook and no custom class at inference.

Shapes: ``input_ids (B, T)``; masks ``(B, 1, T, T)`` (query, key); attention weights
``(B, H, T, T)`` (eager attention, so the hook can read them).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PlantedSites:
    """Which text tokens may read image keys at which decoder layers (see module doc)."""
    fusion: tuple[int, ...] = (1, 2)
    review: int = 6
    summary_tokens: int = 1
    answer_tokens: int = 1

    def describe(self) -> str:
        last = "the last prompt token" if self.answer_tokens == 1 else f"the last {self.answer_tokens} prompt tokens"
        return (f"fusion layers {', '.join(map(str, self.fusion))} (the first {self.summary_tokens} text "
                f"token(s) after the image), review layer {self.review} ({last}: {ANSWER_WORDS[-self.answer_tokens:]})")


# The last prompt tokens of every turn, "... ? ASSISTANT:" (word-level tokenizer).
ANSWER_WORDS = ("?", "assistant", ":")


@dataclass
class TokenIds:
    """Token ids the site rule needs (``image``; ``answer``: the ids of `ANSWER_WORDS`)."""
    image: int
    answer: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer, image_token_id: int) -> "TokenIds":
        return cls(image_token_id, tuple(tokenizer.convert_tokens_to_ids(w) for w in ANSWER_WORDS))


def query_classes(input_ids: torch.Tensor, ids: TokenIds, summary_tokens: int,
                  answer_tokens: int = 1) -> dict[str, torch.Tensor]:
    """Boolean ``(B, T)`` masks: ``image`` positions, ``summary`` (the first
    ``summary_tokens`` positions after each row's last image token), ``answer`` (the last
    ``answer_tokens`` of each ``? ASSISTANT:`` ending, ``:`` alone by default) and
    ``text`` (every non-image position)."""
    image = input_ids == ids.image
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)
    last_image = torch.where(image, pos, -1).amax(dim=1, keepdim=True)  # (B, 1); -1: no image
    summary = (pos > last_image) & (pos <= last_image + summary_tokens) & (last_image >= 0)
    # the ending "? assistant :" in full, found by matching it at every position
    n = len(ids.answer)
    ends = torch.ones_like(image)
    for k, word in enumerate(ids.answer):  # the ending's k-th word sits n-1-k before its last
        shifted = torch.nn.functional.pad(input_ids[:, : input_ids.shape[1] - (n - 1 - k)], (n - 1 - k, 0), value=-1)
        ends &= shifted == word
    answer = torch.zeros_like(image)
    for back in range(answer_tokens):  # the last answer_tokens positions of each ending
        answer |= torch.nn.functional.pad(ends[:, back:], (0, back), value=False)
    return dict(image=image, summary=summary, answer=answer, text=~image)


def forbidden_masks(input_ids: torch.Tensor, ids: TokenIds, sites: PlantedSites,
                    n_layers: int) -> list[torch.Tensor]:
    """Per layer, ``(B, T, T)`` bool: (text query, image key) pairs that are not a site
    (causality not applied: the caller's causal mask covers it)."""
    q = query_classes(input_ids, ids, sites.summary_tokens, sites.answer_tokens)
    key_image = q["image"][:, None, :]
    out = []
    for layer in range(n_layers):
        allowed = torch.zeros_like(q["text"])
        if layer in sites.fusion:
            allowed = allowed | q["summary"]
        if layer == sites.review:
            allowed = allowed | q["answer"]
        out.append((q["text"] & ~allowed)[:, :, None] & key_image)
    return out


def additive_mask(forbidden: torch.Tensor, bias: float, dtype=torch.float32) -> torch.Tensor:
    """``(B, 1, T, T)`` additive mask: causal, plus ``-bias`` on forbidden entries
    (``bias=inf``: removed outright)."""
    b, t, _ = forbidden.shape
    low = torch.finfo(dtype).min
    causal = torch.ones(t, t, dtype=torch.bool, device=forbidden.device).tril()
    mask = torch.zeros(b, t, t, dtype=dtype, device=forbidden.device).masked_fill(~causal, low)
    if math.isinf(bias):
        mask = mask.masked_fill(forbidden & causal, low)
    elif bias:
        mask = mask - bias * (forbidden & causal).to(dtype)
    return mask[:, None]


@dataclass
class SiteTraining:
    """Installs the per-layer masks and collects the forbidden attention mass.

    ``with training.active(model, input_ids, bias): loss = ... + weight * training.penalty()``.
    ``mass[layer]``: mean over heads and valid text queries of attention on forbidden
    image keys, a scalar tensor with gradient (from the last forward).
    """
    sites: PlantedSites
    ids: TokenIds
    mass: dict[int, torch.Tensor] = field(default_factory=dict)

    @contextmanager
    def active(self, model, input_ids: torch.Tensor, bias: float, valid: torch.Tensor | None = None):
        layers = model.model.language_model.layers
        forbidden = forbidden_masks(input_ids, self.ids, self.sites, len(layers))
        valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid
        t = input_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        handles, self.mass = [], {}
        for i, layer in enumerate(layers):
            # padding keys (left-padded evaluation batches) stay out of view
            mask = additive_mask(forbidden[i], bias).masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
            rows = ((forbidden[i] & causal).any(-1) & valid).float()  # (B, T) text queries with image keys in view

            def pre(module, args, kwargs, mask=mask):
                kwargs["attention_mask"] = mask
                return args, kwargs

            def post(module, args, output, i=i, forbidden=forbidden[i], rows=rows):
                weights = output[1]  # (B, H, T, T), eager attention
                per_query = (weights * forbidden[:, None].to(weights.dtype)).sum(-1).mean(1)  # (B, T)
                self.mass[i] = (per_query * rows).sum() / rows.sum().clamp(min=1)

            handles.append(layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(post))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def penalty(self) -> torch.Tensor:
        """Sum over layers of the forbidden attention mass of the last forward."""
        return sum(self.mass.values())


def bias_at(step: int, steps: int, start: float, hold: float, anneal: float) -> float:
    """Logit bias on forbidden sites at ``step`` of ``steps``: ``inf`` (hard mask) for the
    first ``hold`` share, then ``start`` decaying linearly to 0 over the next ``anneal``
    share, 0 afterwards (the mask-free finish)."""
    s = step / max(1, steps)
    if s < hold:
        return math.inf
    if s < hold + anneal:
        return start * (1 - (s - hold) / anneal)
    return 0.0


@torch.no_grad()
def image_attention_by_site(model, processor, samples, sites: PlantedSites, batch_size: int = 50) -> dict:
    """Mask-free check of a checkpoint: per layer, mean attention mass (over heads and
    samples) that the ``summary`` query, the ``answer`` query (last prompt token) and all
    other text queries put on image keys. ``{"summary"|"answer"|"other": [per layer]}``."""
    from .evaluate import PROMPT

    attn = model.config._attn_implementation
    model.set_attn_implementation("eager")
    processor.tokenizer.padding_side = "left"
    ids = TokenIds.of(processor.tokenizer, model.config.image_token_id)
    sums = {k: torch.zeros(model.config.text_config.num_hidden_layers) for k in ("summary", "answer", "other")}
    counts = {k: 0.0 for k in sums}
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i: i + batch_size]
            inputs = processor(text=[PROMPT.format(question=s.question) for s in chunk],
                               images=[s.image for s in chunk], return_tensors="pt", padding=True)
            out = model(**inputs, output_attentions=True)
            q = query_classes(inputs["input_ids"], ids, sites.summary_tokens, sites.answer_tokens)
            valid = inputs["attention_mask"].bool()
            other = q["text"] & ~q["summary"] & ~q["answer"] & valid
            # queries before the image see no image key: leave them out of "other"
            other &= torch.cumsum(q["image"].long(), 1) > 0
            for layer, w in enumerate(out.attentions):
                on_image = (w * q["image"][:, None, None, :]).sum(-1).mean(1)  # (B, T)
                for name, rows in (("summary", q["summary"]), ("answer", q["answer"]), ("other", other)):
                    sums[name][layer] += (on_image * rows).sum()
            for name, rows in (("summary", q["summary"]), ("answer", q["answer"]), ("other", other)):
                counts[name] += float(rows.sum())
    finally:
        model.set_attn_implementation(attn)
    return {k: (sums[k] / max(counts[k], 1)).tolist() for k in sums}


@contextmanager
def image_zeroed(model, input_ids: torch.Tensor, rows: torch.Tensor, layer: int, image_token_id: int):
    """Zero the image-token hidden states of batch ``rows`` (``(B,)`` bool) at the input of
    decoder ``layer`` while active: what `mech.ZeroImage` does at inference, here as a
    training-time ablation."""
    drop = ((input_ids == image_token_id) & rows[:, None])[..., None]  # (B, T, 1)

    def pre(module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = kwargs["hidden_states"].masked_fill(drop, 0.0)
            return args, kwargs
        return (args[0].masked_fill(drop, 0.0), *args[1:]), kwargs

    handle = model.model.language_model.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def answers_only(labels: torch.Tensor, rows: torch.Tensor, keep_ids: list[int], eos: int) -> torch.Tensor:
    """``labels (B, T)`` with the answers of batch ``rows`` kept only where the answer word
    is in ``keep_ids`` (and that answer's ``</s>``); everything else there is ``-100``."""
    keep = torch.isin(labels, torch.tensor(keep_ids))
    keep = keep | ((labels == eos) & torch.nn.functional.pad(keep[:, :-1], (1, 0)))
    return torch.where(rows[:, None] & ~keep, torch.full_like(labels, -100), labels)


@dataclass
class Planting:
    """The planted design over a whole training run: sites, the bias schedule over the
    run's global steps (`bias_at`), the weight of the forbidden-mass penalty, and the
    *review ablation*: a ``review_dropout`` share of training images has its image tokens
    zeroed right after the last fusion layer, with loss only on the answers the fusion
    summary is meant to carry (``fusion_answers``, e.g. counts and yes/no), so that those
    are answered from the fusion layers' reads alone when the review read sees nothing."""
    sites: PlantedSites
    ids: TokenIds
    total_steps: int
    hold: float = 0.5
    anneal: float = 0.3
    start: float = 12.0
    weight: float = 1.0
    review_dropout: float = 0.0
    fusion_answers: tuple[int, ...] = ()

    def __post_init__(self):
        self.training = SiteTraining(self.sites, self.ids)

    def ablation_rows(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``(B,)`` bool: the images whose review read is ablated in this step."""
        return torch.rand(batch_size, generator=generator) < self.review_dropout

    def bias(self, step: int) -> float:
        return bias_at(step, self.total_steps, self.start, self.hold, self.anneal)

    def describe(self) -> dict:
        return dict(fusion=list(self.sites.fusion), review=self.sites.review,
                    summary_tokens=self.sites.summary_tokens, hold=self.hold, anneal=self.anneal,
                    start=self.start, weight=self.weight, total_steps=self.total_steps,
                    review_dropout=self.review_dropout)
