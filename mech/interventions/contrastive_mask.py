"""The contrastive-attention intervention of the paper (`ContrastiveMask`) and the default
review layer at the paper's relative depth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import contrastive as con
from .base import LOCATIONS, Intervention, Step
from .capture import capture_steps, check_method
from .masks import image_multiplier, suppress_keys

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
      the logits); λ = 0 removes them. It acts at every generated token (`decode_steps`:
      `mech.run`, and `mech.apply` given ``max_new_tokens`` inside ``model.generate``).

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
        check_method(model, self.method)
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
    def acts_on_generation(self) -> bool:
        return self.mask_at == "attention"

    def steps(self, model, batch, result):
        review, post, candidates = self.layers_for(model)
        captured: dict[int, torch.Tensor] = {}
        steps = capture_steps(model, batch, sorted({*candidates, post}), self.heads, self.method,
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
                return suppress_keys(batch, weights())(call, state)
            return steps + [Step(layer, "attention_inputs", suppress) for layer in range(review, model.n_layers)]

        def scale(hidden, _):
            return hidden * image_multiplier(batch, weights(), hidden)

        return steps + [Step(review, self.mask_at, scale)]

    def decode_steps(self, model, batch, result, step):
        if self.mask_at != "attention":
            return []
        review = self.layers_for(model)[0]
        suppress = suppress_keys(batch, result["weights"])
        return [Step(layer, "attention_inputs", suppress) for layer in range(review, model.n_layers)]
