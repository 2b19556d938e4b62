"""The answer normalisation the VQA scorers share, written as rules.

Two lineages exist and differ in small ways that move scores:

* the official VQA evaluation (GT-Vision-Lab ``vqaEval.py``, current version at
  commit a013f00): `punctuation` with the ``digit,digit`` trigger, then `digit_article`;
* the EvalAI answer processor (facebookresearch/mmf ``m4c_evaluators.py``, also used by
  lmms-eval): `evalai`, which first lower-cases, deletes every ``,`` and ``?`` and
  splits off ``'s``, and whose ``digit,digit`` trigger also accepts runs (``1,,2``).

Both lineages share the tables below (the 2015 version of ``vqaEval.py`` had another
punctuation list and curly apostrophes in its contraction map; neither is used here).
"""

from __future__ import annotations

import re

__all__ = ["PUNCTUATION", "NUMBERS", "ARTICLES", "CONTRACTIONS", "OFFICIAL_DIGIT_COMMA",
           "EVALAI_DIGIT_COMMA", "punctuation", "digit_article", "evalai", "whitespace"]

# The 21 marks handled one by one. "." has its own rule; ":" and "'" are not marks.
PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
           "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Word -> replacement, applied to whole words after lower-casing. Keys with capitals
# ("Im", "Ive", "Id've", "I'dve") are in the reference table too and can never match.
CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd
whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've
wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've
youll=you'll youre=you're youve=you've
""".split())

# A "digit,digit" anywhere in the text turns every mark's rule into deletion.
OFFICIAL_DIGIT_COMMA = re.compile(r"\d,\d")
EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")  # also "1,,2"
# The references write the period rule as ``(?!<=\d)(\.)(?!\d)``: the first group is a
# mistyped lookbehind (a lookahead for "<=digit", always true before a "."), so a period
# is dropped unless a digit follows it ("3.5" keeps it, "5." and "t.v." do not).
_PERIOD = re.compile(r"\.(?!\d)")
# The references pass ``re.UNICODE`` (== 32) positionally to ``sub``, where it is the
# maximum number of substitutions: only the first 32 such periods are dropped.
PERIOD_SUBSTITUTIONS = 32


def whitespace(text: str) -> str:
    """Newlines and tabs become spaces, then the ends are stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def punctuation(text: str, digit_comma: re.Pattern = OFFICIAL_DIGIT_COMMA) -> str:
    """Each mark of `PUNCTUATION` is deleted everywhere if it touches a space anywhere in
    ``text`` (or ``digit_comma`` matches ``text``), else replaced by a space; then the
    period rule. The tests look at the *original* text, so the order of marks does not
    matter: ``"yes/no"`` -> ``"yes no"``, ``"yes / no"`` -> ``"yes  no"``, ``"1,000"`` -> ``"1000"``.
    """
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches or delete_all else " ")
    return _PERIOD.sub("", out, count=PERIOD_SUBSTITUTIONS)


def digit_article(text: str) -> str:
    """Lower-case and split on whitespace; number words zero..ten (and "none") become
    digits, the articles a/an/the are dropped, `CONTRACTIONS` are applied word by word;
    the words are joined with single spaces."""
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def evalai(text: str) -> str:
    """The EvalAI answer processor: lower-case, delete every "," and "?", turn "'s" into
    " 's", strip; then `whitespace`, `punctuation` (EvalAI's digit-comma trigger) and
    `digit_article`."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return digit_article(punctuation(whitespace(text), EVALAI_DIGIT_COMMA))
