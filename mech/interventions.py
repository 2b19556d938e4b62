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
* ``normed``             the output of L's input RMSNorm, which feeds q/k/v ``[batch, seq, hidden]``
* ``attention_inputs``   the self-attention call's ``(args, kwargs)`` (mask, rotary)
* ``query_key``          ``(q, k)`` as the scores use them before rotary ``[batch, seq, heads * head_dim]``
                         (the projections; Gemma 3's ``q_norm``/``k_norm`` outputs)
* ``attention_weights``  the eager attention weights ``[batch, heads, seq, seq]``
* ``output``             the hidden states leaving layer L

At one site, steps that edit run before steps that only observe (attention capture reads
the mask an attention edit left), so what is captured is what the layer computed.

Interventions act on the prefill. Those that edit attention toward image tokens
(``ScaleImage(at="attention")``, ``ContrastiveMask(mask_at="attention")``) also list
``decode_steps`` for every later forward of a generation; `mech.run` and
`mech.stepwise.generate` apply them at every generated token.

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

SITES = ("input", "normed", "attention_inputs", "query_key", "attention_weights", "output")
# Where a scale acts on image tokens (ScaleImage.at, ContrastiveMask.mask_at):
LOCATIONS = {
    "input": "the hidden states entering the layer (the residual stream; the layer's own RMSNorm "
             "divides a per-token scale back out, so only later layers see it)",
    "normed": "the layer's input-RMSNorm output: its queries, keys and values see the scale; the "
              "residual stream does not",
    "attention": "the attention every query gives the image tokens at the layer and every later one "
                 "(log of the weight added to the logits; 0 removes them), at every generated token",
    "output": "the hidden states leaving the layer",
}


@dataclass(frozen=True)
class Step:
    layer: int
    site: str
    fn: Callable[[Any, dict], Any]  # (value, layer_state) -> new value or None (read only)
    observe: bool = False           # reads the site's final value, after every edit there


# -- reading and writing hook sites ---------------------------------------------


def _read(model, layer: int, site: str):
    envoy = model.layers[layer]
    if site == "input":
        return envoy.input
    if site == "normed":
        return envoy.input_layernorm.output
    if site == "output":
        return envoy.output
    if site == "attention_inputs":
        return envoy.self_attn.inputs
    if site == "query_key":
        return model.family.query_key(envoy.self_attn)
    if site == "attention_weights":
        return envoy.self_attn.output[1]
    raise ValueError(f"unknown hook site {site!r}; sites are {SITES}")


def _write(model, layer: int, site: str, value) -> None:
    envoy = model.layers[layer]
    if site == "input":
        envoy.input = value
    elif site == "normed":
        envoy.input_layernorm.output = value
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
    run_steps(model, [s for iv, r in zip(interventions, results) for s in iv.steps(model, batch, r)])
    for result in results:  # every level is saved so that unpacking keeps it too
        for value in result.values():
            nnsight.save(value)
        nnsight.save(result)
    out = results[0] if len(results) == 1 else tuple(results)
    return nnsight.save(out)


def run_steps(model, steps: Sequence[Step]) -> None:
    """Run steps of one forward in model order: each hook site read once, its value passed
    through the steps at it (edits in the given order, then observers), written back once."""
    steps = sorted(steps, key=lambda s: (s.layer, SITES.index(s.site), s.observe))  # stable
    state: dict[int, dict] = {}
    for (layer, site), group in itertools.groupby(steps, key=lambda s: (s.layer, s.site)):
        value = _read(model, layer, site)
        changed = False
        for step in group:
            new = step.fn(value, state.setdefault(layer, {"layer": layer}))
            if new is not None:
                value, changed = new, True
        if changed:
            _write(model, layer, site, value)


def apply_decode(model, batch: Batch, interventions: Sequence["Intervention"], results) -> None:
    """Inside the trace of one forward after the prefill: the interventions' `decode_steps`,
    given what `apply` returned for the prefill."""
    results = [results] if len(interventions) == 1 else list(results)
    run_steps(model, [s for iv, r in zip(interventions, results) for s in iv.decode_steps(model, batch, r)])


class Intervention:
    """Base: subclasses define ``steps`` and ``validate`` (and ``decode_steps`` if they act
    on the forwards after the prefill)."""

    def steps(self, model, batch: Batch, result: dict) -> list[Step]:
        raise NotImplementedError

    def decode_steps(self, model, batch: Batch, result: dict) -> list[Step]:
        """Steps for each forward after the prefill of a generation (one new token each),
        given the prefill's ``result``. Most interventions act on the prefill only."""
        return []

    @property
    def edits_generation(self) -> bool:
        """True if `decode_steps` acts: generation must then run one traced forward per
        token (`mech.stepwise.generate`), not ``model.generate``."""
        return False

    def validate(self, model) -> None:
        pass

    def apply(self, model, batch: Batch):
        """Shorthand for ``mech.apply(model, batch, self)``."""
        return apply(model, batch, self)


def _check_location(at: str, name: str = "at") -> None:
    if at not in LOCATIONS:
        raise ValueError(f"{name}={at!r}; use one of: " + "; ".join(f"{k!r} ({v})" for k, v in LOCATIONS.items()))


def _key_weights(batch: Batch, weights, total: int, length: int, device) -> torch.Tensor:
    """``[batch, length]`` multiplicative weight per key of a mask over the last ``length``
    of ``total`` positions (a sliding-window layer's cache keeps only its window):
    ``weights`` on the image tokens, 1 elsewhere (generated tokens too)."""
    if not isinstance(weights, torch.Tensor):
        weights = torch.full(batch.image_index.shape, float(weights))
    weights = weights.float().to(device)
    weights = torch.where(batch.image_valid.to(device), weights, torch.ones_like(weights))
    per_position = scatter_image(weights, batch.image_index.to(device), batch.seq_len, 1.0)
    per_position = torch.nn.functional.pad(per_position, (0, max(total - batch.seq_len, 0)), value=1.0)
    return per_position[:, total - length:total]


def _suppress_keys(batch: Batch, weights) -> Callable:
    """A step on ``attention_inputs``: multiply the attention every query gives each key by
    its weight before normalisation, i.e. add ``log(weight)`` to the attention logits
    (weight 0 removes the key). Works on the bool (SDPA), additive (eager) or absent mask
    of the prefill and of decode steps alike, and on sliding-window layers, whose mask
    covers only the last keys."""
    def suppress(call, state):
        args, kwargs = call
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q_len = hidden.shape[1]
        cache = kwargs.get("past_key_values")
        # positions so far, this forward's included (the cache is updated inside attention)
        total = q_len if cache is None else cache.get_seq_length(state["layer"]) + q_len
        if mask is None:  # SDPA without padding passes no mask: make the one it implies
            if q_len == batch.seq_len:  # the prefill
                mask = _additive_causal_mask(batch, hidden.dtype, hidden.device)
            else:  # new tokens: they see every key in the cache and themselves (causally)
                allowed = torch.ones(q_len, total, dtype=torch.bool, device=hidden.device).tril(total - q_len)
                mask = torch.zeros(hidden.shape[0], 1, q_len, total, dtype=hidden.dtype,
                                   device=hidden.device).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(hidden.dtype).min)
        low = torch.finfo(mask.dtype).min
        key = _key_weights(batch, weights, total, mask.shape[-1], mask.device)
        bias = torch.where(key > 0, key.clamp_min(torch.finfo(torch.float32).tiny).log(),
                           torch.full_like(key, float("-inf")))
        mask = (mask.float() + bias[:, None, None, :]).clamp_min(low).to(mask.dtype)
        return args, {**kwargs, "attention_mask": mask}
    return suppress


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
    """Scale the image tokens at decoder ``layer``, where ``at`` says (`LOCATIONS`):

    * ``"input"``: multiply the hidden states entering the layer (the residual stream);
      the layer's input RMSNorm divides a per-token scale back out (RMSNorm(w h) =
      RMSNorm(h) for w > 0), so only later layers see it;
    * ``"normed"``: multiply the input-RMSNorm output, so the layer's own queries, keys
      and values see it (the residual stream is untouched);
    * ``"attention"``: multiply the attention every query gives each image token, before
      normalisation, at this layer and every later one (``log w`` added to the logits;
      ``w = 0`` removes the tokens), for the prompt and every generated token;
    * ``"output"``: multiply the hidden states leaving the layer.

    ``weights``: a scalar, or one weight per image token ``[batch, n_image]`` in the
    batch's padded image layout (a soft mask). Padded slots are ignored.
    """

    layer: int
    weights: Any = 0.0
    at: str = "input"

    def validate(self, model) -> None:
        model.check_layer(self.layer)
        _check_location(self.at)
        if self.at == "attention" and isinstance(self.weights, torch.Tensor) and bool((self.weights < 0).any()):
            raise ValueError("weights at='attention' multiply attention: they must be >= 0")
        if self.at == "attention" and not isinstance(self.weights, torch.Tensor):
            number("weights", self.weights, low=0, meaning="at='attention' it multiplies attention")
        if isinstance(self.weights, torch.Tensor):
            if self.weights.dim() not in (0, 2):
                raise ValueError(f"weights must be a scalar or [batch, n_image], got shape "
                                 f"{tuple(self.weights.shape)}")
            if not bool(torch.isfinite(self.weights).all()):
                raise ValueError("weights hold NaN or infinite values: every weight must be a finite number")
        else:
            number("weights", self.weights, meaning="the factor on image-token hidden states")

    def steps(self, model, batch, result):
        if self.at == "attention":
            return self.decode_steps(model, batch, result)

        def scale(hidden, _):
            return hidden * _image_multiplier(batch, self.weights, hidden)
        return [Step(self.layer, self.at, scale)]

    @property
    def edits_generation(self) -> bool:
        return self.at == "attention"

    def decode_steps(self, model, batch, result):
        if self.at != "attention":
            return []
        suppress = _suppress_keys(batch, self.weights)
        return [Step(layer, "attention_inputs", suppress) for layer in range(self.layer, model.n_layers)]


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
            state["mask"] = kwargs.get("attention_mask")  # after any edit at this layer (observe)

        def from_qk(qk, state, layer=layer):
            cos, sin = state["rotary"]
            scaling = model.layers[layer].self_attn._module.scaling
            row = attn.query_attention_row(qk[0], qk[1], cos, sin, batch.inputs["attention_mask"],
                                           head_dim=head_dim, scaling=scaling, mask=state["mask"])
            store(layer, attn.image_attention(row, batch.image_index, batch.image_valid, heads))

        steps += [Step(layer, "attention_inputs", rotary, observe=True), Step(layer, "query_key", from_qk)]
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
    ``heads="none"``), renormalised to sum 1 over each row's image tokens; a row whose
    image tokens get no attention at all (every one blocked by `Knockout`) is all zeros.
    ``method="sdpa"`` recomputes the row from q/k and the layer's own attention mask (no
    attention matrix, any attention implementation); ``"eager"`` reads the eager weights
    (a checked fallback). Both report the attention the layer computed: with the edits of
    `Knockout`, ``ScaleImage(at="attention")`` or an attention-mode `ContrastiveMask` at
    that layer, and with ``at="normed"`` scaling of its keys.
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

REVIEW_DEPTH = 29 / 32     # LLaVA-1.5-7B: review layer 29 of 32 (0-based)
REVIEW_FROM_END = 3        # ... three from the end


def default_review_layer(n_layers: int) -> int:
    """The paper's review layer at the same relative depth, ``round(29/32 * n)``, but at
    least three from the end: ``min(round(29/32 * n), n - 3)`` (29 of 32, 25 of 28, 21 of 24).

    Relative depth carries the paper's layer across families of different depth; the cap
    keeps layers after it in small models: a residual-stream mask at the review layer's
    input reaches that layer's attention only through the layers after it (RMSNorm
    divides a per-token scale back out), and at the bare relative depth of an 8-layer
    model (7 of 8) none would follow. Models of 4 layers or fewer get
    ``max(1, n_layers - 2)``.
    """
    if n_layers <= 4:
        return max(1, n_layers - 2)
    return min(round(REVIEW_DEPTH * n_layers), n_layers - REVIEW_FROM_END)


MASK_AT = ("input", "normed", "attention")
# Measured on the embedded model (README, Where the mask acts): no mode gains reliably over
# the plain model or the random control; "normed" is the default because it is the one
# in which the mask acts on the review layer itself, as the method describes, for the
# same (noise-level) accuracy as "input", which RMSNorm keeps out of that layer.
DEFAULT_MASK_AT = "normed"


@dataclass(frozen=True)
class ContrastiveMask(Intervention):
    """The contrastive-attention intervention, in one forward pass.

    At the post-integrated layer ``post`` (default ``review - 1``) and each candidate
    layer in C, capture A; per sample choose ``i* = argmax_{i in C} H(A(i), A(post))``;
    ``IA = |A(post) - A(i*)|``; at the ``review`` layer scale the image tokens whose IA is
    below the row's ``rho``-quantile by ``lam``.

    ``mask_at`` says where the scale acts (the paper's Eq. 4 does not pin it down):

    * ``"input"`` (the literal reading): the hidden states entering the review
      layer. Its input RMSNorm divides a per-token scale back out (RMSNorm(λh) =
      RMSNorm(h) for λ > 0), so the review layer's own attention is unchanged and only
      the layers after it see the scaled residual (in the cache too, so every generated
      token does). At the last layer it does nothing.
    * ``"normed"`` (default, `DEFAULT_MASK_AT`): the review layer's input-RMSNorm output,
      so its queries, keys and values of the masked tokens are scaled; the residual
      stream is not.
    * ``"attention"``: the attention every query gives the masked tokens, at the review
      layer and every later one, is multiplied by λ before normalisation (log λ added to
      the logits); λ = 0 removes them. It acts at every generated token (`decode_steps`;
      `mech.run` and `mech.stepwise.generate` apply them).

    ``select``: which tokens are scaled (`mech.contrastive.SELECTIONS`): the method
    (``"contrastive"``) or a control that scales as many tokens per sample by another
    rule (``"random"`` with ``seed``, ``"high-ia"``, ``"low-attention"``,
    ``"low-pre-attention"``).

    Defaults: ``review`` three layers from the end as in the paper (29 of 32, see
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
    mask_at: str = DEFAULT_MASK_AT
    select: str = "contrastive"
    seed: int = 0

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
        if self.mask_at not in MASK_AT:
            raise ValueError(f"mask_at={self.mask_at!r}; use one of: "
                             + "; ".join(f"{k!r} ({LOCATIONS[k]})" for k in MASK_AT))
        if self.select not in con.SELECTIONS:
            raise ValueError(f"select={self.select!r}; use one of: "
                             + "; ".join(f"{k!r} ({v})" for k, v in con.SELECTIONS.items()))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: must be an integer >= 0")

    @property
    def edits_generation(self) -> bool:
        return self.mask_at == "attention"

    def steps(self, model, batch, result):
        review, post, candidates = self.layers_for(model)
        captured: dict[int, torch.Tensor] = {}
        steps = _capture_steps(model, batch, sorted({*candidates, post}), self.heads, self.method,
                               captured.__setitem__)

        def weights():
            if "weights" not in result:
                stacked = torch.stack([captured[i] for i in candidates], 1)  # [batch, C, n_image]
                valid = batch.image_valid.to(stacked.device)
                pre_layer, pre, distance = con.select_pre_layer(stacked, captured[post], candidates)
                scores = con.contrastive_scores(captured[post], pre)
                result.update(pre_layer=pre_layer, distance=distance, scores=scores,
                              weights=con.selection_weights(self.select, scores, captured[post], pre, valid,
                                                            self.rho, self.lam, self.seed),
                              candidates=torch.tensor(candidates))
            return result["weights"]

        if self.mask_at == "attention":
            def suppress(call, state):
                return _suppress_keys(batch, weights())(call, state)
            return steps + [Step(layer, "attention_inputs", suppress) for layer in range(review, model.n_layers)]

        def scale(hidden, _):
            return hidden * _image_multiplier(batch, weights(), hidden)

        return steps + [Step(review, self.mask_at, scale)]

    def decode_steps(self, model, batch, result):
        if self.mask_at != "attention":
            return []
        review = self.layers_for(model)[0]
        suppress = _suppress_keys(batch, result["weights"])
        return [Step(layer, "attention_inputs", suppress) for layer in range(review, model.n_layers)]
