"""Record named activations at chosen positions and layers: `Cache`.

TransformerLens' ``run_with_cache``, inside any trace or generate and composable with every
other intervention: the hook points of `mech.hooks`, the positions of `mech.positions`::

    cache = mech.Cache(["resid_pre", "attn.pattern"], positions="image", layers=[2, 5])
    with model.trace(batch):
        acts = mech.apply(model, batch, cache)
    cache.to_xarray(acts)   # dims sample, layer, image_token, (head,) hidden / key
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import attention as attn
from .. import positions as pos
from ..batch import Batch
from ..hooks import HOOK_POINTS, hook_point
from .base import Intervention, Step


def layer_list(model, layers, what: str) -> list[int]:
    """``layers`` (None: every decoder layer) checked and sorted."""
    if layers is None:
        return list(range(model.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    layers = sorted(set(layers))
    if not layers:
        raise ValueError(f"{what} needs at least one layer (or layers=None for every layer)")
    for layer in layers:
        model.check_layer(layer)
    return layers


def names_of(names) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def check_image_embeds(names, positions, what: str) -> None:
    if "image_embeds" in names and not (isinstance(positions, str) and positions == "image"):
        raise ValueError(f"{what}: image_embeds exist at the image tokens only; use positions='image' (the "
                         "decoder's input at other tokens is resid_pre of layer 0)")


def pattern_steps(model, batch: Batch, layers, index, valid, store) -> list[Step]:
    """Steps computing the attention of the query positions ``index`` to every key at
    ``layers`` from the layer's own q, k, rotary and mask (after any edit there), handing
    each ``[batch, P, heads, seq]`` to ``store(i, value)``."""
    config = model.config.text_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    steps = []
    for i, layer in enumerate(layers):
        def inputs(call, state):
            _, kwargs = call
            state["rotary"], state["mask"] = kwargs["position_embeddings"], kwargs.get("attention_mask")

        def rows(qk, state, i=i, layer=layer):
            cos, sin = state["rotary"]
            scaling = model.family.site(model, layer, "attention_inputs")[0]._module.scaling
            weights = attn.query_attention_rows(qk[0], qk[1], cos, sin, batch.inputs["attention_mask"], index, valid,
                                                head_dim=head_dim, scaling=scaling, mask=state["mask"])
            store(i, weights.transpose(1, 2))
        steps += [Step(layer, "attention_inputs", inputs, observe=True), Step(layer, "query_key", rows)]
    return steps


@dataclass(frozen=True)
class Cache(Intervention):
    """Record the named activations ``names`` (`mech.hooks`) at ``positions``
    (`mech.positions`) of ``layers`` (None: every decoder layer).

    Result, one tensor per name along the batch, the padded slots of short rows 0:

    * ``name``: ``[batch, layer, P, hidden]`` (``attn.z``: ``[..., heads, head_dim]``;
      ``attn.pattern``: ``[batch, layer, P, heads, seq]``, the chosen positions as queries,
      float32; ``image_embeds``: ``[batch, n_image, hidden]``, no layer);
    * ``index`` / ``valid``: ``[batch, P]`` the sequence position of each slot (``seq`` on
      padded ones) and whether it is real; ``layers``: the layers, in order (a list).

    Memory is what was asked and nothing more: each layer's value is cut to the ``P``
    chosen positions as the forward passes it and written into one preallocated buffer
    per name (``batch x layers x P x width`` values in the model's dtype, float32 for the
    pattern), so a full ``[batch, seq, hidden]`` is never kept past its layer and a
    ``seq x seq`` pattern exists only for ``positions="all"``. `bench` measures it.

    Values are read after every edit at their site: what the layer computed under the
    other interventions of the same `mech.apply` (`mech.Patch` included).
    """

    names: Any = "resid_pre"
    positions: Any = "image"
    layers: Sequence[int] | None = None

    def validate(self, model) -> None:
        names = names_of(self.names)
        if not names:
            raise ValueError("Cache needs at least one hook point name")
        for name in names:
            hook_point(name, what="names")
        layer_list(model, self.layers, "Cache")
        pos.check(self.positions)
        check_image_embeds(names, self.positions, "Cache")

    def steps(self, model, batch, result):
        index, valid = pos.select(batch, self.positions)
        layers = layer_list(model, self.layers, "Cache")
        result.update(index=index, valid=valid, layers=list(layers))  # a list: not split per sample
        steps = []
        for name in dict.fromkeys(names_of(self.names)):
            def store(i, value, name=name):  # value [batch, P, ...] of layer slot i
                if name not in result:
                    result[name] = value.new_zeros(value.shape[0], len(layers), *value.shape[1:])
                result[name][:, i] = value

            if name == "attn.pattern":
                steps += pattern_steps(model, batch, layers, index, valid, store)
                continue
            point = HOOK_POINTS[name]

            def read(value, state, point=point, store=store):
                picked = pos.gather(value, index)
                if point.name == "attn.z":  # [batch, P, heads * head_dim] -> per head
                    picked = picked.unflatten(-1, (model.config.text_config.num_attention_heads, -1))
                if point.per_layer:
                    store(layers.index(state["layer"]), picked)
                else:
                    result[point.name] = picked
            steps += ([Step(layer, point.site, read, observe=True) for layer in layers] if point.per_layer
                      else [Step(-1, point.site, read, observe=True)])
        return steps

    def to_xarray(self, result):
        """The result as an ``xarray.Dataset``: one variable per name, dims ``sample``,
        ``layer``, ``image_token`` (``positions="image"``) or ``position``, and ``hidden``
        / ``head``, ``head_dim`` / ``head``, ``key``; padded slots NaN; coordinate
        ``seq_index`` (each slot's sequence position, -1 on padded slots)."""
        return activations_dataset(result, names_of(self.names), self.positions)


def position_dim(positions) -> str:
    return "image_token" if isinstance(positions, str) and positions == "image" else "position"


def activations_dataset(result: dict, names, positions):
    import numpy as np
    import xarray as xr

    where = position_dim(positions)
    valid = result["valid"].cpu().numpy()
    index = np.where(valid, result["index"].cpu().numpy(), -1)
    trailing = {"attn.z": ("head", "head_dim"), "attn.pattern": ("head", "key")}
    data = {}
    for name in names:
        value = result[name].detach().float().cpu().numpy()
        per_layer = HOOK_POINTS[name].per_layer
        dims = ("sample", *(("layer",) if per_layer else ()), where, *trailing.get(name, ("hidden",)))
        mask = valid[:, None] if per_layer else valid
        value = np.where(mask.reshape(mask.shape + (1,) * (value.ndim - mask.ndim)), value, np.nan)
        data[name] = xr.DataArray(value, dims=dims, attrs={"hook_point": name, "what": HOOK_POINTS[name].what})
    ds = xr.Dataset(data, coords={"layer": np.asarray(result["layers"]), where: np.arange(valid.shape[1]),
                                  "seq_index": (("sample", where), index)})
    ds.attrs.update(positions=str(positions) if not isinstance(positions, torch.Tensor) else "mask",
                    source="mech.Cache")
    return ds
