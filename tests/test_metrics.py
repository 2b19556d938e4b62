"""Metric cases derived from the reference definitions (vqaEval.py, LLaVA GQA, lmms-eval ANLS)."""

import pytest

from mech.metrics import METRIC_OF, anls, exact_match, score, vqa_accuracy


def leave_one_out(n_answers: int, n_matching: int) -> float:
    """Hand version of the official formula: mean over each annotator left out."""
    accs = []
    for left_out in range(n_answers):
        matches = n_matching - (1 if left_out < n_matching else 0)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / n_answers


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_agreeing_annotators(k, expected):
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert leave_one_out(10, k) == pytest.approx(expected)
    # 1 match: 9 subsets keep it (1/3 each), 1 drops it -> 9 * (1/3) / 10 = 0.3
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_fewer_than_ten_answers_use_the_same_leave_one_out():
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3)  # 2 left each time
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "dog"]) == pytest.approx(leave_one_out(5, 2))
    assert vqa_accuracy("cat", ["cat"]) == 1.0 and vqa_accuracy("dog", ["cat"]) == 0.0


def test_empty_prediction_and_empty_answers():
    assert vqa_accuracy("", ["cat"] * 10) == 0.0
    assert vqa_accuracy("   ", ["cat"] * 10) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


@pytest.mark.parametrize("pred, gold", [
    ("Yes", "yes"),                # lower-casing
    ("yes\n", "yes"),              # newline -> space, then strip
    ("yes.", "yes"),               # trailing period dropped
    ("t.v.", "tv"),                # periods not followed by a digit dropped
    ("3.5", "3.5"),                # period before a digit kept
    ("1,000", "1000"),             # digit,digit: every punctuation mark is deleted
    ("Two", "2"),                  # number words -> digits
    ("none", "0"),
    ("ten", "10"),
    ("the red car", "red car"),    # articles removed
    ("a dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don\u2019t"),        # contractions map (curly apostrophe, as vqaEval.py)
    ("yes/no", "yes no"),          # punctuation inside a word becomes a space
    ("yes / no", "yes no"),        # next to spaces it is deleted (then split/joined)
    ("x, y,z", "x yz"),            # "," touches a space somewhere -> deleted everywhere
    ("y,z", "y z"),                # ... otherwise replaced by a space
    ("red-white", "red-white"),    # "-" is not vqaEval.py punctuation
    ("wow!", "wow!"),              # nor is "!"
])
def test_prediction_normalisation(pred, gold):
    assert vqa_accuracy(pred, [gold] * 10) == 1.0


def test_dont_with_apostrophe_splits():
    # "'" inside a word becomes a space, so "don't" -> "don t", which no longer matches.
    assert vqa_accuracy("don't", ["don\u2019t"] * 10) == 0.0
    assert vqa_accuracy("eleven", ["11"] * 10) == 0.0  # only zero..ten are mapped


def test_gold_answers_get_punctuation_only_when_annotators_disagree():
    # All ten identical: vqaEval.py leaves them raw, so normalised "yes no" != "yes/no".
    assert vqa_accuracy("yes/no", ["yes/no"] * 10) == 0.0
    # One dissenting annotator: the golds are punctuation-processed, nine now match.
    assert vqa_accuracy("yes/no", ["yes/no"] * 9 + ["maybe"]) == 1.0
    # Golds never get processDigitArticle: a raw "two" can not be hit.
    assert vqa_accuracy("two", ["two"] * 9 + ["three"]) == 0.0
    assert vqa_accuracy("two", ["2"] * 9 + ["three"]) == 1.0


def test_exact_match_follows_llava_gqa():
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match("  left  ", "left") == 1.0
    assert exact_match("yes...", "yes") == 1.0     # rstrip('.') drops all trailing periods
    assert exact_match("yes!", "yes") == 0.0      # no other punctuation handling
    assert exact_match("the table", "table") == 0.0  # no article removal
    assert exact_match("", "yes") == 0.0


def test_anls_threshold_and_normalisation():
    gold = ["abcdefghijk"]                                      # 11 characters
    assert anls("abcdefghijk", gold) == 1.0
    assert anls("abcdefXXXXX", gold) == pytest.approx(1 - 5 / 11)  # 0.545: kept
    assert anls("abcdeXXXXXX", gold) == 0.0                        # 0.455: below 0.5
    assert anls("abXX", ["abcd"]) == pytest.approx(0.5)            # exactly 0.5 is kept
    assert anls("abXX", ["abcd"], threshold=0.6) == 0.0
    assert anls("  Hello   WORLD ", ["hello world"]) == pytest.approx(1 - 0 / 16)
    assert anls("", ["abc"]) == 0.0
    assert anls("", [""]) == 1.0


def test_anls_best_gold_and_raw_length_denominator():
    assert anls("$ 10", ["10 dollars", "$10", "$ 10"]) == 1.0
    # distance on normalised text ("ab c" -> "abbc": 1 edit) over the raw prediction
    # length 6, not the normalised 4 (which would give 0.75)
    assert anls(" ab c ", ["abbc"]) == pytest.approx(1 - 1 / 6)


def test_score_dispatch():
    assert set(METRIC_OF) >= {"vqav2", "gqa", "textvqa", "okvqa", "vizwiz", "docvqa", "shapes"}
    assert score("vqav2", "two", ["2"] * 10) == 1.0
    assert score("gqa", "Yes.", ("yes",)) == 1.0
    assert score("docvqa", "abXX", ["abcd"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="known"):
        score("imagenet", "x", ["x"])
