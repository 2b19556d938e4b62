"""Interventions that act inside one nnsight trace or generate (prefill only).

Each intervention is a small dataclass that lists its *steps*: (decoder layer, hook
site, function). `apply` merges the steps of any number of interventions into model
order, reads each hook site once, passes its value through every step that acts there
(in the order the interventions were given), and writes it back once. So
interventions compose in any number and any order::

    with model.generate(batch, max_new_tokens=4) as tr:
        attention, _ = mech.apply(model, batch,
                                  mech.CaptureImageAttention(layers=[2, 5]),
                                  mech.ZeroImage(layer=3))

Hook sites of decoder layer L, in forward order:

* ``input``              the hidden states entering layer L ``[batch, seq, hidden]``
* ``attention_inputs``   the self-attention call's ``(args, kwargs)`` (mask, rotary)
* ``query_key``          ``(q_proj output, k_proj output)``
* ``attention_weights``  the eager attention weights ``[batch, heads, seq, seq]``
* ``output``             the hidden states leaving layer L

Everything inside runs as torch ops and mech functions, so it ships unchanged to an
NDIF server with ``remote=``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import nnsight
import torch

from . import attention as attn
from . import contrastive as con
from .checks import number
from .batch import Batch, scatter_image

SITES = ("input", "attention_inputs", "query_key", "attention_weights", "output")
LOCATIONS = ("input", "output")


@dataclass(frozen=True)
class Step:
    layer: int
    site: str
    fn: Callable[[Any, dict], Any]  # (value, layer_state) -> new value or None (read only)


# -- reading and writing hook sites ---------------------------------------------


def _read(model, layer: int, site: str):
    envoy = model.layers[layer]
    if site == "input":
        return envoy.input
    if site == "output":
        return envoy.output
    if site == "attention_inputs":
        return envoy.self_attn.inputs
    if site == "query_key":
        return envoy.self_attn.q_proj.output, envoy.self_attn.k_proj.output
    if site == "attention_weights":
        return envoy.self_attn.output[1]
    raise ValueError(f"unknown hook site {site!r}; sites are {SITES}")


def _write(model, layer: int, site: str, value) -> None:
    envoy = model.layers[layer]
    if site == "input":
        envoy.input = value
    elif site == "output":
        envoy.output = value
    elif site == "attention_inputs":
        envoy.self_attn.inputs = value
    else:
        raise ValueError(f"hook site {site!r} is read-only")


def apply(model, batch: Batch, *interventions: "Intervention"):
    """Run interventions inside the current trace; returns one result per intervention.

    A single intervention returns its result alone. Results are dicts of saved tensors
    (empty for pure edits), so they come back from remote runs too.
    """
    for intervention in interventions:
        intervention.validate(model)
    results = [dict() for _ in interventions]
    steps = [s for iv, r in zip(interventions, results) for s in iv.steps(model, batch, r)]
    steps.sort(key=lambda s: (s.layer, SITES.index(s.site)))  # stable: given order within a site
    state: dict[int, dict] = {}
    for (layer, site), group in itertools.groupby(steps, key=lambda s: (s.layer, s.site)):
        value = _read(model, layer, site)
        changed = False
        for step in group:
            new = step.fn(value, state.setdefault(layer, {}))
            if new is not None:
                value, changed = new, True
        if changed:
            _write(model, layer, site, value)
    for result in results:  # every level is saved so that unpacking keeps it too
        for value in result.values():
            nnsight.save(value)
        nnsight.save(result)
    out = results[0] if len(results) == 1 else tuple(results)
    return nnsight.save(out)


class Intervention:
    """Base: subclasses define ``steps`` and ``validate``."""

    def steps(self, model, batch: Batch, result: dict) -> list[Step]:
        raise NotImplementedError

    def validate(self, model) -> None:
        pass

    def apply(self, model, batch: Batch):
        """Shorthand for ``mech.apply(model, batch, self)``."""
        return apply(model, batch, self)


def _check_location(at: str) -> None:
    if at not in LOCATIONS:
        raise ValueError(f"at={at!r}; use 'input' (entering the layer) or 'output' (leaving it)")


def _image_multiplier(batch: Batch, weights, like: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, 1]`` multiplier: ``weights`` on image tokens, 1 elsewhere."""
    if not isinstance(weights, torch.Tensor):
        weights = torch.full(batch.image_index.shape, float(weights))
    weights = weights.to(device=like.device, dtype=like.dtype)
    weights = torch.where(batch.image_valid.to(like.device), weights, torch.ones_like(weights))
    return scatter_image(weights, batch.image_index.to(like.device), like.shape[1], 1.0)[..., None]


# -- editing image-token hidden states -----------------------------------------


@dataclass(frozen=True)
class ScaleImage(Intervention):
    """Multiply image-token hidden states at the input or output of decoder ``layer``.

    ``weights``: a scalar, or one weight per image token ``[batch, n_image]`` in the
    batch's padded image layout (a soft mask). Padded slots are ignored.
    """

    layer: int
    weights: Any = 0.0
    at: str = "input"

    def validate(self, model) -> None:
        model.check_layer(self.layer)
        _check_location(self.at)
        if isinstance(self.weights, torch.Tensor):
            if self.weights.dim() not in (0, 2):
                raise ValueError(f"weights must be a scalar or [batch, n_image], got shape "
                                 f"{tuple(self.weights.shape)}")
            if not bool(torch.isfinite(self.weights).all()):
                raise ValueError("weights hold NaN or infinite values: every weight must be a finite number")
        else:
            number("weights", self.weights, meaning="the factor on image-token hidden states")

    def steps(self, model, batch, result):
        def scale(hidden, _):
            return hidden * _image_multiplier(batch, self.weights, hidden)
        return [Step(self.layer, self.at, scale)]


@dataclass(frozen=True)
class ZeroImage(ScaleImage):
    """Zero the image-token hidden states at the input (or output) of decoder ``layer``.

    The paper's layer-wise zero-masking: during generate it acts on the prefill, the only
    forward that holds image tokens.
    """

    layer: int
    weights: Any = field(default=0.0, init=False)
    at: str = "input"


# -- attention knockout --------------------------------------------------------

QUERIES = ("last", "text")


def _additive_causal_mask(batch: Batch, dtype: torch.dtype, device) -> torch.Tensor:
    """``[batch, 1, seq, seq]`` additive mask (0 allowed, dtype-min blocked): causal + padding."""
    seq = batch.seq_len
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    keys = batch.inputs["attention_mask"].bool().to(device)
    allowed = causal[None, None] & keys[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


@dataclass(frozen=True)
class Knockout(Intervention):
    """Block attention from query positions to the image tokens at ``layers``.

    ``query``: ``"last"`` (the last prompt token) or ``"text"`` (every text token after
    the image). Acts on the prefill; the attention mask of those layers is edited, so
    it works under SDPA and eager alike.
    """

    layers: Sequence[int]
    query: str = "last"

    def validate(self, model) -> None:
        if self.query not in QUERIES:
            raise ValueError(f"query={self.query!r}; use one of {QUERIES}")
        if not list(self.layers):
            raise ValueError("Knockout needs at least one layer")
        for layer in self.layers:
            model.check_layer(layer)

    def steps(self, model, batch, result):
        queries = batch.last_token if self.query == "last" else batch.text_after_image
        block = queries[:, None, :, None] & batch.image_mask[:, None, None, :]

        def knock(call, _):
            args, kwargs = call
            mask = kwargs.get("attention_mask")
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if mask is None:  # SDPA without padding passes no mask: make the causal one
                mask = _additive_causal_mask(batch, hidden.dtype, hidden.device)
            blocked = block.to(mask.device)
            if mask.dtype == torch.bool:
                mask = mask & ~blocked
            else:
                mask = mask.masked_fill(blocked, torch.finfo(mask.dtype).min)
            return args, {**kwargs, "attention_mask": mask}

        return [Step(layer, "attention_inputs", knock) for layer in sorted(set(self.layers))]


# -- image-attention capture ---------------------------------------------------


def _capture_steps(model, batch: Batch, layers: Iterable[int], heads: str, method: str,
                   store: Callable[[int, torch.Tensor], None]) -> list[Step]:
    """Steps that compute A(i) for ``layers`` and hand each to ``store(layer, A)``."""
    config = model.config.text_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    steps = []
    for layer in layers:
        if method == "eager":
            def from_weights(weights, _, layer=layer):
                row = weights[:, :, -1, :]
                store(layer, attn.image_attention(row, batch.image_index, batch.image_valid, heads))
            steps.append(Step(layer, "attention_weights", from_weights))
            continue

        def rotary(call, state):
            args, kwargs = call
            state["rotary"] = kwargs["position_embeddings"]

        def from_qk(qk, state, layer=layer):
            cos, sin = state["rotary"]
            scaling = model.layers[layer].self_attn._module.scaling
            row = attn.query_attention_row(qk[0], qk[1], cos, sin, batch.inputs["attention_mask"],
                                           head_dim=head_dim, scaling=scaling)
            store(layer, attn.image_attention(row, batch.image_index, batch.image_valid, heads))

        steps += [Step(layer, "attention_inputs", rotary), Step(layer, "query_key", from_qk)]
    return steps


def _check_method(model, method: str) -> None:
    if method not in ("sdpa", "eager"):
        raise ValueError(f"method={method!r}; use 'sdpa' (from q/k, any attention) or 'eager'")
    if method == "eager" and model.config._attn_implementation != "eager":
        raise ValueError("method='eager' reads attention weights, which only eager attention "
                         "returns: load with mech.load(..., attn_implementation='eager')")


@dataclass(frozen=True)
class CaptureImageAttention(Intervention):
    """Capture A(i), the last prompt token's attention to the image tokens, at ``layers``.

    Result: ``{layer: A}`` with A ``[batch, n_image]`` (``[batch, heads, n_image]`` for
    ``heads="none"``), renormalised to sum 1 over each row's image tokens.
    ``method="sdpa"`` recomputes the row from q/k (no attention matrix, any attention
    implementation); ``"eager"`` reads the eager weights (a checked fallback).
    """

    layers: Sequence[int]
    heads: str = "mean"
    method: str = "sdpa"

    def validate(self, model) -> None:
        if not list(self.layers):
            raise ValueError("CaptureImageAttention needs at least one layer")
        for layer in self.layers:
            model.check_layer(layer)
        if self.heads not in attn.HEAD_REDUCTIONS:
            raise ValueError(f"heads={self.heads!r}; choose one of {attn.HEAD_REDUCTIONS}")
        _check_method(model, self.method)

    def steps(self, model, batch, result):
        return _capture_steps(model, batch, sorted(set(self.layers)), self.heads, self.method,
                              result.__setitem__)


# -- contrastive attention -----------------------------------------------------

PAPER_REVIEW_DEPTH = 29 / 32  # LLaVA-1.5-7B: review layer 29 of 32


def default_review_layer(n_layers: int) -> int:
    """The paper's review layer (29 of 32) at the same relative depth."""
    return min(n_layers - 1, max(2, round(PAPER_REVIEW_DEPTH * n_layers)))


@dataclass(frozen=True)
class ContrastiveMask(Intervention):
    """The contrastive-attention intervention, in one forward pass.

    At the post-integrated layer ``post`` (default ``review - 1``) and each candidate
    layer in C, capture A; per sample choose ``i* = argmax_{i in C} H(A(i), A(post))``;
    ``IA = |A(post) - A(i*)|``; at the input of the ``review`` layer multiply the image
    tokens whose IA is below the row's ``rho``-quantile by ``lam``.

    Defaults: ``review`` at the paper's relative depth (29 of 32, see
    `default_review_layer`), ``post = review - 1``, ``candidates="all"``, ``rho=0.2``
    (the paper's best), ``lam=0.1`` (our choice: the paper does not publish lambda),
    ``heads="mean"``.

    Result: ``pre_layer [batch]``, ``distance [batch, C]`` (Hellinger to A(post)),
    ``scores [batch, n_image]`` (IA), ``weights [batch, n_image]``, ``candidates [C]``.
    """

    review: int | None = None
    post: int | None = None
    candidates: Any = "all"
    rho: float = 0.2
    lam: float = 0.1
    heads: str = "mean"
    method: str = "sdpa"

    def layers_for(self, model) -> tuple[int, int, tuple[int, ...]]:
        """Resolve ``(review, post, candidates)`` for ``model``."""
        review = default_review_layer(model.n_layers) if self.review is None else self.review
        model.check_layer(review, "review layer")
        post = review - 1 if self.post is None else self.post
        model.check_layer(post, "post-integrated layer")
        if post >= review:
            raise ValueError(f"post-integrated layer {post} must come before the review layer {review}")
        return review, post, con.candidate_layers(self.candidates, model.n_layers, post)

    def validate(self, model) -> None:
        con.check_rho_lam(self.rho, self.lam)
        self.layers_for(model)
        _check_method(model, self.method)
        if self.heads == "none":
            raise ValueError("contrastive attention needs one distribution per sample: heads='mean' or 'max'")

    def steps(self, model, batch, result):
        review, post, candidates = self.layers_for(model)
        captured: dict[int, torch.Tensor] = {}
        steps = _capture_steps(model, batch, sorted({*candidates, post}), self.heads, self.method,
                               captured.__setitem__)

        def mask_review_input(hidden, _):
            stacked = torch.stack([captured[i] for i in candidates], 1)  # [batch, C, n_image]
            valid = batch.image_valid.to(stacked.device)
            pre_layer, pre, distance = con.select_pre_layer(stacked, captured[post], candidates)
            scores = con.contrastive_scores(captured[post], pre)
            weights = con.contrastive_weights(scores, valid, self.rho, self.lam)
            result.update(pre_layer=pre_layer, distance=distance, scores=scores, weights=weights,
                          candidates=torch.tensor(candidates))
            return hidden * _image_multiplier(batch, weights, hidden)

        return steps + [Step(review, "input", mask_review_input)]
