"""Generated (prediction, answers) cases for scorer agreement tests.

Each case starts from a short gold answer and perturbs the prediction and the other
annotators the way generations and crowd answers differ: casing, punctuation (marks
of every scorer's list and some of none), number words, articles, contractions with
and without apostrophes, whitespace, unicode look-alikes, long answers; answer lists
are unanimous, split, single, short or empty of agreement.
"""

from __future__ import annotations

import random

BASES = ["yes", "no", "2", "two", "red", "the dog", "a red car", "t-shirt", "don't", "dont", "3.5",
         "1,000", "10", "ten", "none", "frisbee", "tennis racket", "new york", "left", "o'clock",
         "it's", "its", "man's hat", "yes/no", "5:30", "$10", "50%", "mr. smith", "e.t.", "rock & roll",
         "black and white", "can't tell", "unanswerable", "stop", "coca-cola", "10:00 am", "u.s.a.",
         "café", "naïve", "straße", "İstanbul", "ﬁsh", "one hundred", "skate board", "skateboard"]
MARKS = list(";/[]\"{}()=+\\_-><@`,?!.:'") + ["\u2019", "\u201c", "\u2026", "\u00bf", "\u3001", "\u00a0"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "none", "0", "1", "2", "3", "4", "12"]
CONTRACTED = ["dont", "don't", "don\u2019t", "cant", "can't", "isnt", "isn't", "whats", "what's", "youre",
              "Im", "I'm", "yall", "y'all", "oclock", "o'clock", "somebody'd", "'twas", "twas"]
WHITESPACE = [" ", "  ", "\n", "\t", " \n ", "\r", "\u2003", "\n\n"]


def _perturb(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(12)
        if op == 0:
            text = text.upper() if rng.random() < 0.5 else text.capitalize()
        elif op == 1:
            text = text + rng.choice(MARKS)
        elif op == 2:
            i = rng.randint(0, len(text))
            text = text[:i] + rng.choice(MARKS) + text[i:]
        elif op == 3:
            text = rng.choice(["a ", "an ", "the ", "The ", "A "]) + text
        elif op == 4:
            text = rng.choice(WHITESPACE) + text + rng.choice(WHITESPACE)
        elif op == 5:
            text = rng.choice(NUMBERS) + " " + text if rng.random() < 0.3 else rng.choice(NUMBERS)
        elif op == 6:
            text = rng.choice(CONTRACTED)
        elif op == 7:
            text = text.replace(" ", rng.choice(WHITESPACE))
        elif op == 8:
            text = text + " " + rng.choice(MARKS) + " " + rng.choice(BASES)
        elif op == 9:
            text = "." * rng.randint(1, 40) + text if rng.random() < 0.2 else text + "."
        elif op == 10:
            commas = "," * rng.choice([1, 1, 2, 3])  # "1,,2" triggers EvalAI's rule only
            text = f"{rng.randint(1, 9)}{commas}{rng.randint(0, 9)} " + text
        else:
            text = text.replace("'", "\u2019").replace("e", "\u00e9") if rng.random() < 0.5 else text.lower()
    return text


def vqa_cases(n: int, seed: int = 0, n_answers=(10,)) -> list[tuple[str, list[str]]]:
    """``n`` cases with answer lists of the given lengths (VQA-style sets have ten)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        base = rng.choice(BASES)
        k = rng.choice(n_answers)
        mode = rng.randrange(5)
        if mode == 0:      # unanimous, raw
            answers = [base] * k
        elif mode == 1:    # unanimous after normalisation only
            variant = _perturb(rng, base)
            answers = [base if rng.random() < 0.5 else variant for _ in range(k)]
        elif mode == 2:    # split annotators
            other = rng.choice(BASES)
            agree = rng.randint(0, k)
            answers = [base] * agree + [_perturb(rng, other) for _ in range(k - agree)]
            rng.shuffle(answers)
        elif mode == 3:    # noisy crowd
            answers = [_perturb(rng, rng.choice([base, base, rng.choice(BASES)])) for _ in range(k)]
        pred = _perturb(rng, base) if rng.random() < 0.85 else _perturb(rng, rng.choice(BASES))
        if mode == 4:      # some annotators typed what the model generated, some a variant
            bare = "".join(c for c in pred if c.isalnum() or c.isspace())       # marks dropped
            spaced = "".join(c if c.isalnum() else " " for c in pred).strip()  # marks as spaces
            answers = [rng.choice([pred, base, bare, spaced, _perturb(rng, pred)]) for _ in range(k)]
        cases.append((pred, answers))
    return cases


def single_answer_cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """GQA-style cases: one gold answer, sometimes itself unclean."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        base = rng.choice(BASES)
        gold = base if rng.random() < 0.7 else _perturb(rng, base)
        if rng.random() < 0.05:
            gold = gold + "\0" * rng.randint(1, 2)
        pred = _perturb(rng, base) if rng.random() < 0.85 else _perturb(rng, rng.choice(BASES))
        if rng.random() < 0.05:
            pred = pred + "\0"
        out.append((pred, [gold]))
    return out


def anls_cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """DocVQA-style cases: one to three answers, long strings, partial matches."""
    rng = random.Random(seed)
    words = BASES + ["1 May 1990", "May 1, 1990", "Total Revenue", "$ 1,234.00", "page 3 of 10", "ß"]
    out = []
    for _ in range(n):
        answers = [rng.choice(words) for _ in range(rng.randint(1, 3))]
        target = rng.choice(answers)
        i, j = sorted(rng.sample(range(len(target) + 1), 2)) if len(target) > 1 else (0, len(target))
        pred = rng.choice([target, target[i:j], _perturb(rng, target), rng.choice(words),
                           target + rng.choice(WHITESPACE), rng.choice(WHITESPACE) + target, ""])
        out.append((pred, answers))
    return out
