"""Per-question VQA metrics, each following the convention users compare against.

* ``vqa_accuracy``: GT-Vision-Lab ``vqaEval.py`` (VQAv2, TextVQA, OK-VQA, VizWiz, shapes).
* ``exact_match``: LLaVA's GQA protocol (``scripts/convert_gqa_for_eval.py`` + the
  GQA ``eval.py`` string comparison).
* ``anls``: DocVQA ANLS as in lmms-eval's ``anls`` metric (itself the RRC/Qwen-VL script).

Corpus scores are plain means of these per-question values, as in every reference
implementation.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

__all__ = ["vqa_accuracy", "exact_match", "anls", "METRIC_OF", "score"]

# --- vqaEval.py normalisation tables -------------------------------------------------
# Characters vqaEval.py treats as punctuation. Note: no "-" and no "!".
_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_",
          ">", "<", "@", "`", ",", "?")
# vqaEval.py's lookbehind is mistyped as the lookahead ``(?!<=\d)``, which never fires,
# so in effect a period is dropped unless a digit follows it ("3.5" keeps it, "5." not).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# Any "digit,digit" anywhere switches punctuation handling to deletion (see below).
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# vqaEval.py passes re.UNICODE (== 32) positionally to ``sub``, i.e. as ``count``.
_PERIOD_MAX_SUBS = 32
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_Q = "\u2019"  # vqaEval.py's map mostly produces curly apostrophes; kept as-is.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": f"couldn{_Q}t{_Q}ve", f"couldnt{_Q}ve": f"couldn{_Q}t{_Q}ve",
    "didnt": f"didn{_Q}t", "doesnt": f"doesn{_Q}t", "dont": f"don{_Q}t", "hadnt": f"hadn{_Q}t",
    f"hadnt{_Q}ve": f"hadn{_Q}t{_Q}ve", "hadn'tve": f"hadn{_Q}t{_Q}ve", "hasnt": f"hasn{_Q}t",
    "havent": f"haven{_Q}t", "hed": f"he{_Q}d", f"hed{_Q}ve": f"he{_Q}d{_Q}ve",
    f"he{_Q}dve": f"he{_Q}d{_Q}ve", "hes": f"he{_Q}s", "howd": f"how{_Q}d", "howll": f"how{_Q}ll",
    "hows": f"how{_Q}s", f"Id{_Q}ve": f"I{_Q}d{_Q}ve", f"I{_Q}dve": f"I{_Q}d{_Q}ve", "Im": f"I{_Q}m",
    "Ive": f"I{_Q}ve", "isnt": f"isn{_Q}t", "itd": f"it{_Q}d", f"itd{_Q}ve": f"it{_Q}d{_Q}ve",
    f"it{_Q}dve": f"it{_Q}d{_Q}ve", "itll": f"it{_Q}ll", f"let{_Q}s": f"let{_Q}s",
    "maam": f"ma{_Q}am", "mightnt": f"mightn{_Q}t", f"mightnt{_Q}ve": f"mightn{_Q}t{_Q}ve",
    f"mightn{_Q}tve": f"mightn{_Q}t{_Q}ve", "mightve": f"might{_Q}ve", "mustnt": f"mustn{_Q}t",
    "mustve": f"must{_Q}ve", "neednt": f"needn{_Q}t", "notve": f"not{_Q}ve",
    "oclock": f"o{_Q}clock", "oughtnt": f"oughtn{_Q}t", f"ow{_Q}s{_Q}at": f"{_Q}ow{_Q}s{_Q}at",
    f"{_Q}ows{_Q}at": f"{_Q}ow{_Q}s{_Q}at", f"{_Q}ow{_Q}sat": f"{_Q}ow{_Q}s{_Q}at",
    "shant": f"shan{_Q}t", f"shed{_Q}ve": f"she{_Q}d{_Q}ve", f"she{_Q}dve": f"she{_Q}d{_Q}ve",
    f"she{_Q}s": f"she{_Q}s", "shouldve": f"should{_Q}ve", "shouldnt": f"shouldn{_Q}t",
    f"shouldnt{_Q}ve": f"shouldn{_Q}t{_Q}ve", f"shouldn{_Q}tve": f"shouldn{_Q}t{_Q}ve",
    f"somebody{_Q}d": "somebodyd", f"somebodyd{_Q}ve": f"somebody{_Q}d{_Q}ve",
    f"somebody{_Q}dve": f"somebody{_Q}d{_Q}ve", "somebodyll": f"somebody{_Q}ll",
    "somebodys": f"somebody{_Q}s", "someoned": f"someone{_Q}d",
    f"someoned{_Q}ve": f"someone{_Q}d{_Q}ve", f"someone{_Q}dve": f"someone{_Q}d{_Q}ve",
    "someonell": f"someone{_Q}ll", "someones": f"someone{_Q}s", "somethingd": f"something{_Q}d",
    f"somethingd{_Q}ve": f"something{_Q}d{_Q}ve", f"something{_Q}dve": f"something{_Q}d{_Q}ve",
    "somethingll": f"something{_Q}ll", "thats": f"that{_Q}s", "thered": f"there{_Q}d",
    f"thered{_Q}ve": f"there{_Q}d{_Q}ve", f"there{_Q}dve": f"there{_Q}d{_Q}ve",
    "therere": f"there{_Q}re", "theres": f"there{_Q}s", "theyd": f"they{_Q}d",
    f"theyd{_Q}ve": f"they{_Q}d{_Q}ve", f"they{_Q}dve": f"they{_Q}d{_Q}ve", "theyll": f"they{_Q}ll",
    "theyre": f"they{_Q}re", "theyve": f"they{_Q}ve", "twas": f"{_Q}twas", "wasnt": f"wasn{_Q}t",
    f"wed{_Q}ve": f"we{_Q}d{_Q}ve", f"we{_Q}dve": f"we{_Q}d{_Q}ve", "weve": "we've",
    "werent": f"weren{_Q}t", "whatll": f"what{_Q}ll", "whatre": f"what{_Q}re",
    "whats": f"what{_Q}s", "whatve": f"what{_Q}ve", "whens": f"when{_Q}s", "whered": f"where{_Q}d",
    "wheres": "where's", "whereve": f"where{_Q}ve", "whod": f"who{_Q}d",
    f"whod{_Q}ve": f"who{_Q}d{_Q}ve", f"who{_Q}dve": f"who{_Q}d{_Q}ve", "wholl": f"who{_Q}ll",
    "whos": f"who{_Q}s", "whove": "who've", "whyll": f"why{_Q}ll", "whyre": f"why{_Q}re",
    "whys": f"why{_Q}s", "wont": f"won{_Q}t", "wouldve": f"would{_Q}ve", "wouldnt": f"wouldn{_Q}t",
    f"wouldnt{_Q}ve": f"wouldn{_Q}t{_Q}ve", f"wouldn{_Q}tve": f"wouldn{_Q}t{_Q}ve",
    "yall": f"y{_Q}all", f"yall{_Q}ll": f"y{_Q}all{_Q}ll", f"y{_Q}allll": f"y{_Q}all{_Q}ll",
    f"yall{_Q}d{_Q}ve": f"y{_Q}all{_Q}d{_Q}ve", f"y{_Q}alld{_Q}ve": f"y{_Q}all{_Q}d{_Q}ve",
    f"y{_Q}all{_Q}dve": f"y{_Q}all{_Q}d{_Q}ve", "youd": f"you{_Q}d", f"youd{_Q}ve": f"you{_Q}d{_Q}ve",
    f"you{_Q}dve": f"you{_Q}d{_Q}ve", "youll": f"you{_Q}ll", "youre": f"you{_Q}re",
    "youve": f"you{_Q}ve",
}


def _process_punctuation(text: str) -> str:
    """vqaEval.py ``processPunctuation``.

    A punctuation mark that touches a space anywhere in the *original* text (or any
    text containing "digit,digit") is deleted everywhere; otherwise it becomes a space,
    so "t-shirt"-style words split ("yes/no" -> "yes no") but "yes / no" -> "yes  no".
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_SUBS)


def _process_digit_article(text: str) -> str:
    """vqaEval.py ``processDigitArticle``: lower-case, number words -> digits, drop
    articles, then expand the contractions map word by word."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction, exactly as GT-Vision-Lab ``vqaEval.py`` scores it.

    The prediction has newlines/tabs turned into spaces, is stripped, then goes through
    ``processPunctuation`` and ``processDigitArticle``. The gold answers get
    ``processPunctuation`` only, and only when they are not all identical (vqaEval.py
    relies on the VQA annotation files being normalised already: a raw gold "two" does
    not match a predicted "two", which normalises to "2").

    Accuracy is the mean, over the leave-one-annotator-out subsets, of
    ``min(1, #matches in the subset / 3)``. With the usual ten answers that is the
    official number (one match -> 0.3, two -> 0.6, three -> 0.9, four or more -> 1.0).
    For 2..9 answers the same mean over the n leave-one-out subsets is used, so the
    ceiling drops below 1 when fewer than four answers exist. With a single answer no
    subset is left, so we score exact agreement of the normalised strings (1.0 or 0.0).
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one gold answer")
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    pred = _process_digit_article(_process_punctuation(pred))
    gold = list(answers)
    if len(set(gold)) > 1:
        gold = [_process_punctuation(a) for a in gold]
    if len(gold) == 1:
        return float(pred == gold[0])
    hits = [g == pred for g in gold]
    total = sum(hits)
    # Leaving annotator i out removes exactly one match when i matched.
    return sum(min(1.0, (total - h) / 3.0) for h in hits) / len(gold)


def _gqa_normalise(text: str) -> str:
    return text.strip().rstrip(".").lower()


def exact_match(prediction: str, answer: str) -> float:
    """GQA accuracy of one prediction, as LLaVA scores it.

    LLaVA strips the generated text (``model_vqa_loader``), then
    ``convert_gqa_for_eval.py`` does ``text.rstrip('.').lower()``, and the official GQA
    ``eval.py`` compares ``prediction == gold`` as plain strings. We apply that same
    strip / drop-trailing-periods / lower-case to both sides; GQA gold answers are
    already in that form, so this equals LLaVA's number. (lmms-eval's ``gqa`` task
    instead lower-cases and deletes all ASCII punctuation on both sides without
    stripping; the two agree on clean short answers.)
    """
    return float(_gqa_normalise(prediction) == _gqa_normalise(answer))


def _levenshtein(a: str, b: str) -> int:
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
    """DocVQA ANLS of one prediction, as lmms-eval's ``anls`` metric computes it.

    Both strings are stripped, lower-cased and whitespace-collapsed before the edit
    distance; the distance is divided by the longer of the two *raw* lengths (as in
    lmms-eval and the RRC script it follows). The similarity ``1 - min distance`` over
    the gold answers is kept if it is at least ``threshold``, else 0.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("anls needs at least one gold answer")
    det = " ".join(prediction.strip().lower().split())
    dists = []
    for answer in answers:
        gt = " ".join(answer.strip().lower().split())
        # .upper() mirrors the reference: it can change length (e.g. "ß" -> "SS").
        length = max(len(answer.upper()), len(prediction.upper()))
        dists.append(0.0 if length == 0 else _levenshtein(gt, det) / length)
    sim = 1.0 - min(dists)
    return sim if sim >= threshold else 0.0


METRIC_OF: Mapping[str, str] = {
    "vqav2": "vqa_accuracy",
    "gqa": "exact_match",
    "textvqa": "vqa_accuracy",
    "okvqa": "vqa_accuracy",
    "vizwiz": "vqa_accuracy",
    "docvqa": "anls",
    "shapes": "vqa_accuracy",
}

_FUNCS: Mapping[str, Callable[..., float]] = {
    "vqa_accuracy": vqa_accuracy,
    "exact_match": lambda p, a: exact_match(p, a[0]),
    "anls": anls,
}


def score(dataset: str, prediction: str, answers: Sequence[str]) -> float:
    """Score one prediction with ``dataset``'s metric (see ``METRIC_OF``).

    For GQA, whose samples carry one gold answer, the first answer is used.
    """
    try:
        metric = METRIC_OF[dataset]
    except KeyError:
        raise ValueError(
            f"no metric registered for dataset {dataset!r}; known: {sorted(METRIC_OF)}"
        ) from None
    if isinstance(answers, str):
        answers = (answers,)
    if len(answers) == 0:
        raise ValueError(f"{dataset}: no gold answers to score against")
    return _FUNCS[metric](prediction, answers)
