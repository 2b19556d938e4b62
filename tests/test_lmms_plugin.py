"""lmms-eval runs mech: the ``mech`` model inside lmms-eval 0.7.3's own evaluator and CLI.

Needs the ``lmms`` extra and lmms-eval itself (README: the test command); skipped with
that reason otherwise. Everything runs in this process (lmms-eval's import costs ~10 s
once): the CLI through its own console-script function, the agreement runs through
``simple_evaluate``, the function the CLI calls.
"""

import os
import sys

import pytest

lmms_eval = pytest.importorskip(
    "lmms_eval", reason="lmms-eval is not installed: pip install -c constraints.txt -e '.[lmms]' && "
    "pip install --no-deps -c constraints.txt lmms-eval==0.7.3")
pytest.importorskip("pytablewriter", reason="the lmms extra is not installed: pip install -c constraints.txt "
                    "-e '.[lmms]'")

import mech  # noqa: E402
from mech.lmms import make_tasks  # noqa: E402
from mech.lmms.options import ModelArgsError  # noqa: E402

N_SHAPES, N_EASYVQA, BATCH = 16, 8, 4
# Contrastive attention with a strong mask (the highest ratio, lambda 0, on attention
# itself, so at every generation step) changes some answers of the tiny model; at the
# defaults it changes almost none, which would leave its agreement with the plain model
# untested.
INTERVENTIONS = {
    "none": None,
    "zero:0": mech.ZeroImage(layer=0),
    "contrastive,rho=0.8,lam=0,mask_at=attention": mech.ContrastiveMask(rho=0.8, lam=0.0, mask_at="attention"),
    "contrastive,review=4,candidates=[0,1,2]": mech.ContrastiveMask(review=4, candidates=(0, 1, 2)),
}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The local tasks written by mech's own command, and a dataset cache of their own."""
    os.environ.setdefault("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("lmms-datasets")))
    folder = make_tasks.write(tmp_path_factory.mktemp("lmms-tasks"), shapes=N_SHAPES, easyvqa=N_EASYVQA)
    return folder


@pytest.fixture(scope="module")
def samples():
    return {"mech_shapes": make_tasks.samples("shapes", N_SHAPES), "mech_easyvqa": make_tasks.samples("easyvqa", N_EASYVQA)}


@pytest.fixture(scope="module")
def harness(tasks):
    """``{model_args: {task: [logged sample]}}`` from lmms-eval's evaluator, lazily."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks), include_defaults=False, model_name="mech")
    done = {}

    def run(model_args):
        if model_args not in done:
            out = simple_evaluate(model="mech", model_args=f"pretrained=tiny,intervention={model_args}",
                                  tasks=list(make_tasks.TASKS), task_manager=manager, batch_size=BATCH,
                                  log_samples=True)
            done[model_args] = {task: sorted(rows, key=lambda r: r["doc_id"]) for task, rows in out["samples"].items()}
            done[model_args]["results"] = out["results"]
        return done[model_args]
    return run


@pytest.fixture(scope="module")
def tiny():
    return mech.load("tiny")


def test_the_entry_point_registers_mech():
    from lmms_eval.models import get_model
    from mech.lmms.model import Mech

    assert get_model("mech") is Mech, "reinstall mech (pip install -e .) so its lmms_eval.models entry point exists"


@pytest.mark.parametrize("model_args", list(INTERVENTIONS))
def test_lmms_eval_predictions_and_scores_equal_mech_run(model_args, harness, samples, tiny):
    logged = harness(model_args)
    for task, items in samples.items():
        rows = logged[task]
        assert [r["doc"]["question_id"] for r in rows] == [s.id for s in items]
        records = mech.run(tiny, items, INTERVENTIONS[model_args], batch_size=BATCH, protocol="lmms-eval",
                           progress=False).records
        # lmms-eval strips an answer before scoring it; mech's prediction is stripped
        assert [r["filtered_resps"][0].strip() for r in rows] == [rec.prediction for rec in records]
        assert [r["exact_match"] for r in rows] == [rec.score for rec in records]
        mean = sum(rec.score for rec in records) / len(records)
        assert logged["results"][task]["exact_match,none"] == pytest.approx(mean, abs=1e-12)


@pytest.mark.parametrize("model_args", [m for m in INTERVENTIONS if m != "none"])
def test_each_intervention_changes_some_answers(model_args, harness):
    """Agreement is not agreement with the plain model: each intervention answers
    differently somewhere."""
    def answers(logged):
        return [r["filtered_resps"][0] for task in make_tasks.TASKS for r in logged[task]]
    changed = sum(a != b for a, b in zip(answers(harness(model_args)), answers(harness("none"))))
    assert changed > 0, f"{model_args} answers as the plain model on all {N_SHAPES + N_EASYVQA} questions"


def test_batches_follow_llava_hf(tasks, monkeypatch):
    """Requests come in llava_hf's order (documents in order), batch_size at a time, with
    the task's generation arguments; until is dropped, never cut at."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    import mech.lmms.model as plugin

    seen = []
    original = plugin.answers

    def spy(model, interventions, texts, images, cap):
        seen.append((list(texts), cap))
        return original(model, interventions, texts, images, cap)

    monkeypatch.setattr(plugin, "answers", spy)
    simple_evaluate(model="mech", model_args="pretrained=tiny", tasks=["mech_shapes"], limit=10,
                    task_manager=TaskManager(include_path=str(tasks), include_defaults=False), batch_size=4)
    questions = [s.question for s in make_tasks.samples("shapes", 10)]
    assert [texts for texts, _ in seen] == [questions[0:4], questions[4:8], questions[8:10]]
    assert {cap for _, cap in seen} == {16}


@pytest.fixture
def command_line(monkeypatch):
    """``lmms-eval ARGS`` through its console-script function (``lmms_eval.cli.dispatch:main``);
    lmms-eval's logger, which the CLI points at this test's captured stdout, goes back to
    stderr afterwards."""
    from lmms_eval.cli.dispatch import main
    from loguru import logger

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["lmms-eval", *args])
        main()
    yield run
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def test_the_command_line_prints_the_results_table(command_line, tasks, samples, tiny, capsys):
    """The README command: lmms-eval's table holds mech.run's accuracy."""
    command_line("--model", "mech", "--model_args", "pretrained=tiny,intervention=zero:2", "--tasks", "mech_shapes",
                 "--include_path", str(tasks), "--batch_size", "4", "--limit", "8", "--verbosity", "WARNING")
    out = capsys.readouterr().out
    records = mech.run(tiny, samples["mech_shapes"][:8], mech.ZeroImage(layer=2), batch_size=4, progress=False).records
    row = next(line for line in out.splitlines() if line.startswith("|mech_shapes"))
    assert "exact_match" in row
    assert float(row.split("|")[6]) == pytest.approx(sum(r.score for r in records) / 8, abs=5e-4)


@pytest.mark.parametrize("model_args, message", [
    ("intervention=zerro:3", "intervention=zerro:3 is not known; use one of: none"),
    ("intervention=zero:x", "intervention=zero:x: zero takes a decoder layer"),
    ("intervention=zero:8", "intervention=zero:8: layer 8 is out of range: valid decoder layers are 0..7"),
    ("intervention=contrastive,rhoo=0.2", "unknown argument rhoo=0.2; valid: pretrained"),
    ("intervention=zero:1,rho=0.2", "rho=0.2 applies to intervention=contrastive, not intervention=zero:1"),
    ("intervention=contrastive,lam=nan", "intervention=contrastive: lam=nan: must be a finite number"),
    ("intervention=contrastive,review=8", "intervention=contrastive: review layer 8 is out of range"),
    ("intervention=contrastive,mask_at=output", "intervention=contrastive: mask_at='output'; use one of"),
    ("intervention=contrastive,candidates=[1,", "candidates=[1,: give all, shallow, deep or a list"),
    ("pretrained=/no/such/folder", "pretrained=/no/such/folder: /no/such/folder: no such folder"),
    ("dtype=float8", "dtype='float8'; use one of auto, float32"),
])
def test_bad_model_args_fail_before_loading(model_args, message, monkeypatch):
    from mech.lmms.model import Mech

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(mech.model, "load", no_load)
    from lmms_eval.utils import simple_parse_args_string

    with pytest.raises(ModelArgsError) as error:
        Mech(**simple_parse_args_string(model_args), batch_size=1)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_bad_model_args_are_one_line_and_exit_2_on_the_command_line(command_line, tasks, capsys, monkeypatch):
    """The model's arguments are checked when lmms-eval builds the model, after it has
    indexed the tasks: the hundreds of its own are left out here to save that time."""
    from lmms_eval.tasks import TaskManager

    index = TaskManager.initialize_tasks
    monkeypatch.setattr(TaskManager, "initialize_tasks",
                        lambda self, include_path=None, include_defaults=True: index(self, include_path, False))
    with pytest.raises(SystemExit) as exit_:
        command_line("--model", "mech", "--model_args", "intervention=contrastive,rhoo=0.2", "--tasks", "mech_shapes",
                     "--include_path", str(tasks), "--verbosity", "WARNING")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["lmms-eval --model mech: error: unknown argument rhoo=0.2; valid: "
                                        + err.split("valid: ", 1)[1].strip()]
    assert "Traceback" not in err


def test_documents_mech_cannot_answer_and_sampling_are_refused():
    from PIL import Image

    from mech.lmms.model import _max_new_tokens, _one_turn

    image = Image.new("RGB", (8, 8))
    text = {"type": "text", "text": "what?"}
    assert _one_turn([{"role": "user", "content": [{"type": "image", "url": image}, text]}], "t", 0) == ("what?", image)
    for content in ([text], [{"type": "image", "url": image}] * 2 + [text],
                    [{"type": "image", "url": image}, {"type": "video", "url": "v.mp4"}, text]):
        with pytest.raises(ValueError, match="task t, document 3: mech answers one user turn of one image"):
            _one_turn([{"role": "user", "content": content}], "t", 3)
    with pytest.raises(ValueError, match="one user turn"):
        _one_turn([{"role": "system", "content": [text]}, {"role": "user", "content": [{"type": "image", "url": image},
                                                                                        text]}], "t", 3)
    assert _max_new_tokens({"until": ["\n\n"], "temperature": 0, "num_beams": 1}, "t") == 1024
    assert _max_new_tokens({"max_new_tokens": 16, "do_sample": False}, "t") == 16
    for kwargs in ({"temperature": 0.7}, {"num_beams": 3}):
        with pytest.raises(ValueError, match="mech decodes greedily"):
            _max_new_tokens(kwargs, "t")


def test_make_tasks_writes_once_and_prints_the_folder(tmp_path, capsys):
    make_tasks.main([str(tmp_path), "--shapes", "3", "--easyvqa", "2"])
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())
    parquet = tmp_path / "mech_shapes" / "test.parquet"
    before = parquet.stat().st_mtime_ns
    make_tasks.main([str(tmp_path), "--shapes", "3", "--easyvqa", "2"])
    assert parquet.stat().st_mtime_ns == before  # same settings: nothing rewritten
    make_tasks.main([str(tmp_path), "--shapes", "4", "--easyvqa", "2"])
    import datasets

    assert len(datasets.Dataset.from_parquet(str(parquet))) == 4
