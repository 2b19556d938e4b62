"""How runs are named: a run's folder name (`slug`), the short label a person reads
(`label`), and a function's name in a fingerprint."""

from __future__ import annotations

import re

from .. import store as st
from ..decoding import Decoder
from .checks import as_list


def slug(intervention) -> str:
    """Stable folder name: readable non-default parameters plus a hash of all of them.

    ``slug(None) == "baseline"``; ``slug(ZeroImage(layer=3))`` is like
    ``"zeroimage-layer3-1f0c2a9b"``; lists join their parts with ``+``.
    """
    interventions = [intervention] if isinstance(intervention, Decoder) else as_list(intervention)
    if not interventions:
        return "baseline"
    parts = []
    for iv in interventions:
        words = [type(iv).__name__.lower()]
        for f in getattr(iv, "__dataclass_fields__", {}).values():
            value = getattr(iv, f.name)
            if f.init and differs(value, f.default):
                text = st.dumps(st.canonical(value)) if not isinstance(value, str) else value
                words.append(f.name + re.sub(r"[^\w.]+", ".", text).strip("."))
        parts.append("-".join(words))
    return "+".join(parts)[:80] + "-" + st.digest(st.canonical(interventions))[:8]


def label(intervention) -> str:
    """What a person reads for a run: the class and its non-default parameters, no hash.

    ``label(None) == "no intervention"``; ``label(ZeroImage(layer=3)) == "ZeroImage layer=3"``;
    ``label(ContrastiveMask(review=5, select="random", seed=1))`` is
    ``"ContrastiveMask review=5 select=random seed=1"``; lists join their parts with ``+``.
    """
    interventions = [intervention] if isinstance(intervention, Decoder) else as_list(intervention)
    if not interventions:
        return "no intervention"
    parts = []
    for iv in interventions:
        words = [type(iv).__name__]
        for f in getattr(iv, "__dataclass_fields__", {}).values():
            value = getattr(iv, f.name)
            if f.init and differs(value, f.default):
                if isinstance(value, float):
                    text = f"{value:g}"
                elif isinstance(value, (list, tuple)):
                    text = ",".join(str(v) for v in value)
                else:
                    text = str(value) if isinstance(value, (str, int)) else "…"
                words.append(f"{f.name}={text}")
        parts.append(" ".join(words))
    return " + ".join(parts)


def differs(value, default) -> bool:
    try:
        return bool(value != default)
    except Exception:  # tensors and other odd values: show them
        return True


def function_name(fn) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    name = f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', repr(inner))}"
    if inner is not fn:
        name += st.dumps(st.canonical([list(fn.args), dict(fn.keywords)]))
    return name


def run_label(samples, what: str) -> str:
    """A run as its progress names it: the samples' datasets, then ``what`` (a `label`)."""
    datasets = ",".join(dict.fromkeys(d for d in (getattr(s, "dataset", "") for s in samples) if d))
    return f"{datasets} · {what}" if datasets else what
