"""Independent references: plain PyTorch hooks on the raw module, no mech code paths."""

from __future__ import annotations

import contextlib

import torch


def image_positions(input_ids: torch.Tensor, image_token_id: int) -> list[torch.Tensor]:
    return [torch.nonzero(row == image_token_id).flatten() for row in input_ids]


def multiplier(input_ids, image_token_id, weights) -> torch.Tensor:
    """[batch, seq, 1]: weights[b][j] at the j-th image position of row b, 1 elsewhere."""
    mult = torch.ones(input_ids.shape, dtype=torch.float32)
    for b, positions in enumerate(image_positions(input_ids, image_token_id)):
        for j, p in enumerate(positions.tolist()):
            w = weights if not torch.is_tensor(weights) else weights[b, j]
            mult[b, p] = float(w)
    return mult[..., None]


@contextlib.contextmanager
def hooks(*handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def prefill_only(fn, seq_len):
    """Wrap a hook so it acts only on the prefill forward (full prompt length)."""
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != seq_len:
            return None
        return fn(module, args, kwargs)
    return hook


def scale_hook(layers, layer, at, mult, seq_len):
    module = layers[layer]
    if at == "input":
        def pre(mod, args, kwargs):
            return (args[0] * mult,) + tuple(args[1:]), kwargs
        return module.register_forward_pre_hook(prefill_only(pre, seq_len), with_kwargs=True)

    def post(mod, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != seq_len:
            return None
        return output * mult
    return module.register_forward_hook(post, with_kwargs=True)


def knockout_mask(input_ids, attention_mask, image_token_id, query_rows) -> torch.Tensor:
    """[batch, 1, seq, seq] additive mask: causal, padding, and query -> image blocked."""
    batch, seq = input_ids.shape
    mask = torch.zeros(batch, 1, seq, seq)
    blocked_value = torch.finfo(torch.float32).min
    for b in range(batch):
        image = (input_ids[b] == image_token_id)
        for q in range(seq):
            for k in range(seq):
                allowed = k <= q and bool(attention_mask[b, k])
                if allowed and bool(query_rows[b, q]) and bool(image[k]):
                    allowed = False
                if not allowed:
                    mask[b, 0, q, k] = blocked_value
    return mask


def knockout_hooks(layers, which, mask, seq_len):
    def pre(mod, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}
    return [layers[i].self_attn.register_forward_pre_hook(prefill_only(pre, seq_len), with_kwargs=True)
            for i in which]


def knockout_edit_hooks(layers, which, input_ids, image_token_id, query_rows, seq_len):
    """Block query -> image attention in the mask each layer receives (prefill only), for
    families whose masks are not causal (Gemma 3: image tokens attend both ways, sliding
    windows), where a causal reference mask would itself be wrong."""
    block = query_rows[:, None, :, None] & (input_ids == image_token_id)[:, None, None, :]

    def pre(mod, args, kwargs):
        mask = kwargs["attention_mask"]
        if mask.dtype == torch.bool:
            mask = mask & ~block
        else:
            mask = mask.masked_fill(block, torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": mask}
    return [layers[i].self_attn.register_forward_pre_hook(prefill_only(pre, seq_len), with_kwargs=True)
            for i in which]


def eager_image_attention(module, inputs, image_token_id, layers, heads="mean"):
    """A(i) from transformers' own output_attentions (eager), one list per layer of rows."""
    with torch.no_grad():
        out = module(**inputs, output_attentions=True)
    result = {}
    for layer in layers:
        weights = out.attentions[layer]  # [batch, heads, seq, seq]
        rows = []
        for b, positions in enumerate(image_positions(inputs["input_ids"], image_token_id)):
            row = weights[b, :, -1, positions]  # [heads, n_image_b]
            row = {"mean": row.mean(0), "max": row.amax(0), "none": row}[heads]
            rows.append(row / row.sum(-1, keepdim=True))
        result[layer] = rows
    return result


def normed_hook(layers, layer, mult, seq_len):
    """Scale the output of layer ``layer``'s input RMSNorm (prefill only)."""
    def post(mod, args, output):
        if output.shape[1] != seq_len:
            return None
        return output * mult.to(output.dtype)
    return layers[layer].input_layernorm.register_forward_hook(post)


def attention_scale_hooks(layers, first, key_weights):
    """From layer ``first`` on, add log(weight) to every query's attention logit toward
    each key (``key_weights`` ``[batch, prompt]``; keys beyond the prompt keep weight 1),
    at every forward: the prefill and each generated token. The mask each layer gets is
    rebuilt here as an additive float mask (0 allowed, -inf blocked)."""
    def pre(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        q_len = hidden.shape[1]
        mask = kwargs.get("attention_mask")
        length = kwargs["past_key_values"].get_seq_length(mod.layer_idx) + q_len  # positions so far
        if mask is None:
            allowed = torch.ones(hidden.shape[0], 1, q_len, length, dtype=torch.bool)
            if q_len > 1:
                allowed = allowed & torch.ones(q_len, length, dtype=torch.bool).tril(length - q_len)
            mask = allowed
        if mask.dtype == torch.bool:
            additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        else:
            additive = mask.float().masked_fill(mask <= torch.finfo(mask.dtype).min, float("-inf"))
        # one weight per position so far; a sliding-window layer's mask covers the last keys only
        weights = torch.ones(mask.shape[0], length)
        weights[:, :key_weights.shape[1]] = key_weights
        additive = additive + weights[:, length - mask.shape[-1]:].log()[:, None, None, :]
        return args, {**kwargs, "attention_mask": additive.clamp_min(torch.finfo(hidden.dtype).min).to(hidden.dtype)}
    return [layers[i].self_attn.register_forward_pre_hook(pre, with_kwargs=True) for i in range(first, len(layers))]
