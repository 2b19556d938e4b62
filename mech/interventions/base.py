"""Interventions that act inside one nnsight trace or generate.

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
* ``attention_inputs``   the self-attention call's ``(args, kwargs)`` (mask, rotary, KV cache)
* ``query_key``          ``(q, k)`` as the scores use them before rotary ``[batch, seq, heads * head_dim]``
                         (the projections; Gemma 3's ``q_norm``/``k_norm`` outputs)
* ``attn.z``             the output projection's input ``[batch, seq, heads * head_dim]``
* ``attention_weights``  the eager attention weights ``[batch, heads, seq, seq]``
* ``attn_out``           what attention adds to the residual stream ``[batch, seq, hidden]``
* ``mlp_out``            what the MLP adds to the residual stream ``[batch, seq, hidden]``
* ``output``             the hidden states leaving layer L

At one site, steps that edit run before steps that only observe (attention capture reads
the mask an attention edit left), so what is captured is what the layer computed.

Generation steps. Step 0 of a generation is the prefill (the only forward that holds the
image tokens), step s >= 1 the forward that takes generated token s - 1 and produces token
s. Interventions act on the prefill; those that also act on later steps
(``ScaleImage(at="attention")``, ``ContrastiveMask(mask_at="attention")``,
``CaptureImageAttention(query="generated")``: `Intervention.acts_on_generation`) list
``decode_steps`` for each. Given the generate's ``max_new_tokens``, `apply` runs them on
every step inside the same ``model.generate``, on nnsight's own step iteration
(``tracer.iter``), and stops where the generation stops (every row at EOS, or the
cap)::

    with model.generate(batch, max_new_tokens=8) as tr:
        attention = mech.apply(model, batch, mech.CaptureImageAttention(layers=[2], query="generated"),
                               max_new_tokens=8)
        ids = tr.result.save()

Everything inside runs as torch ops and mech functions, so it ships unchanged to an
NDIF server with ``remote=``, and a generation with per-step edits and captures is one
request: the KV cache stays on the server, only saved results come back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import nnsight
import torch

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


def apply(model, batch: Batch, *interventions: "Intervention", max_new_tokens: int | None = None):
    """Run interventions inside the current trace; returns one result per intervention.

    A single intervention returns its result alone. Results are dicts of saved tensors
    (empty for pure edits), so they come back from remote runs too.

    ``max_new_tokens``: inside ``model.generate``, the generate's own; interventions that
    act on generated tokens (`Intervention.acts_on_generation`) then act on every step
    of it (`generation_steps`). Without it (a ``model.trace``, or prefill-only
    interventions) they act on the one forward or the prefill. It must be the generate's:
    a smaller one leaves the last steps unedited, a larger one asks for a step the run
    never makes (nnsight then warns that the loop outran it, and what follows in the
    block does not run).
    """
    check_new_tokens(max_new_tokens)
    for intervention in interventions:
        intervention.validate(model)
    results = [dict() for _ in interventions]
    run_steps(model, [s for iv, r in zip(interventions, results) for s in iv.steps(model, batch, r)])
    later = [(iv, r) for iv, r in zip(interventions, results) if iv.acts_on_generation]
    generating = None
    if later and max_new_tokens is not None and max_new_tokens > 1:
        generating = generation_steps(model, batch, later, max_new_tokens)
    for intervention, result in zip(interventions, results):
        intervention.finish(batch, result, generating)
    for result in results:  # every level is saved so that unpacking keeps it too
        for value in result.values():
            nnsight.save(value)
        nnsight.save(result)
    out = results[0] if len(results) == 1 else tuple(results)
    return nnsight.save(out)


def check_new_tokens(max_new_tokens) -> None:
    if max_new_tokens is None:
        return
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: pass the generate's own max_new_tokens, an "
                         "integer >= 1 (or leave it out in a trace)")


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


def generation_eos(model) -> torch.Tensor:
    """The ids at which ``model.generate`` ends a row: its generation config's EOS (mech's
    ``Model.generate`` passes no ``eos_token_id`` of its own)."""
    eos = model.nn._module.generation_config.eos_token_id
    return torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), dtype=torch.long)


def generation_steps(model, batch: Batch, acting, max_new_tokens: int) -> torch.Tensor:
    """Inside ``model.generate``, after the prefill's steps: each ``(intervention, result)``
    of ``acting`` runs its `decode_steps` on generation steps 1 .. ``max_new_tokens - 1``.

    On nnsight's step iteration (``tracer.iter``): step s first reads the token step s - 1
    chose (``generate``'s streamer, which receives the prompt and then each step's tokens,
    finished rows already padded), ends the loop when every row has reached EOS, as
    ``generate`` does, and then runs the steps, which bind to forward s. Nothing leaves the
    worker, so on a server all of it is one request.

    Returns ``[batch, steps]`` bool: whether each row was still generating at each step
    that ran (step 0 included; a row's EOS step counts, the padding after it does not).
    """
    from nnsight.intervention.iterator import Iterations

    eos = generation_eos(model)
    streamer = model.nn.generator.streamer
    finished = torch.zeros(batch.size, dtype=torch.bool)
    generating = [~finished]
    for step in Iterations()[1:max_new_tokens]:  # tracer.iter[1:max_new_tokens]
        token = streamer.input  # [batch], chosen at step - 1
        finished = finished | torch.isin(token.cpu().flatten(), eos)
        if bool(finished.all()):
            break
        generating.append(~finished)
        run_steps(model, [s for iv, r in acting for s in iv.decode_steps(model, batch, r, step)])
    return torch.stack(generating, 1)


class Intervention:
    """Base: subclasses define ``steps`` and ``validate``; those that act on the forwards
    after the prefill also ``decode_steps`` and ``acts_on_generation``, and those whose
    result grows with the steps ``finish``."""

    def steps(self, model, batch: Batch, result: dict) -> list[Step]:
        raise NotImplementedError

    def decode_steps(self, model, batch: Batch, result: dict, step: int) -> list[Step]:
        """Steps for generation step ``step`` >= 1 (one new token per row), given what the
        prefill and earlier steps left in ``result``. Most interventions act on the
        prefill only."""
        return []

    @property
    def acts_on_generation(self) -> bool:
        """True if `decode_steps` acts: inside ``model.generate`` `apply` then runs it on
        every step (given ``max_new_tokens``)."""
        return False

    def finish(self, batch: Batch, result: dict, generating) -> None:
        """After the last step: ``generating`` is `generation_steps`' ``[batch, steps]``
        mask, or None when only the prefill (or one forward) ran."""

    def validate(self, model) -> None:
        pass

    def apply(self, model, batch: Batch, **options):
        """Shorthand for ``mech.apply(model, batch, self, **options)``."""
        return apply(model, batch, self, **options)


def check_location(at: str, name: str = "at") -> None:
    if at not in LOCATIONS:
        raise ValueError(f"{name}={at!r}; use one of: " + "; ".join(f"{k!r} ({v})" for k, v in LOCATIONS.items()))

