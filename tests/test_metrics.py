"""Scorers under both protocols.

``official``: case by case against the rules of each benchmark's current reference code,
each quirk named. ``lmms-eval``: see test_lmms_eval_agreement.py (lmms-eval's own code).
"""

import pytest

from mech.metrics import PROTOCOLS, SCORERS, describe, official, register, score
from mech.metrics.normalise import digit_article, evalai, punctuation


def leave_one_out(n_answers: int, n_matching: int) -> float:
    """The official formula by hand: mean over each annotator left out of
    min(1, matches among the others / 3)."""
    accs = []
    for left_out in range(n_answers):
        matches = n_matching - (1 if left_out < n_matching else 0)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / n_answers


# --- vqaEval.py at a013f00 (VQAv2, OK-VQA, VizWiz) ----------------------------------

@pytest.mark.parametrize("k", range(11))
def test_leave_one_annotator_out(k):
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert official.vqa("cat", answers) == pytest.approx(leave_one_out(10, k))
    assert [official.vqa("cat", ["cat"] * j + ["dog"] * (10 - j)) for j in (1, 2, 3, 4)] == \
        pytest.approx([0.3, 0.6, 0.9, 1.0])


def test_fewer_answers_and_a_single_answer():
    assert official.vqa("cat", ["cat", "cat", "dog"]) == pytest.approx(leave_one_out(3, 2))
    # One answer: leaving its annotator out leaves nobody to agree with.
    assert official.vqa("cat", ["cat"]) == 0.0


def test_unanimous_answers_are_compared_raw():
    # All ten identical: no normalisation on either side, only newline/tab -> space and strip.
    assert official.vqa("yes", ["yes"] * 10) == 1.0
    assert official.vqa(" yes\n", ["yes"] * 10) == 1.0
    assert official.vqa("Yes", ["yes"] * 10) == 0.0
    assert official.vqa("yes.", ["yes"] * 10) == 0.0
    # One dissenting annotator switches normalisation on for both sides.
    assert official.vqa("Yes.", ["yes"] * 9 + ["no"]) == 1.0
    # The gate looks at the answers after whitespace cleaning.
    assert official.vqa("Yes", ["yes"] * 9 + [" yes\t"]) == 0.0


def test_gold_answers_get_the_whole_normalisation_when_they_differ():
    assert official.vqa("2", ["two"] * 9 + ["three"]) == 1.0           # number words in gold too
    assert official.vqa("dog", ["the dog"] * 9 + ["cat"]) == 1.0       # articles in gold too
    assert official.vqa("yes/no", ["yes/no"] * 9 + ["maybe"]) == 1.0


def test_contractions_use_straight_apostrophes():
    assert digit_article("dont") == "don't"
    assert official.vqa("dont", ["don't"] * 9 + ["no"]) == 1.0
    # "'" is not a punctuation mark, so "don't" survives as one word.
    assert official.vqa("don't", ["dont"] * 9 + ["no"]) == 1.0


@pytest.mark.parametrize("text, expected", [
    ("t-shirt", "t shirt"),     # "-" is a mark (it was not in the 2015 list)
    ("wow!", "wow "),           # so is "!"
    ("{x}", " x "),
    ("5:30", "5:30"),           # ":" is not
    ("it's", "it's"),           # nor "'"
    ("yes/no", "yes no"),       # a mark not touching a space becomes a space
    ("yes / no", "yes  no"),    # touching a space anywhere: deleted everywhere
    ("x, y,z", "x yz"),
    ("1,000", "1000"),          # "digit,digit" anywhere: every mark deleted
    ("1,000 (approx)", "1000 approx"),
    ("3.5", "3.5"),             # the period rule: a period stays only before a digit
    ("t.v.", "tv"),
    ("5.", "5"),
])
def test_punctuation_rules(text, expected):
    assert punctuation(text) == expected


def test_period_rule_stops_after_32_substitutions():
    # vqaEval.py passes re.UNICODE (32) as the count argument of sub.
    assert punctuation("." * 32 + "yes") == "yes"
    assert punctuation("." * 33 + "yes") == ".yes"
    assert official.vqa("." * 33 + "yes", ["yes"] * 9 + ["no"]) == 0.0
    assert official.vqa("." * 32 + "yes", ["yes"] * 9 + ["no"]) == 1.0


def test_digit_article_rules():
    assert digit_article("Two Dogs") == "2 dogs"
    assert digit_article("none of the above") == "0 of above"
    assert digit_article("eleven") == "eleven"            # only zero..ten and none
    assert digit_article("a   red\tcar") == "red car"     # whitespace split and rejoined
    assert digit_article("Im") == "im"                     # capital keys can never match


# --- TextVQA (m4c evaluator) ------------------------------------------------------------

def test_evalai_processor_rules():
    assert evalai("What's This?") == "what 's this"        # lower, "?" deleted, "'s" split off
    assert evalai("1,000") == "1000"                        # "," deleted before anything else
    assert evalai("1,,2 apples") == "12 apples"
    assert evalai("  Coca-Cola.\n") == "coca cola"
    assert evalai("two dogs") == "2 dogs"


def test_textvqa_scores_processed_answers_and_needs_ten():
    assert official.textvqa("Stop.", ["stop"] * 3 + ["go"] * 7) == pytest.approx(leave_one_out(10, 3))
    assert official.textvqa("nothing", ["stop"] * 10) == 0.0
    with pytest.raises(ValueError, match="exactly 10"):
        official.textvqa("stop", ["stop"] * 3)


# --- GQA (LLaVA post-processing + eval.py) ---------------------------------------------

def test_gqa_official():
    assert official.gqa("Yes.", ["yes"]) == 1.0
    assert official.gqa("  left  ", ["left"]) == 1.0
    assert official.gqa("yes...", ["yes"]) == 1.0           # rstrip('.') drops all trailing periods
    assert official.gqa("yes!", ["yes"]) == 0.0             # no other punctuation handling
    assert official.gqa("the table", ["table"]) == 0.0      # no article removal
    assert official.gqa("yes", ["Yes"]) == 0.0              # the gold answer is not touched
    assert official.gqa("", ["yes"]) == 0.0


# --- DocVQA ANLS (RRC) ------------------------------------------------------------------

def test_anls_threshold_and_normalisation():
    gold = ["abcdefghijk"]                                              # 11 characters
    assert official.anls("abcdefghijk", gold) == 1.0
    assert official.anls("abcdefXXXXX", gold) == pytest.approx(1 - 5 / 11)   # 0.545: kept
    assert official.anls("abcdeXXXXXX", gold) == 0.0                         # 0.455: below 0.5
    assert official.anls("abXX", ["abcd"]) == pytest.approx(0.5)             # exactly 0.5 is kept
    assert official.anls("abXX", ["abcd"], threshold=0.6) == 0.0
    assert official.anls("  Hello   WORLD ", ["hello world"]) == 1.0
    assert official.anls("", ["abc"]) == 0.0
    assert official.anls("", [""]) == 1.0


def test_anls_best_answer_and_raw_length_denominator():
    assert official.anls("$ 10", ["10 dollars", "$10", "$ 10"]) == 1.0
    # distance on normalised text ("ab c" -> "abbc": 1 edit) over the raw prediction
    # length 6, not the normalised 4; lmms-eval strips the generation first (length 4).
    assert official.anls(" ab c ", ["abbc"]) == pytest.approx(1 - 1 / 6)
    assert score("docvqa", " ab c ", ["abbc"], protocol="lmms-eval") == pytest.approx(1 - 1 / 4)
    # "ß" stays "ß" under lower(): 2 edits from "ss", over len("ß".upper()) == 2.
    assert official.anls("ß", ["ss"]) == 0.0


# --- dispatch -------------------------------------------------------------------------

def test_score_dispatch_and_errors():
    assert set(SCORERS) >= {"vqav2", "gqa", "textvqa", "okvqa", "vizwiz", "docvqa", "shapes", "easyvqa"}
    assert all(set(table) == set(PROTOCOLS) for table in SCORERS.values())
    assert score("vqav2", "two", ["2"] * 10) == 1.0                       # lmms-eval: always normalised
    assert score("vqav2", "two", ["2"] * 10, protocol="official") == 0.0  # official: raw when unanimous
    assert score("gqa", "Yes.", ("yes",)) == 1.0
    with pytest.raises(ValueError, match="known"):
        score("imagenet", "x", ["x"])
    with pytest.raises(ValueError, match="protocol"):
        score("vqav2", "x", ["x"] * 10, protocol="vqa")
    with pytest.raises(ValueError, match="no gold answers"):
        score("vqav2", "x", [])
    with pytest.raises(TypeError, match="sequence of strings"):
        score("vqav2", "x", "x")
    with pytest.raises(ValueError, match="exactly one gold answer"):
        score("gqa", "x", ["x", "y"])
    assert "a013f00" in describe("vqav2", "official") and "0.7.3" in describe("vqav2")


def test_register_a_scorer():
    register("mine-metric-test", lambda p, a: float(p == a[0]))
    assert score("mine-metric-test", "x", ["x"]) == 1.0
    assert score("mine-metric-test", "x", ["x"], protocol="official") == 1.0
    register("mine-docs-test", "docvqa")
    assert score("mine-docs-test", " ab c ", ["abbc"], protocol="official") == pytest.approx(1 - 1 / 6)
    with pytest.raises(ValueError, match="already has a scorer"):
        register("mine-metric-test", "vqav2")
    with pytest.raises(ValueError, match="each of"):
        register("mine-bad-test", {"official": lambda p, a: 1.0})
