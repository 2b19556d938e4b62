"""lmms-eval 0.7.3's scoring of one generation, task by task.

lmms-eval's task runner strips every generation (``str.strip``) before the task's
``process_results`` (or its default metric) sees it; each function here does the same.

* `vqav2`: ``vqav2_val``: both sides `whitespace`, `punctuation` (EvalAI's digit-comma
  trigger) and `digit_article`, always (no unanimous-answers gate, no EvalAI word step).
* `evalai_vqa`: ``textvqa_val``, ``ok_vqa_val2014``, ``vizwiz_vqa_val``: both sides
  through the EvalAI processor (`evalai`), any number of answers.
* `gqa`: ``gqa``: the ``exact_match`` metric with ``ignore_case`` and
  ``ignore_punctuation`` over one-element numpy string arrays.
* `docvqa`: ``docvqa_val``: the ``anls`` metric (the RRC rule) on the stripped generation.

Accuracies are ``statistics.mean`` over annotators left out, as the tasks compute them
(exact rational summation: it can differ from ``sum / n`` in the last bit).
"""

from __future__ import annotations

import statistics
import string
from typing import Sequence

from . import official
from .normalise import EVALAI_DIGIT_COMMA, digit_article, evalai, punctuation, whitespace

__all__ = ["vqav2", "evalai_vqa", "gqa", "docvqa"]

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _mean_leave_one_out(gold: Sequence[str], prediction: str) -> float:
    accs = official._leave_one_out(gold, prediction)
    return float(statistics.mean(accs))


def vqav2(prediction: str, answers: Sequence[str]) -> float:
    """``vqav2_val`` accuracy."""
    def norm(text):
        return digit_article(punctuation(whitespace(text), EVALAI_DIGIT_COMMA))
    return _mean_leave_one_out([norm(a) for a in answers], norm(prediction.strip()))


def evalai_vqa(prediction: str, answers: Sequence[str]) -> float:
    """``textvqa_val`` / ``ok_vqa_val2014`` / ``vizwiz_vqa_val`` accuracy."""
    return _mean_leave_one_out([evalai(a) for a in answers], evalai(prediction.strip()))


def _numpy_text(text: str) -> str:
    """What ``np.char.lower`` then ``np.char.translate`` (deleting ASCII punctuation) leave
    of ``text`` in a one-element array: numpy strings drop trailing NULs, and the
    lower-cased text is cut to the array's width (``"İx"`` -> ``"i̇"``: "İ" lower-cases to
    two characters)."""
    lowered = text.rstrip("\0").lower()[:len(text)]
    return lowered.translate(_DELETE_PUNCTUATION).rstrip("\0")


def gqa(prediction: str, answers: Sequence[str]) -> float:
    """``gqa`` exact match: lower-case and delete ``string.punctuation`` on both sides;
    the gold answer is not stripped."""
    (answer,) = answers
    return float(_numpy_text(prediction.strip()) == _numpy_text(answer))


def docvqa(prediction: str, answers: Sequence[str]) -> float:
    """``docvqa_val`` ANLS (threshold 0.5) of the stripped generation."""
    return official.anls(prediction.strip(), answers)
