"""The logit lens: `LogitLens`, what the residual stream at each layer would predict.

The residual stream leaving a layer, at chosen positions, through the model's own final
norm and output projection (`mech.families.Family.unembed`): the top-k tokens there and
the logit and rank of given target tokens, per layer and position::

    lens = mech.LogitLens(positions="image", layers=None, top_k=3, targets=[red_id, circle_id])
    with model.trace(batch):
        found = mech.apply(model, batch, lens)
    lens.to_xarray(found, tokenizer=model.processor.tokenizer)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import positions as pos
from ..checks import integer
from .base import Intervention, Step
from .cache import layer_list, position_dim

BLOCK = 256  # positions unembedded at once: bounds the [batch, block, vocab] logits alive
RESIDUALS = {"resid_post": "output", "resid_pre": "input"}


def target_ids(targets, batch_size: int) -> torch.Tensor | None:
    """``[batch, T]`` long target token ids (a list of ints is the same for every row)."""
    if targets is None:
        return None
    ids = torch.as_tensor(targets, dtype=torch.long)
    return ids.expand(batch_size, -1) if ids.dim() == 1 else ids


@dataclass(frozen=True)
class LogitLens(Intervention):
    """Logits of the residual stream ``at`` (``"resid_post"``: leaving each layer, the
    default; or ``"resid_pre"``) at ``positions`` (`mech.positions`) of ``layers`` (None:
    every layer), through the model's final norm and unembedding.

    Result, along the batch (P chosen positions, padded slots 0):

    * ``top_ids`` ``[batch, layer, P, top_k]`` and ``top_logits`` (float32), best first;
    * with ``targets`` (token ids: a list, the same for every row, or ``[batch, T]``):
      ``target_logits`` and ``target_ranks`` ``[batch, layer, P, T]`` (rank 0: the top
      token; ties rank alike);
    * ``index`` / ``valid`` ``[batch, P]``, ``layers``.

    At the last layer's ``resid_post`` the logits are the model's own. The full
    ``[batch, P, vocab]`` logits exist one block of positions at a time and are never kept.
    """

    positions: Any = "last"
    layers: Sequence[int] | None = None
    top_k: int = 5
    targets: Any = None
    at: str = "resid_post"

    def validate(self, model) -> None:
        pos.check(self.positions)
        layer_list(model, self.layers, "LogitLens")
        vocab = model.config.text_config.vocab_size
        integer("top_k", self.top_k, low=1, high=vocab, meaning="tokens kept per position")
        if self.at not in RESIDUALS:
            raise ValueError(f"at={self.at!r}; the logit lens reads one of {', '.join(RESIDUALS)}")
        if self.targets is not None:
            ids = torch.as_tensor(self.targets)
            if ids.dtype.is_floating_point or ids.dim() not in (1, 2) or ids.numel() == 0:
                raise ValueError("targets: give token ids, a list of ints or a [batch, T] integer tensor")
            if bool((ids < 0).any()) or bool((ids >= vocab).any()):
                raise ValueError(f"targets hold ids outside the vocabulary 0..{vocab - 1}")

    def steps(self, model, batch, result):
        index, valid = pos.select(batch, self.positions)
        layers = layer_list(model, self.layers, "LogitLens")
        targets = target_ids(self.targets, batch.size)
        if targets is not None and targets.shape[0] != batch.size:
            raise ValueError(f"targets hold {targets.shape[0]} rows for a batch of {batch.size}")
        result.update(index=index, valid=valid, layers=list(layers))
        if targets is not None:
            result["targets"] = targets

        def read(hidden, state):
            picked = pos.gather(hidden, index)  # [batch, P, hidden]
            found = {k: [] for k in ("top_ids", "top_logits", "target_logits", "target_ranks")}
            for start in range(0, picked.shape[1], BLOCK):
                logits = model.family.unembed(model, picked[:, start:start + BLOCK]).float()
                top = logits.topk(self.top_k, dim=-1)
                found["top_ids"].append(top.indices)
                found["top_logits"].append(top.values)
                if targets is not None:
                    ids = targets.to(logits.device)[:, None, :].expand(-1, logits.shape[1], -1)
                    chosen = logits.gather(-1, ids)  # [batch, block, T]
                    found["target_logits"].append(chosen)
                    found["target_ranks"].append((logits[..., None, :] > chosen[..., None]).sum(-1))
            i = layers.index(state["layer"])
            for key, parts in found.items():
                if not parts:
                    continue
                value = torch.cat(parts, 1) * valid.to(parts[0].device).view(*valid.shape, 1)
                if key not in result:
                    result[key] = value.new_zeros(value.shape[0], len(layers), *value.shape[1:])
                result[key][:, i] = value
        return [Step(layer, RESIDUALS[self.at], read, observe=True) for layer in layers]

    def to_xarray(self, result, tokenizer=None):
        """The result as an ``xarray.Dataset`` (dims ``sample``, ``layer``, ``position`` or
        ``image_token``, ``k``, ``target``), with ``top_tokens`` strings when a
        ``tokenizer`` is given; padded slots hold -1 ids and NaN logits."""
        import numpy as np
        import xarray as xr

        where = position_dim(self.positions)
        valid = result["valid"].cpu().numpy()[:, None, :, None]
        data = {}
        for key, last in (("top_ids", "k"), ("top_logits", "k"), ("target_logits", "target"),
                          ("target_ranks", "target")):
            if key in result:
                value = result[key].cpu().numpy()
                value = np.where(valid, value, -1 if value.dtype.kind == "i" else np.nan)
                data[key] = (("sample", "layer", where, last), value)
        if tokenizer is not None:
            ids = data["top_ids"][1]
            words = np.array(tokenizer.convert_ids_to_tokens(np.maximum(ids, 0).ravel().tolist()), dtype=object)
            data["top_tokens"] = (("sample", "layer", where, "k"), np.where(ids >= 0, words.reshape(ids.shape), ""))
        coords = {"layer": np.asarray(result["layers"]), where: np.arange(valid.shape[2]),
                  "seq_index": (("sample", where), np.where(valid[:, 0, :, 0], result["index"].cpu().numpy(), -1))}
        if "targets" in result:
            coords["target_id"] = (("sample", "target"), result["targets"].cpu().numpy())
        ds = xr.Dataset(data, coords=coords)
        ds.attrs.update(source="mech.LogitLens", residual=self.at, top_k=self.top_k)
        return ds
