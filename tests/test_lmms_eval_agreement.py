"""mech's scoring and generation settings against lmms-eval 0.7.3's own code.

Needs the optional reference install (see README: ``pip install --no-deps lmms-eval==0.7.3``
plus the small packages its task modules import); skipped with that reason otherwise.
"""

import statistics

import pytest

lmms_eval = pytest.importorskip(
    "lmms_eval", reason="the lmms-eval reference is not installed: pip install -c constraints.txt "
    "-e '.[reference]' && pip install --no-deps -c constraints.txt lmms-eval==0.7.3")

import lmms_eval_reference as ref  # noqa: E402
import vqa_cases  # noqa: E402

from mech import generation, metrics  # noqa: E402
from mech.datasets import Sample  # noqa: E402
from mech.metrics import lmms, normalise, official  # noqa: E402
from mech.prompts import question_prompt  # noqa: E402

N = 3000
CASES = {
    "vqav2": vqa_cases.vqa_cases(N, seed=0, n_answers=(10, 10, 10, 1, 3, 5)),
    "textvqa": vqa_cases.vqa_cases(N, seed=1, n_answers=(10, 10, 10, 1, 3, 5)),
    "okvqa": vqa_cases.vqa_cases(N, seed=2, n_answers=(10, 10, 10, 1, 3, 5)),
    "vizwiz": vqa_cases.vqa_cases(N, seed=3, n_answers=(10, 10, 10, 1, 3, 5)),
    "gqa": vqa_cases.single_answer_cases(N, seed=4),
    "docvqa": vqa_cases.anls_cases(N, seed=5),
}


def disagreements(dataset, scorer, cases=None):
    return [(p, a, scorer(p, a), ref.score(dataset, p, list(a))) for p, a in (cases or CASES[dataset])
            if scorer(p, a) != ref.score(dataset, p, list(a))]


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_lmms_eval_protocol_agrees_case_for_case(dataset):
    bad = disagreements(dataset, lambda p, a: metrics.score(dataset, p, a, protocol="lmms-eval"))
    assert bad == [], f"{len(bad)} of {N} disagree, e.g. {bad[:3]}"


def _without(rule):
    """Scorers with one rule broken: each must disagree somewhere, or the cases would
    not exercise that rule."""
    def vqav2_with(digit_comma=normalise.EVALAI_DIGIT_COMMA, mean=statistics.mean):
        def scorer(p, a):
            def norm(t):
                return normalise.digit_article(normalise.punctuation(normalise.whitespace(t), digit_comma))
            accs = official._leave_one_out([norm(x) for x in a], norm(p.strip()))
            return float(mean(accs))
        return scorer

    def gqa_with(truncate=True, nul=True, strip=True):
        def norm(t):
            t = t.rstrip("\0") if nul else t
            t = t.lower()[:len(t)] if truncate else t.lower()
            return t.translate(lmms._DELETE_PUNCTUATION).rstrip("\0" if nul else "")
        return lambda p, a: float(norm(p.strip() if strip else p) == norm(a[0]))

    return {
        "vqav2 official digit-comma trigger": ("vqav2", vqav2_with(digit_comma=normalise.OFFICIAL_DIGIT_COMMA)),
        "vqav2 sum/len instead of statistics.mean": ("vqav2", vqav2_with(mean=lambda x: sum(x) / len(x))),
        "gqa without the runner's strip": ("gqa", gqa_with(strip=False)),
        "evalai without the 's split": ("okvqa", lambda p, a: lmms.evalai_vqa(p.replace("'s", "s"), a)),
        "gqa without numpy's width cut": ("gqa", gqa_with(truncate=False)),
        "gqa without numpy's trailing-NUL drop": ("gqa", gqa_with(nul=False)),
        "docvqa without the runner's strip": ("docvqa", official.anls),
    }[rule]


@pytest.mark.parametrize("rule", ["vqav2 official digit-comma trigger", "vqav2 sum/len instead of statistics.mean",
                                  "gqa without the runner's strip", "evalai without the 's split",
                                  "gqa without numpy's width cut", "gqa without numpy's trailing-NUL drop",
                                  "docvqa without the runner's strip"])
def test_the_cases_exercise_each_rule(rule):
    dataset, scorer = _without(rule)
    assert disagreements(dataset, scorer), f"no generated case tells {rule!r} from lmms-eval"


def test_normalisation_tables_are_lmms_evals():
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor as P

    assert normalise.CONTRACTIONS == P.CONTRACTIONS
    assert list(normalise.PUNCTUATION) == P.PUNCTUATIONS
    assert set(normalise.ARTICLES) == set(P.ARTICLES)
    assert {k: v for k, v in P.NUMBER_MAP.items() if k != v} == normalise.NUMBERS  # setdefault grows it


def test_official_textvqa_equals_the_m4c_evaluator_on_lmms_evals_processor():
    # lmms-eval ships the EvalAI processor of mmf's m4c_evaluators.py; the evaluator's
    # own rule on top: score of the processed prediction among the unique processed
    # answers, 0 when absent, each a leave-one-out sum / len.
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    processor = EvalAIAnswerProcessor()

    def m4c(prediction, answers):
        gold = list(enumerate(processor(a) for a in answers))
        pred = processor(prediction)
        if pred not in {g for _, g in gold}:
            return 0.0
        accs = [min(1, float(len([o for o in gold if o != g and o[1] == pred])) / 3) for g in gold]
        return sum(accs) / len(accs)

    cases = vqa_cases.vqa_cases(N, seed=11)
    assert [(p, a) for p, a in cases if official.textvqa(p, a) != m4c(p, a)] == []


def test_official_vqa_differs_from_lmms_eval_only_where_the_rules_do():
    # Same processing when the answers disagree and no "1,,2" run occurs; the means
    # differ in method (sum / n vs statistics.mean), so compare to 1e-12.
    cases = [(p, a) for p, a in vqa_cases.vqa_cases(N, seed=12)
             if len({normalise.whitespace(x) for x in a}) > 1
             and not any(",," in t for t in [p, *a])]
    assert len(cases) > N // 2
    assert all(official.vqa(p, a) == pytest.approx(ref.score("vqav2", p, a), abs=1e-12) for p, a in cases)
    unanimous = [(p, a) for p, a in vqa_cases.vqa_cases(N, seed=12) if len(set(a)) == 1]
    assert any(official.vqa(p, a) != ref.score("vqav2", p, a) for p, a in unanimous)


@pytest.mark.parametrize("dataset", sorted(ref.TASKS))
def test_generation_settings_are_the_task_configs(dataset):
    config = ref.task_config(dataset)
    ours = generation.settings(dataset)
    kwargs = config.generation_kwargs
    assert ours.task == config.task
    assert ours.max_new_tokens == kwargs.get("max_new_tokens", generation.LLAVA_HF_MAX_NEW_TOKENS)
    assert list(ours.until) == kwargs["until"]


def test_llava_hf_default_cap_and_fallback_template():
    # Read from the model's source: importing it needs video decoders we do not install.
    import ast
    import importlib.util

    import mech.templates as templates

    source = open(importlib.util.find_spec("lmms_eval.models.simple.llava_hf").origin).read()
    assert f'gen_kwargs["max_new_tokens"] = {generation.LLAVA_HF_MAX_NEW_TOKENS}' in source
    vicuna = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VICUNA_CHAT_TEMPLATE")
    rendered = _render(vicuna, "<image>\nwhat is it?")
    assert rendered == templates.VICUNA_FALLBACK.replace("{question}", "what is it?")
    # Stop strings are popped from the arguments but never cut the output: no loop over
    # them (lmms-eval's other models truncate with ``for term in until``), no stop criteria.
    method = next(node for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.FunctionDef) and node.name == "generate_until")
    loops = [n for n in ast.walk(method) if isinstance(n, ast.For) and getattr(n.iter, "id", "") == "until"]
    assert loops == [] and "stop_strings" not in ast.unparse(method) and "stopping_criteria" not in ast.unparse(method)


def _render(template, content):
    import jinja2

    return jinja2.Environment().from_string(template).render(
        messages=[{"role": "user", "content": content}], add_generation_prompt=True, eos_token="</s>")


@pytest.mark.parametrize("dataset", sorted(ref.TASKS))
def test_question_prompts_are_doc_to_text(dataset):
    config = ref.task_config(dataset)
    kwargs = config.lmms_eval_specific_kwargs["default"]
    for question in ["what is the GNC sign?", "How many dogs are there?", "is it red"]:
        doc = {"question": question, "ocr_tokens": ["a", "b"]}
        sample = Sample("1", dataset, None, question, ("x",), {})
        assert question_prompt(sample) == config.doc_to_text(doc, kwargs)
