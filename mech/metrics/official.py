"""Each benchmark's own scorer, as its current reference code scores one prediction.

* `vqa`: VQAv2, OK-VQA, VizWiz: GT-Vision-Lab ``PythonEvaluationTools/vqaEvaluation/
  vqaEval.py`` at commit a013f0043c1e2cdc995922dfe257f7149aa9af06.
* `textvqa`: the TextVQA evaluation (``TextVQAAccuracyEvaluator`` with the EvalAI answer
  processor, facebookresearch/mmf ``mmf/utils/m4c_evaluators.py``).
* `gqa`: the official GQA ``eval.py`` (``prediction == answer``) after LLaVA's
  post-processing of the generation (strip, then ``rstrip('.')`` and ``lower()``).
* `anls`: DocVQA's ANLS as the RRC evaluation script computes it.

Every function takes the prediction as generated and the gold answers as the dataset
gives them, and returns the per-question score (corpus scores are plain means).
"""

from __future__ import annotations

from typing import Sequence

from .normalise import OFFICIAL_DIGIT_COMMA, digit_article, evalai, punctuation, whitespace

__all__ = ["vqa", "textvqa", "gqa", "anls", "levenshtein"]


def _leave_one_out(gold: Sequence[str], prediction: str) -> list[float]:
    """``min(1, matches among the other annotators / 3)`` with each annotator left out
    once (annotators are positions: every reference answer record is distinct)."""
    total = sum(g == prediction for g in gold)
    return [min(1, float(total - (g == prediction)) / 3) for g in gold]


def vqa(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy by ``vqaEval.py`` (a013f00).

    Prediction and answers get `whitespace`. Only when the answers are *not* all
    identical are both sides normalised (`punctuation`, `digit_article`); when they are,
    raw strings are compared, so ``"Yes"`` scores 0 against ten ``"yes"`` (the official
    code expects submissions normalised beforehand, as EvalAI does). Accuracy is the mean
    over annotators left out; with one answer nobody remains to agree, so it is 0.
    """
    gold = [whitespace(a) for a in answers]
    pred = whitespace(prediction)
    if len(set(gold)) > 1:
        gold = [digit_article(punctuation(g, OFFICIAL_DIGIT_COMMA)) for g in gold]
        pred = digit_article(punctuation(pred, OFFICIAL_DIGIT_COMMA))
    accs = _leave_one_out(gold, pred)
    return float(sum(accs)) / len(accs)


def textvqa(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA accuracy: both sides through the EvalAI processor (`evalai`), then the
    leave-one-out mean. The evaluator requires exactly ten answers."""
    if len(answers) != 10:
        raise ValueError(f"the TextVQA evaluator needs exactly 10 answers, got {len(answers)}")
    gold = [evalai(a) for a in answers]
    pred = evalai(prediction)
    if pred not in gold:
        return 0.0
    accs = _leave_one_out(gold, pred)
    return sum(accs) / len(accs)


def gqa(prediction: str, answers: Sequence[str]) -> float:
    """GQA accuracy: ``prediction.strip().rstrip('.').lower() == answer``, the gold answer
    untouched (GQA's answers are already lower-case words)."""
    (answer,) = answers
    return float(prediction.strip().rstrip(".").lower() == answer)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA ANLS of one prediction (the RRC rule).

    Both strings are stripped, lower-cased and whitespace-collapsed for the edit
    distance, which is divided by the longer *raw* length (of ``.upper()``, which can
    change a length: "ß" -> "SS"); similarity ``1 - min distance`` over the answers is
    kept when at least ``threshold``, else 0.
    """
    det = " ".join(prediction.strip().lower().split())
    dists = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        dists.append(0.0 if length == 0 else float(levenshtein(gt, det)) / float(length))
    similarity = 1 - min(dists)
    return 0 if similarity < threshold else similarity
