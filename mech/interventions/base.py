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

Hook sites, in forward order (``image_embeds`` before every layer, at layer -1), then
those of decoder layer L (`mech.hooks` names the ones a user reads and patches):

* ``image_embeds``       the decoder's input embeddings ``[batch, seq, hidden]`` (the
                         projector's image embeddings at the image tokens)
* ``input``              the hidden states entering layer L ``[batch, seq, hidden]``
* ``normed``             the output of L's input RMSNorm, which feeds q/k/v ``[batch, seq, hidden]``
* ``attention_inputs``   the self-attention call's ``(args, kwargs)`` (mask, rotary)
* ``query_key``          ``(q, k)`` as the scores use them before rotary ``[batch, seq, heads * head_dim]``
                         (the projections; Gemma 3's ``q_norm``/``k_norm`` outputs)
* ``attn.z``             the output projection's input ``[batch, seq, heads * head_dim]``
* ``attention_weights``  the eager attention weights ``[batch, heads, seq, seq]``
* ``attn_out``           what attention adds to the residual stream ``[batch, seq, hidden]``
* ``mlp_out``            what the MLP adds to the residual stream ``[batch, seq, hidden]``
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import nnsight

from ..batch import Batch

SITES = ("image_embeds", "input", "normed", "attention_inputs", "query_key", "attn.z", "attention_weights",
         "attn_out", "mlp_out", "output")
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


def read_site(model, layer: int, site: str):
    """The value of hook ``site`` of decoder ``layer`` in the current forward, where the
    family adapter says it is (`mech.families.Family.site`)."""
    if site == "query_key":
        return model.family.query_key(model.family.site(model, layer, "attention_inputs")[0])
    if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}; sites are {SITES}")
    envoy, value, element = model.family.site(model, layer, site)
    value = getattr(envoy, value)
    if element is None:
        return value
    return value[1][element] if isinstance(element, str) else value[element]


def write_site(model, layer: int, site: str, value) -> None:
    if site in ("query_key", "attention_weights") or site not in SITES:
        raise ValueError(f"hook site {site!r} is read-only")
    envoy, slot, element = model.family.site(model, layer, site)
    if element is None:
        setattr(envoy, slot, value)
    elif isinstance(element, str):  # a keyword argument of the call
        args, kwargs = envoy.inputs
        envoy.inputs = (args, {**kwargs, element: value})
    else:  # one element of a tuple (attention output, weights)
        whole = getattr(envoy, slot)
        setattr(envoy, slot, (*whole[:element], value, *whole[element + 1:]))


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
        value = read_site(model, layer, site)
        changed = False
        for step in group:
            new = step.fn(value, state.setdefault(layer, {"layer": layer}))
            if new is not None:
                value, changed = new, True
        if changed:
            write_site(model, layer, site, value)


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


def check_location(at: str, name: str = "at") -> None:
    if at not in LOCATIONS:
        raise ValueError(f"{name}={at!r}; use one of: " + "; ".join(f"{k!r} ({v})" for k, v in LOCATIONS.items()))

