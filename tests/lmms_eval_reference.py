"""lmms-eval 0.7.3's own scoring, called the way its task runner calls it.

Each task's YAML is loaded with lmms-eval's own loader (``!function`` resolved, includes
merged, ``TaskConfig`` defaults applied), and ``ConfigurableTask.process_results`` runs
on a stand-in for the task object that has just what that method reads: the output
type, the config (with the task's ``process_results``), the metric functions and their
keyword arguments from ``metric_list``, ``multiple_target`` and ``doc_to_target``. So the
``.strip()`` of the runner, the task's own ``process_results`` or the default metric
path (GQA's ``exact_match``, DocVQA's ``anls``) are lmms-eval's code, not ours.
"""

from __future__ import annotations

import functools
import os
import types

TASKS = {"vqav2": "vqav2/vqav2_val.yaml", "gqa": "gqa/gqa.yaml", "textvqa": "textvqa/textvqa_val.yaml",
         "okvqa": "ok_vqa/ok_vqa_val2014.yaml", "vizwiz": "vizwiz_vqa/vizwiz_vqa_val.yaml",
         "docvqa": "docvqa/docvqa_val.yaml"}
METRIC = {"docvqa": "anls"}


@functools.cache
def task_config(dataset: str):
    import lmms_eval
    import lmms_eval.api.metrics  # noqa: F401  (registers the metrics)
    from lmms_eval import utils
    from lmms_eval.api.task import TaskConfig

    path = os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", TASKS[dataset])
    raw = utils.load_yaml_config(path)
    return TaskConfig(**{k: v for k, v in raw.items() if k in TaskConfig.__dataclass_fields__})


@functools.cache
def _task(dataset: str):
    from lmms_eval.api.registry import METRIC_REGISTRY

    config = task_config(dataset)
    functions, kwargs = {}, {}
    for entry in config.metric_list:
        name = entry["metric"]
        if config.process_results is None:
            functions[name] = METRIC_REGISTRY[name]
            kwargs[name] = {k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better")}
    target = config.doc_to_target
    return types.SimpleNamespace(OUTPUT_TYPE=config.output_type, config=config, _metric_fn_list=functions,
                                 _metric_fn_kwargs=kwargs, multiple_target=0,
                                 doc_to_target=lambda doc: doc[target])


def _doc(dataset: str, answers: list[str]) -> dict:
    if dataset == "vqav2":  # answer records; answer_id makes each distinct, as in the dataset
        return {"question_id": 1, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                               for i, a in enumerate(answers)]}
    if dataset == "gqa":
        return {"answer": answers[0]}
    return {"question_id": 1, "answers": list(answers)}


def score(dataset: str, prediction: str, answers: list[str]) -> float:
    """lmms-eval's per-question score of ``prediction`` (``exact_match`` or ``anls``)."""
    from lmms_eval.api.task import ConfigurableTask

    task = _task(dataset)
    if dataset == "docvqa":
        task = types.SimpleNamespace(**{**vars(task), "multiple_target": len(answers)})
    process = ConfigurableTask.process_results.__wrapped__  # without the retry decorator
    out = process(task, _doc(dataset, answers), [prediction])
    return out[METRIC.get(dataset, "exact_match")]
