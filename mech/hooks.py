"""Named hook points: the same names on every family, in TransformerLens' vocabulary.

A hook point is one activation of the forward pass that `mech.Cache` records and
`mech.Patch` replaces. Each family adapter (`mech.families`) maps the names to its own
modules (Gemma 3's attention and MLP outputs, for one, pass through its post-norms before
they join the residual stream); nothing above the adapters names a module path. Layer
``L`` is a 0-based decoder layer; ``image_embeds`` has no layer.

* ``image_embeds`` ``[batch, n_image, hidden]``: the projector's image embeddings, as the
  decoder receives them at the image tokens (no layer);
* ``resid_pre`` / ``resid_post`` ``[batch, seq, hidden]``: the residual stream entering /
  leaving layer L;
* ``ln1`` ``[batch, seq, hidden]``: L's input-norm output, which feeds q, k and v;
* ``attn.z`` ``[batch, seq, heads, head_dim]``: each head's output before ``o_proj``;
* ``attn.pattern`` ``[batch, heads, query, seq]``: the attention of chosen queries to
  every key (read-only: computed from q and k, as `mech.attention` does);
* ``attn_out`` / ``mlp_out`` ``[batch, seq, hidden]``: what the attention / MLP block adds
  to the residual stream.

So ``resid_post = resid_pre + attn_out + mlp_out`` on every family. Recorded values keep
only the chosen positions (`mech.positions`): ``seq`` becomes ``position`` (and
``query`` of ``attn.pattern`` too); a full ``seq x seq`` pattern exists only if every
position is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HookPoint:
    """One named activation.

    Attributes:
        name: mech's name (``"resid_pre"``).
        transformer_lens: TransformerLens' name of the same activation, for readers who
            know it (``blocks.{L}.`` prefixed where it has a layer).
        site: the hook site of `mech.interventions` it is read at (None: computed from
            several sites, ``attn.pattern``).
        shape: its value at one layer (``d`` is the head dimension).
        recorded: the shape `mech.Cache` keeps, per layer, for ``P`` chosen positions.
        what: one line.
        per_layer: False for ``image_embeds``, which exists once, before layer 0.
        writable: whether `mech.Patch` can replace it.
    """

    name: str
    transformer_lens: str
    site: str | None
    shape: str
    recorded: str
    what: str
    per_layer: bool = True
    writable: bool = True


HOOK_POINTS: dict[str, HookPoint] = {p.name: p for p in (
    HookPoint("image_embeds", "hook_vision_proj_out", "image_embeds", "[batch, n_image, hidden]",
              "[batch, n_image, hidden]", "the projector's image embeddings as the decoder receives them (its "
              "input embeddings at the image tokens)", per_layer=False),
    HookPoint("resid_pre", "hook_resid_pre", "input", "[batch, seq, hidden]", "[batch, P, hidden]",
              "the residual stream entering the layer"),
    HookPoint("ln1", "ln1.hook_normalized", "normed", "[batch, seq, hidden]", "[batch, P, hidden]",
              "the layer's input-norm output, which feeds its queries, keys and values"),
    HookPoint("attn.z", "attn.hook_z", "attn.z", "[batch, seq, heads, head_dim]", "[batch, P, heads, head_dim]",
              "each head's attention output before the output projection"),
    HookPoint("attn.pattern", "attn.hook_pattern", None, "[batch, heads, query, seq]", "[batch, P, heads, seq]",
              "the attention of the chosen query positions to every key (softmax weights)", writable=False),
    HookPoint("attn_out", "hook_attn_out", "attn_out", "[batch, seq, hidden]", "[batch, P, hidden]",
              "what the attention block adds to the residual stream"),
    HookPoint("mlp_out", "hook_mlp_out", "mlp_out", "[batch, seq, hidden]", "[batch, P, hidden]",
              "what the MLP block adds to the residual stream"),
    HookPoint("resid_post", "hook_resid_post", "output", "[batch, seq, hidden]", "[batch, P, hidden]",
              "the residual stream leaving the layer"),
)}
NAMES = tuple(HOOK_POINTS)


def hook_point(name: str, *, writable: bool = False, what: str = "name") -> HookPoint:
    """The `HookPoint` called ``name``; ValueError listing the names otherwise (and, with
    ``writable``, when it cannot be replaced)."""
    if name not in HOOK_POINTS:
        hint = ""
        for point in HOOK_POINTS.values():  # a TransformerLens name given: say which it is
            if "hook_" in name and name.rsplit("hook_", 1)[1] == point.transformer_lens.rsplit("hook_", 1)[1]:
                hint = f" (TransformerLens' {point.transformer_lens} is {point.name!r} here, with layers= apart)"
        raise ValueError(f"{what}={name!r} is not a hook point{hint}; use one of {', '.join(NAMES)}")
    point = HOOK_POINTS[name]
    if writable and not point.writable:
        raise ValueError(f"{what}={name!r} is computed from the queries and keys, not a value the forward "
                         f"passes on, so it cannot be patched; patch one of "
                         f"{', '.join(n for n, p in HOOK_POINTS.items() if p.writable)}")
    return point
