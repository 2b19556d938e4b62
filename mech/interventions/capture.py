"""Image-attention capture: A(i), the attention of the last prompt token (or of every
generation step's new token) to the image tokens (`CaptureImageAttention`), and the
capture steps `ContrastiveMask` reuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .. import attention as attn
from ..batch import Batch
from .base import Intervention, Step

QUERIES = {
    "last": "the last prompt token (the query whose output is the first new token)",
    "generated": "at every generation step the query that produces its token: step 0 the last prompt "
                 "token, step s the token generated at step s - 1",
}


def head_dim_of(model) -> int:
    config = model.config.text_config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def capture_steps(model, batch: Batch, layers: Iterable[int], heads: str, method: str,
                  store: Callable[[int, torch.Tensor], None]) -> list[Step]:
    """Steps that compute A(i) for ``layers`` on the prefill and hand each to ``store(layer, A)``."""
    head_dim = head_dim_of(model)
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


def decode_capture_steps(model, batch: Batch, layers: Iterable[int], heads: str, method: str,
                         store: Callable[[int, torch.Tensor], None]) -> list[Step]:
    """Steps that compute the new token's A(i) at one generation step after the prefill.

    Under SDPA from its q/k and the keys already in the layer's KV cache (read before
    this step adds its own, and never sent anywhere); with ``method="eager"`` from the
    eager weights. Either way over the keys the layer attends to (a sliding-window
    layer's window), with the mask it was called with, mapped back to prompt positions.
    """
    head_dim = head_dim_of(model)
    steps = []
    for layer in layers:
        def inputs(call, state):
            args, kwargs = call
            cache = kwargs["past_key_values"]
            state["rotary"] = kwargs["position_embeddings"]
            state["mask"] = kwargs.get("attention_mask")  # after any edit at this layer (observe)
            state["cached"] = cache.layers[state["layer"]].keys  # before this step's update
            state["total"] = cache.get_seq_length(state["layer"]) + 1  # positions so far, this one included

        def from_qk(qk, state, layer=layer):
            cos, sin = state["rotary"]
            scaling = model.layers[layer].self_attn._module.scaling
            row = attn.new_token_attention_row(qk[0][:, -1:], qk[1][:, -1:], cos[:, -1:], sin[:, -1:],
                                               state["cached"], head_dim=head_dim, scaling=scaling,
                                               mask=state["mask"])
            row = attn.prompt_positions(row, state["total"], batch.seq_len)
            store(layer, attn.image_attention(row, batch.image_index, batch.image_valid, heads))

        def from_weights(weights, state):
            row = attn.prompt_positions(weights[:, :, -1, :].float(), state["total"], batch.seq_len)
            store(state["layer"], attn.image_attention(row, batch.image_index, batch.image_valid, heads))

        steps.append(Step(layer, "attention_inputs", inputs, observe=True))
        steps.append(Step(layer, "attention_weights", from_weights) if method == "eager"
                     else Step(layer, "query_key", from_qk))
    return steps


def check_method(model, method: str) -> None:
    if method not in ("sdpa", "eager"):
        raise ValueError(f"method={method!r}; use 'sdpa' (from q/k, any attention) or 'eager'")
    if method == "eager" and model.config._attn_implementation != "eager":
        raise ValueError("method='eager' reads attention weights, which only eager attention "
                         "returns: load with mech.load(..., attn_implementation='eager')")


@dataclass(frozen=True)
class CaptureImageAttention(Intervention):
    """Capture A(i), the attention of a query token to the image tokens, at ``layers``.

    ``query="last"`` (default): the last prompt token. Result ``{layer: A}`` with A
    ``[batch, n_image]`` (``[batch, heads, n_image]`` for ``heads="none"``).

    ``query="generated"``: the query of every generation step, the one that produces its
    token (step 0: the last prompt token, so it equals ``"last"``; step s: the token
    generated at step s - 1). Inside ``model.generate`` pass ``mech.apply`` the
    generate's ``max_new_tokens``; all steps run in that one generate. Result
    ``{layer: A, "steps": n}`` with A ``[batch, step, n_image]`` (``[batch, step, heads,
    n_image]``) and ``n`` ``[batch]`` the steps each row took part in (up to and including
    the one that produced its EOS); A is NaN at the steps after a row's EOS, where
    ``generate`` only pads.

    Each A is renormalised to sum 1 over each row's image tokens; a row whose image
    tokens get no attention at all (every one blocked by `Knockout`) is all zeros.
    ``method="sdpa"`` recomputes the row from q/k (at generation steps, against the keys
    in the layer's KV cache) and the layer's own attention mask: no attention matrix, any
    attention implementation. ``"eager"`` reads the eager weights (a checked fallback).
    Both report the attention the layer computed: with the edits of `Knockout`,
    ``ScaleImage(at="attention")`` or an attention-mode `ContrastiveMask` at that layer,
    and with ``at="normed"`` scaling of its keys.
    """

    layers: Sequence[int]
    heads: str = "mean"
    method: str = "sdpa"
    query: str = "last"

    def validate(self, model) -> None:
        if not list(self.layers):
            raise ValueError("CaptureImageAttention needs at least one layer")
        for layer in self.layers:
            model.check_layer(layer)
        if self.heads not in attn.HEAD_REDUCTIONS:
            raise ValueError(f"heads={self.heads!r}; choose one of {attn.HEAD_REDUCTIONS}")
        check_method(model, self.method)
        if self.query not in QUERIES:
            raise ValueError(f"query={self.query!r}; use one of: "
                             + "; ".join(f"{k!r} ({v})" for k, v in QUERIES.items()))

    @property
    def acts_on_generation(self) -> bool:
        return self.query == "generated"

    def store(self, result):
        if self.query == "last":
            return result.__setitem__
        return lambda layer, value: result.setdefault(layer, []).append(value)

    def steps(self, model, batch, result):
        return capture_steps(model, batch, sorted(set(self.layers)), self.heads, self.method, self.store(result))

    def decode_steps(self, model, batch, result, step):
        if self.query != "generated":
            return []
        return decode_capture_steps(model, batch, sorted(set(self.layers)), self.heads, self.method,
                                    self.store(result))

    def finish(self, batch, result, generating):
        if self.query != "generated":
            return
        if generating is None:  # one forward (a trace, or a generate given no max_new_tokens)
            generating = torch.ones(batch.size, 1, dtype=torch.bool)
        for layer in sorted(set(self.layers)):
            values = torch.stack(result[layer], 1)  # [batch, step, ...]
            live = generating.to(values.device).view(*generating.shape, *([1] * (values.dim() - 2)))
            result[layer] = values.masked_fill(~live, float("nan"))
        result["steps"] = generating.sum(1)
