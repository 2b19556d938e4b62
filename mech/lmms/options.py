"""``--model_args`` of lmms-eval's ``mech`` model, parsed and checked before any model work.

lmms-eval splits ``--model_args k=v,...`` and turns values that look like numbers or
booleans into them (``"5"`` -> 5, ``"0.2"`` -> 0.2), then adds its own ``batch_size``,
``device`` and ``max_batch_size``. `parse` turns that into what `mech.load` takes and
the intervention to apply, or raises `ModelArgsError`: one line naming the argument, the
value and what is valid. `check_layers` then checks layers against the checkpoint's
config, still before any weights load.

    pretrained=tiny|FOLDER|HUB_ID|random:FAMILY     (default tiny)
    intervention=none|zero:L|contrastive            (default none)
    zero:L takes at=input|normed|attention|output; contrastive takes ContrastiveMask's
    parameters: review, post, candidates (all|shallow|deep|[2,4,8]), rho, lam, heads,
    method, mask_at, select, seed
    revision, dtype (auto|float32|float16|bfloat16), attn_implementation, template
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass

from ..interventions import ContrastiveMask, Intervention, ZeroImage
from ..model import Model

__all__ = ["ModelArgsError", "Options", "parse", "check_layers", "check", "INTERVENTIONS"]

INTERVENTIONS = {
    "none": "the model as it is",
    "zero:L": "ZeroImage(layer=L): image tokens zeroed at decoder layer L",
    "contrastive": "ContrastiveMask: the paper's contrastive-attention mask",
}
LOAD = ("pretrained", "revision", "dtype", "attn_implementation", "template")
HARNESS = ("batch_size", "device", "max_batch_size")  # lmms-eval's own, passed to every model
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Each intervention's parameters: the dataclass fields a user may set (the layer of
# zero:L is in the spec itself).
PARAMETERS = {
    "zero": tuple(f.name for f in dataclasses.fields(ZeroImage) if f.init and f.name != "layer"),
    "contrastive": tuple(f.name for f in dataclasses.fields(ContrastiveMask) if f.init),
}


class ModelArgsError(ValueError):
    """A ``--model_args`` value mech cannot run: the message is the one line to show."""


@dataclass(frozen=True)
class Options:
    """What ``--model_args`` ask for: `mech.load`'s arguments, the intervention (None for
    none) and lmms-eval's batch size and device."""

    load: dict
    intervention: Intervention | None
    spec: str
    batch_size: int = 1
    device: str | None = None

    @property
    def interventions(self) -> list[Intervention]:
        return [] if self.intervention is None else [self.intervention]


def parse(args: dict) -> Options:
    """`Options` from lmms-eval's keyword arguments, or `ModelArgsError`."""
    args = {k: v for k, v in args.items() if v is not None}
    spec = str(args.pop("intervention", "none")).strip()
    kind, layer = _spec(spec)
    allowed = PARAMETERS.get(kind, ())
    params = {}
    for name in list(args):
        if name in LOAD or name in HARNESS:
            continue
        if name in allowed:
            params[name] = args.pop(name)
            continue
        owner = [k for k, names in PARAMETERS.items() if name in names]
        if owner:
            raise ModelArgsError(f"{name}={args[name]!r} applies to intervention="
                                 f"{'zero:L' if owner[0] == 'zero' else owner[0]}, not intervention={spec}")
        raise ModelArgsError(f"unknown argument {name}={args[name]!r}; valid: {', '.join(_valid())}")
    load = {k: args[k] for k in LOAD if k in args}
    load.setdefault("pretrained", "tiny")
    for name in ("pretrained", "revision", "attn_implementation", "template"):
        if name in load and not isinstance(load[name], str):
            load[name] = str(load[name])  # "revision=2024" arrives as an int
    if load.get("dtype", "auto") not in DTYPES:
        raise ModelArgsError(f"dtype={load['dtype']!r}; use one of {', '.join(DTYPES)}")
    if load.get("attn_implementation", "sdpa") not in ("sdpa", "eager"):
        raise ModelArgsError(f"attn_implementation={load['attn_implementation']!r}; use sdpa or eager")
    return Options(load=load, intervention=_intervention(kind, layer, params, spec), spec=spec,
                   batch_size=_batch_size(args.get("batch_size", 1)), device=_device(args.get("device")))


def check_layers(options: Options, n_layers: int, attn_implementation: str = "sdpa") -> None:
    """Run the intervention's own checks against a model of ``n_layers`` decoder layers
    (read from the checkpoint's config, before its weights load)."""
    check(options, _Shape(n_layers, attn_implementation))


def check(options: Options, model) -> None:
    """The intervention's own checks (`Intervention.validate`) on ``model`` (a `mech.Model`
    or the shape `check_layers` makes), as a `ModelArgsError`."""
    if options.intervention is None:
        return
    try:
        options.intervention.validate(model)
    except ValueError as error:
        raise ModelArgsError(f"intervention={options.spec}: {error}") from None


class _Shape:
    """What an intervention's checks read of a model (its layer count and attention
    implementation), so they can run before the weights load; ``check_layer`` is
    `mech.Model`'s own, so the messages are the same."""

    check_layer = Model.check_layer

    def __init__(self, n_layers: int, attn_implementation: str):
        self.n_layers = n_layers
        self.config = types.SimpleNamespace(_attn_implementation=attn_implementation)


def _valid() -> list[str]:
    names = [*LOAD, "intervention", *HARNESS]
    for kind, params in PARAMETERS.items():
        names += [f"{p} ({'zero:L' if kind == 'zero' else kind})" for p in params]
    return names


def _spec(spec: str) -> tuple[str, int | None]:
    known = "; ".join(f"{k} ({v})" for k, v in INTERVENTIONS.items())
    if spec in ("none", "contrastive"):
        return spec, None
    if spec.startswith("zero"):
        _, _, layer = spec.partition(":")
        if layer.strip().lstrip("-").isdigit():
            return "zero", int(layer)
        raise ModelArgsError(f"intervention={spec}: zero takes a decoder layer, e.g. zero:3")
    raise ModelArgsError(f"intervention={spec} is not known; use one of: {known}")


def _intervention(kind: str, layer: int | None, params: dict, spec: str) -> Intervention | None:
    if kind == "none":
        return None
    if kind == "zero":
        return ZeroImage(layer=layer, **params)
    if isinstance(params.get("candidates"), str) and params["candidates"].startswith("["):
        try:  # "[2,4,8]": lmms-eval keeps a bracketed list in one argument
            params["candidates"] = tuple(json.loads(params["candidates"]))
        except ValueError:
            raise ModelArgsError(f"candidates={params['candidates']}: give all, shallow, deep or a list "
                                 "of layers such as [2,4,8]") from None
    elif isinstance(params.get("candidates"), int):
        params["candidates"] = (params["candidates"],)
    for name in ("review", "post", "seed"):
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ModelArgsError(f"{name}={value!r}: must be an integer")
    try:
        return ContrastiveMask(**params)
    except TypeError as error:  # not expected: PARAMETERS lists the fields
        raise ModelArgsError(f"intervention={spec}: {error}") from None


def _batch_size(value) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or isinstance(value, float) or size < 1:
        raise ModelArgsError(f"batch_size={value!r}: mech takes a fixed batch size, an integer >= 1")
    return size


def _device(value) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text != "cpu" and not text.startswith(("cuda", "mps")):
        raise ModelArgsError(f"device={text!r}; use cpu, cuda or cuda:N")
    return text
