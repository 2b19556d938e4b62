"""Image-attention capture: A(i), the last prompt token's attention to the image tokens
(`CaptureImageAttention`), and the capture steps `ContrastiveMask` reuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .. import attention as attn
from ..batch import Batch
from .base import Intervention, Step


def capture_steps(model, batch: Batch, layers: Iterable[int], heads: str, method: str,
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


def check_method(model, method: str) -> None:
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
        check_method(model, self.method)

    def steps(self, model, batch, result):
        return capture_steps(model, batch, sorted(set(self.layers)), self.heads, self.method,
                              result.__setitem__)


