"""Contrastive attention: Hellinger distances, the pre-integrated layer, the mask.

Post-integrated layer k (default: the layer before the review layer). For each
sample, the pre-integrated layer is ``i* = argmax_{i in C} H(A(i), A(k))`` over a
candidate set C; the contrastive scores are ``IA = |A(k) - A(i*)|``; image tokens
whose IA is below the row's rho-quantile are multiplied by lambda at the input of the
review layer. All functions are batched torch ops (they run inside a trace, also
remotely) over the padded image layout ``[batch, n_image]`` with ``valid`` masks.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .checks import number

STRATEGIES = ("all", "shallow", "deep")
# Which image tokens are scaled by lambda. "contrastive" is the method; the others are
# controls that scale exactly as many tokens per sample (see `selection_weights`).
SELECTIONS = {
    "contrastive": "the tokens with the lowest contrastive score IA (below the rho-quantile): the method",
    "random": "as many tokens at random slots (a fixed seeded order of image-token slots)",
    "high-ia": "as many tokens with the highest IA (the opposite selection)",
    "low-attention": "as many tokens with the lowest plain attention A(post)",
    "low-pre-attention": "as many tokens with the lowest attention at the pre-integrated layer, A(i*)",
}


def hellinger(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Hellinger distance ``sqrt(1/2 * sum (sqrt p - sqrt q)^2)`` along ``dim``, in [0, 1].

    ``p`` and ``q`` broadcast against each other (e.g. ``[batch, C, n]`` vs ``[batch, 1, n]``).
    """
    diff = p.clamp_min(0).sqrt() - q.clamp_min(0).sqrt()
    return (0.5 * diff.pow(2).sum(dim)).sqrt()


def candidate_layers(candidates, n_layers: int, post: int) -> tuple[int, ...]:
    """Resolve a candidate set C for the pre-integrated layer.

    ``"all"``: every layer below ``post``; ``"shallow"``: the first half of the stack
    (layers ``< n_layers // 2``); ``"deep"``: layers from ``n_layers // 2`` up to ``post - 1``;
    or an explicit iterable of layers (e.g. the fusion set S). All must lie below ``post``.
    """
    if isinstance(candidates, str):
        if candidates not in STRATEGIES:
            raise ValueError(f"candidates={candidates!r}; use one of {STRATEGIES} or a list of layers")
        half = n_layers // 2
        layers = {"all": range(0, post), "shallow": range(0, min(half, post)),
                  "deep": range(half, post)}[candidates]
    else:
        layers = sorted({int(i) for i in candidates})
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"the candidate set {candidates!r} is empty for post-integrated layer "
                         f"{post}; give at least one layer below {post}")
    bad = [i for i in layers if not 0 <= i < post]
    if bad:
        raise ValueError(f"candidate layers {bad} are not below the post-integrated layer {post}: "
                         f"candidates must be in 0..{post - 1}")
    return layers


def select_pre_layer(candidate_attention: torch.Tensor, post_attention: torch.Tensor,
                     candidates: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the pre-integrated layer per sample.

    Args:
        candidate_attention: ``[batch, C, n_image]`` A(i) for the candidate layers.
        post_attention: ``[batch, n_image]`` A(k).
        candidates: the C layer indices, in the order of dim 1.
    Returns:
        ``(pre_layer [batch] long, pre_attention [batch, n_image], distance [batch, C])``.
    """
    distance = hellinger(candidate_attention, post_attention[:, None, :])
    choice = distance.argmax(-1)
    layers = torch.tensor(list(candidates), device=choice.device)
    pre_attention = candidate_attention[torch.arange(choice.shape[0], device=choice.device), choice]
    return layers[choice], pre_attention, distance


def contrastive_scores(post_attention: torch.Tensor, pre_attention: torch.Tensor) -> torch.Tensor:
    """``IA = |A(k) - A(i*)|``, ``[batch, n_image]``."""
    return (post_attention - pre_attention).abs()


def row_quantile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-quantile over the valid entries (numpy's default linear rule).

    Args:
        values, valid: ``[batch, n]``; every row needs at least one valid entry.
    Returns:
        ``[batch]``.
    """
    ordered = values.masked_fill(~valid, float("inf")).sort(-1).values
    count = valid.sum(-1)
    rank = q * (count - 1).to(values.dtype)
    low = rank.floor().long()
    high = rank.ceil().long()
    v_low = ordered.gather(-1, low[:, None]).squeeze(-1)
    v_high = ordered.gather(-1, high[:, None]).squeeze(-1)
    return v_low + (rank - low.to(values.dtype)) * (v_high - v_low)


def contrastive_weights(scores: torch.Tensor, valid: torch.Tensor, rho: float, lam: float) -> torch.Tensor:
    """Soft-mask weights ``[batch, n_image]``: ``lam`` where IA < rho-quantile, else 1."""
    threshold = row_quantile(scores, valid, rho)
    low = (scores < threshold[:, None]) & valid
    return torch.where(low, torch.full_like(scores, lam), torch.ones_like(scores))


def check_rho_lam(rho: float, lam: float) -> None:
    """ValueError unless ``rho`` is in [0, 1] and ``lam`` finite and >= 0 (NaN and
    infinities included)."""
    number("rho", rho, low=0, high=1, meaning="the quantile of contrastive scores below which image tokens "
           "are scaled; paper's best 0.2")
    number("lam", lam, low=0, meaning="it multiplies low-score image tokens: 0 removes them, 1 leaves them; "
           "default 0.1")


def slot_keys(n: int, seed: int, device=None) -> torch.Tensor:
    """``[n]`` int64 pseudo-random keys of image-token slots 0..n-1 for ``seed``: an integer
    hash, the same on every device and for every batch (slot j's key does not depend on
    how many slots the batch has)."""
    x = torch.arange(n, device=device, dtype=torch.int64) + (int(seed) + 1) * 0x9E3779B1 % 0x7FFFFFFF
    for _ in range(3):
        x = x ^ (x >> 15)
        x = (x * 0x2C1B3C6D) & 0x7FFFFFFF
        x = x ^ (x >> 12)
        x = (x * 0x297A2D39) & 0x7FFFFFFF
    return x


def selection_weights(select: str, scores: torch.Tensor, post_attention: torch.Tensor,
                      pre_attention: torch.Tensor, valid: torch.Tensor, rho: float, lam: float,
                      seed: int = 0) -> torch.Tensor:
    """Weights ``[batch, n_image]`` (``lam`` on the selected tokens, 1 elsewhere).

    ``"contrastive"`` is `contrastive_weights`; every other selection (`SELECTIONS`) scales
    exactly as many tokens per row as the contrastive one, chosen by its own ranking
    (ties by slot order), so a control differs from the method only in *which* tokens.
    """
    if select == "contrastive":
        return contrastive_weights(scores, valid, rho, lam)
    count = ((scores < row_quantile(scores, valid, rho)[:, None]) & valid).sum(-1)
    if select == "random":
        rank_by = slot_keys(scores.shape[-1], seed, scores.device).to(torch.float64).expand_as(scores)
    elif select == "high-ia":
        rank_by = -scores.double()
    elif select == "low-attention":
        rank_by = post_attention.double()
    elif select == "low-pre-attention":
        rank_by = pre_attention.double()
    else:
        raise ValueError(f"select={select!r}; use one of {', '.join(SELECTIONS)}")
    order = rank_by.masked_fill(~valid, float("inf")).argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                            .expand_as(order).contiguous())
    chosen = (rank < count[:, None]) & valid
    return torch.where(chosen, torch.full_like(scores, lam), torch.ones_like(scores))
