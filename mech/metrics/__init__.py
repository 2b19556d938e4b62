"""Per-question scores under a named protocol.

``score(dataset, prediction, answers, protocol=...)``: the score of one generation.

* ``"lmms-eval"`` (the default): lmms-eval 0.7.3's own task scoring (`mech.metrics.lmms`)
  of ``vqav2_val``, ``gqa``, ``textvqa_val``, ``ok_vqa_val2014``, ``vizwiz_vqa_val``,
  ``docvqa_val``. It is the default because it is what published VLM tables, the paper's
  models included, are computed with, and because mech generates the way those tasks do
  (`mech.protocol`), so generation and scoring form one protocol.
* ``"official"``: each benchmark's own scorer (`mech.metrics.official`). Its VQA rule
  compares raw strings when all answers agree (it expects submissions normalised
  beforehand, as EvalAI does), so it is the number to compare with scripts that call
  ``vqaEval.py`` directly, not with leaderboard numbers.

The embedded ``shapes`` set is scored as VQAv2 (ten answers) and ``easyvqa`` as GQA (one
answer). `register` adds a scorer for a dataset of your own. Corpus scores are plain means
of the per-question scores under both protocols, so every score must be a finite number in
[0, 1]: anything else (NaN, an infinity, 1.5, a string) is an `InvalidScore` naming the
dataset, the prediction and the value, never averaged in or skipped.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from . import lmms, official
from .normalise import digit_article, evalai, punctuation

__all__ = ["score", "register", "describe", "PROTOCOLS", "DEFAULT_PROTOCOL", "SCORERS", "official", "lmms",
           "punctuation", "digit_article", "evalai", "check_protocol", "InvalidScore", "LOWEST", "HIGHEST"]

PROTOCOLS = ("lmms-eval", "official")
DEFAULT_PROTOCOL = "lmms-eval"

Scorer = Callable[[str, Sequence[str]], float]
LOWEST, HIGHEST = 0.0, 1.0  # the range of every score: accuracy is their mean


class InvalidScore(ValueError):
    """A scorer returned something that is not a score (NaN, an infinity, out of range)."""

_VQAV2 = {"official": official.vqa, "lmms-eval": lmms.vqav2}
_GQA = {"official": official.gqa, "lmms-eval": lmms.gqa}

# dataset -> protocol -> scorer(prediction, answers)
SCORERS: dict[str, Mapping[str, Scorer]] = {
    "vqav2": _VQAV2,
    "okvqa": {"official": official.vqa, "lmms-eval": lmms.evalai_vqa},
    "vizwiz": {"official": official.vqa, "lmms-eval": lmms.evalai_vqa},
    "textvqa": {"official": official.textvqa, "lmms-eval": lmms.evalai_vqa},
    "gqa": _GQA,
    "docvqa": {"official": official.anls, "lmms-eval": lmms.docvqa},
    "shapes": _VQAV2,
    **{f"shapes-{kind}": _VQAV2 for kind in ("dots", "speckle", "crowd")},
    "easyvqa": _GQA,
}
# Datasets whose scorers take exactly one gold answer.
_ONE_ANSWER = {official.gqa, lmms.gqa}
_REFERENCE = {
    official.vqa: "GT-Vision-Lab vqaEval.py at a013f00",
    official.textvqa: "TextVQA evaluator (mmf m4c_evaluators.py: EvalAI answer processor, 10 answers)",
    official.gqa: "GQA eval.py string equality after LLaVA's strip, rstrip('.'), lower",
    official.anls: "DocVQA ANLS, RRC rule (threshold 0.5)",
    lmms.vqav2: "lmms-eval 0.7.3 vqav2_val process_results",
    lmms.evalai_vqa: "lmms-eval 0.7.3 textvqa_val / ok_vqa_val2014 / vizwiz_vqa_val process_results",
    lmms.gqa: "lmms-eval 0.7.3 gqa: exact_match, ignore_case, ignore_punctuation",
    lmms.docvqa: "lmms-eval 0.7.3 docvqa_val: anls",
}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not known; use one of {', '.join(PROTOCOLS)}")
    return protocol


def score(dataset: str, prediction: str, answers: Sequence[str], protocol: str = DEFAULT_PROTOCOL) -> float:
    """Score ``prediction`` (the generated text) against ``answers`` (the dataset's gold
    answers: ten annotators for VQA-style sets, one for GQA) with ``dataset``'s scorer
    under ``protocol``. Raises ValueError for an unknown dataset or protocol, no answers,
    or (GQA-style sets) more than one answer, and `InvalidScore` if the scorer returns
    anything but a finite number in [0, 1]."""
    check_protocol(protocol)
    if dataset not in SCORERS:
        raise ValueError(f"no scorer for dataset {dataset!r}; known: {', '.join(sorted(SCORERS))} "
                         "(add yours with mech.metrics.register or mech.datasets.register)")
    if not isinstance(prediction, str):
        raise TypeError(f"{dataset}: the prediction must be a string, not {type(prediction).__name__}")
    if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"{dataset}: answers must be a sequence of strings, got {answers!r}")
    if len(answers) == 0:
        raise ValueError(f"{dataset}: no gold answers to score against")
    scorer = SCORERS[dataset][protocol]
    if scorer in _ONE_ANSWER and len(answers) != 1:
        raise ValueError(f"{dataset}: scored as GQA, which has exactly one gold answer; got {len(answers)}")
    return checked(dataset, protocol, prediction, scorer(prediction, answers))


def checked(dataset: str, protocol: str, prediction: str, value) -> float:
    """``value`` as a float if it is a score (finite, in [`LOWEST`, `HIGHEST`]), else
    `InvalidScore` naming the dataset, the protocol, the prediction and the value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not LOWEST <= number <= HIGHEST:
        raise InvalidScore(f"dataset {dataset}: its {protocol} scorer returned {value!r} for the prediction "
                           f"{prediction!r}; a score must be a finite number in [{LOWEST:g}, {HIGHEST:g}] "
                           "(fix the scorer: accuracy is the mean of every score, none may be left out)")
    return number


def describe(dataset: str, protocol: str = DEFAULT_PROTOCOL) -> str:
    """What scores ``dataset`` under ``protocol``, in words (recorded in study datasets)."""
    scorer = SCORERS[dataset][check_protocol(protocol)]
    return _REFERENCE.get(scorer, f"{getattr(scorer, '__module__', '?')}.{getattr(scorer, '__qualname__', scorer)}")


def register(dataset: str, scorer: Scorer | Mapping[str, Scorer] | str, *, replace: bool = False) -> None:
    """Score ``dataset`` with ``scorer``: a function ``(prediction, answers) -> float`` in
    [0, 1] (checked on every call, see `score`) used under every protocol, a mapping ``{protocol: function}`` covering `PROTOCOLS`, or the
    name of a dataset whose scorers to share (``"vqav2"`` for ten-answer VQA, ``"gqa"`` for
    one answer, ``"docvqa"`` for ANLS)."""
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(f"metric {scorer!r}: name one of {', '.join(sorted(SCORERS))} or give a function")
        table = SCORERS[scorer]
    elif callable(scorer):
        table = {p: scorer for p in PROTOCOLS}
    elif isinstance(scorer, Mapping):
        missing = [p for p in PROTOCOLS if p not in scorer]
        if missing or not all(callable(f) for f in scorer.values()):
            raise ValueError(f"metric for {dataset!r}: a mapping needs a function for each of "
                             f"{', '.join(PROTOCOLS)} (missing: {missing})")
        table = dict(scorer)
    else:
        raise TypeError(f"metric must be a function, a {{protocol: function}} mapping or a dataset name, "
                        f"not {type(scorer).__name__}")
    if dataset in SCORERS and not replace and SCORERS[dataset] is not table:
        raise ValueError(f"dataset {dataset!r} already has a scorer; pass replace=True to change it")
    SCORERS[dataset] = table
