"""Image attention A(i): how the query token attends to the image tokens at layer i.

Under SDPA the attention matrix is never formed, so A(i) is recomputed from the
layer's own query/key projections: one query row per head against all keys, i.e.
``O(heads * seq * head_dim)`` work and memory, never ``seq x seq``. Reading the
weights of an eager layer (``output_attentions``) is the checked fallback.

Reductions: the attention row of each head is a softmax over *all* keys; the image
slice is reduced over heads (``"mean"``, ``"max"``, or ``"none"`` to keep heads) and
then renormalised to sum 1 over the row's image tokens.
"""

from __future__ import annotations

import torch

from .batch import gather_image

HEAD_REDUCTIONS = ("mean", "max", "none")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama/Mistral rotary embedding (rotate-half convention).

    Args:
        x: ``[batch, heads, seq, head_dim]``.
        cos, sin: ``[batch, seq, head_dim]`` as the rotary module returns them.
    """
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


KEY_BLOCK = 128  # key positions rotated at once by `query_attention_row`


def query_attention_row(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, key_padding: torch.Tensor, *, head_dim: int,
                        scaling: float, position: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query position to every key, per head, from projections.

    Args:
        query: ``q_proj`` output ``[batch, seq, heads * head_dim]``.
        key: ``k_proj`` output ``[batch, seq, kv_heads * head_dim]``.
        cos, sin: rotary embeddings ``[batch, seq, head_dim]``.
        key_padding: ``[batch, seq]`` attention mask (1 = real token).
        position: query position (``-1``: the last prompt token; with left padding it is
            the last position of every row). Keys after it are causally masked.
        mask: the attention mask the layer was called with, ``[batch, 1 or heads, seq, seq]``
            (bool: True attends; or additive), when there is one: its row at ``position``
            is applied as the layer applies it, so edits (knockout, attention scaling) show.
            None: causal plus ``key_padding``, what SDPA does without a mask.
    Returns:
        ``[batch, heads, seq]`` float32 softmax weights (rows sum to 1).
    """
    batch, seq, _ = query.shape
    position = position % seq
    q = query.view(batch, seq, -1, head_dim).transpose(1, 2)[:, :, position:position + 1]
    k = key.view(batch, seq, -1, head_dim).transpose(1, 2)
    q = apply_rope(q.float(), cos[:, position:position + 1].float(), sin[:, position:position + 1].float())
    heads, kv_heads = q.shape[1], k.shape[1]
    # Grouped-query attention: head h reads kv head h // groups; grouping the query heads
    # by kv head avoids copying the keys once per group.
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    # Rotate the keys a block of positions at a time: a whole rotated float32 copy (and
    # its temporaries) would add several key-sized tensors to the forward's peak memory.
    scores = torch.empty(batch, kv_heads, heads // kv_heads, seq, dtype=torch.float32, device=query.device)
    for start in range(0, seq, KEY_BLOCK):
        end = min(start + KEY_BLOCK, seq)
        block = apply_rope(k[:, :, start:end].float(), cos[:, start:end].float(), sin[:, start:end].float())
        scores[..., start:end] = q @ block.transpose(-1, -2)
    scores = scores.reshape(batch, heads, seq) * scaling  # [batch, heads, seq]
    if mask is not None:
        row = mask[:, :, position, :seq]  # [batch, 1 or heads, seq]
        if row.dtype == torch.bool:
            return scores.masked_fill(~row, float("-inf")).softmax(-1)
        low = torch.finfo(row.dtype).min
        return (scores + row.float()).masked_fill(row <= low, float("-inf")).softmax(-1)
    allowed = key_padding.bool().clone()
    allowed[:, position + 1:] = False
    scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
    return scores.softmax(-1)


def new_token_attention_row(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            cached_keys: torch.Tensor | None, *, head_dim: int, scaling: float,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of a generation step's one new token to every key it sees, per head.

    Args:
        query, key: its ``q_proj`` / ``k_proj`` outputs ``[batch, 1, heads * head_dim]`` and
            ``[batch, 1, kv_heads * head_dim]`` (before rotary, as `query_attention_row`).
        cos, sin: its rotary embeddings ``[batch, 1, head_dim]``.
        cached_keys: the layer's KV-cache keys before this step ``[batch, kv_heads, cached,
            head_dim]`` (rotary applied; a sliding-window layer keeps only its window), or
            None for an empty cache.
        mask: the mask the layer was called with, ``[batch, 1 or heads, 1, cached + 1]``
            (bool: True attends; or additive), or None (every key visible).
    Returns:
        ``[batch, heads, cached + 1]`` float32 softmax weights over the cached keys and the
        new token's own (rows sum to 1), in cache order.
    """
    batch = query.shape[0]
    q = apply_rope(query.view(batch, 1, -1, head_dim).transpose(1, 2).float(), cos.float(), sin.float())
    k = apply_rope(key.view(batch, 1, -1, head_dim).transpose(1, 2).float(), cos.float(), sin.float())
    keys = k if cached_keys is None else torch.cat([cached_keys.float(), k], 2)  # [batch, kv_heads, keys, hd]
    heads, kv_heads = q.shape[1], keys.shape[1]
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # grouped-query attention, as above
    scores = (q @ keys.transpose(-1, -2)).reshape(batch, heads, -1) * scaling
    if mask is None:
        return scores.softmax(-1)
    row = mask[:, :, -1, -scores.shape[-1]:]
    if row.dtype == torch.bool:
        return scores.masked_fill(~row, float("-inf")).softmax(-1)
    low = torch.finfo(row.dtype).min
    return (scores + row.float()).masked_fill(row <= low, float("-inf")).softmax(-1)


def prompt_positions(row: torch.Tensor, total: int, seq_len: int) -> torch.Tensor:
    """Weights over the last ``row.shape[-1]`` of ``total`` positions ``[batch, heads, keys]``
    -> over the prompt's ``seq_len`` positions ``[batch, heads, seq_len]`` (0 for prompt
    positions a sliding window no longer holds), ready for `image_attention`."""
    first = total - row.shape[-1]  # position of the first key
    if first <= 0:
        return row[..., -first:seq_len - first]
    return torch.nn.functional.pad(row[..., :max(seq_len - first, 0)], (min(first, seq_len), 0))


def image_attention(row: torch.Tensor, image_index: torch.Tensor, image_valid: torch.Tensor,
                    heads: str = "mean") -> torch.Tensor:
    """Reduce a per-head attention row to the image-attention distribution A.

    Args:
        row: ``[batch, heads, seq]`` attention of the query token to every key.
        image_index, image_valid: the batch's image layout ``[batch, n_image]``.
        heads: ``"mean"`` or ``"max"`` over heads, or ``"none"`` to keep them.
    Returns:
        ``[batch, n_image]`` (``[batch, heads, n_image]`` for ``"none"``), summing to 1 over
        each row's valid image tokens, 0 on padded slots.
    """
    if heads not in HEAD_REDUCTIONS:
        raise ValueError(f"heads={heads!r}; choose one of {HEAD_REDUCTIONS}")
    on_image = gather_image(row.float(), image_index)  # [batch, heads, n_image]
    on_image = on_image * image_valid[:, None, :]
    if heads == "mean":
        on_image = on_image.mean(1)
    elif heads == "max":
        on_image = on_image.amax(1)
    total = on_image.sum(-1, keepdim=True)
    return on_image / total.clamp_min(torch.finfo(on_image.dtype).tiny)


def query_attention_rows(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         key_padding: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, *,
                         head_dim: int, scaling: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`query_attention_row` for several query positions per row (the ``attn.pattern``
    hook point): ``O(heads * P * seq)`` memory for ``P`` queries, ``seq x seq`` only when
    every position is asked for.

    Args:
        query, key, cos, sin, key_padding, mask: as `query_attention_row`.
        index, valid: ``[batch, P]`` query positions of each row (`mech.positions`; padded
            slots hold ``seq``) and which slots are real.
    Returns:
        ``[batch, heads, P, seq]`` float32 softmax weights; padded query slots are 0.
    """
    batch, seq, _ = query.shape
    at = index.to(query.device).clamp(max=seq - 1)
    n = at.shape[1]
    q = query.view(batch, seq, -1, head_dim)
    q = q.gather(1, at[:, :, None, None].expand(-1, -1, q.shape[2], head_dim)).transpose(1, 2)  # [b, h, P, d]
    pick = at[..., None].expand(-1, -1, cos.shape[-1])
    q = apply_rope(q.float(), cos.gather(1, pick).float(), sin.gather(1, pick).float())
    k = key.view(batch, seq, -1, head_dim).transpose(1, 2)
    heads, kv_heads = q.shape[1], k.shape[1]
    q = q.reshape(batch, kv_heads, heads // kv_heads * n, head_dim)  # grouped-query attention
    scores = torch.empty(batch, kv_heads, q.shape[2], seq, dtype=torch.float32, device=query.device)
    for start in range(0, seq, KEY_BLOCK):  # keys rotated a block at a time, as above
        end = min(start + KEY_BLOCK, seq)
        block = apply_rope(k[:, :, start:end].float(), cos[:, start:end].float(), sin[:, start:end].float())
        scores[..., start:end] = q @ block.transpose(-1, -2)
    scores = scores.reshape(batch, heads, n, seq) * scaling
    if mask is not None:
        rows = mask.gather(2, at[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1]))[..., :seq]
        if rows.dtype == torch.bool:
            weights = scores.masked_fill(~rows, float("-inf")).softmax(-1)
        else:
            low = torch.finfo(rows.dtype).min
            weights = (scores + rows.float()).masked_fill(rows <= low, float("-inf")).softmax(-1)
    else:
        keys = torch.arange(seq, device=query.device)
        allowed = key_padding.bool().to(query.device)[:, None, :] & (keys[None, None, :] <= at[:, :, None])
        weights = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    return weights * valid.to(weights.device)[:, None, :, None]
