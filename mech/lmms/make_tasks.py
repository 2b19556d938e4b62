"""Write mech's local lmms-eval tasks to a folder: ``python -m mech.lmms.make_tasks [DIR]``.

DIR (default ``runs/lmms-tasks``) receives the task YAMLs shipped in ``mech/lmms/tasks``
and, beside each, its test set as a parquet file that lmms-eval 0.7.3 loads offline
(``dataset_path: parquet`` with ``data_files`` relative to the YAML):

* ``mech_shapes``: `mech.datasets.shapes` (``split="test"``), ten answers per question;
* ``mech_easyvqa``: easy-vqa's test set from the easy-vqa package (`mech.datasets.load`),
  a seeded subsample of 200 of its 9,673 questions unless ``--easyvqa all``.

Rows are the samples in mech's order (``doc_id`` i is sample i; ``question_id`` is the
sample's id), images stored losslessly (PNG), so lmms-eval's documents are mech's
samples. The command prints DIR's absolute path and nothing else on stdout, for
``lmms-eval ... --include_path "$(python -m mech.lmms.make_tasks)"``; it writes nothing
when DIR already holds the same tasks (``mech_tasks.json`` records what was written).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

__all__ = ["write", "documents", "TASKS", "DEFAULT_DIR"]

DEFAULT_DIR = "runs/lmms-tasks"
TASKS = {"mech_shapes": "shapes", "mech_easyvqa": "easyvqa"}  # lmms-eval task -> mech dataset
TEMPLATES = Path(__file__).resolve().parent / "tasks"
STAMP = "mech_tasks.json"


def samples(dataset: str, limit: int | None, seed: int = 0) -> list:
    """The mech samples a task holds: the first ``limit`` of the shapes test set, or a
    seeded subsample of ``limit`` of easy-vqa's (None: all of it)."""
    from ..datasets import load, shapes

    if dataset == "shapes":
        return shapes(split="test", n=limit, seed=seed)
    return list(load("easyvqa", split="test", limit=limit, seed=seed))


def documents(dataset: str, items) -> list[dict]:
    """lmms-eval documents of mech samples, with the fields its VQAv2 / GQA code reads."""
    docs = []
    for s in items:
        doc = {"question_id": s.id, "question": s.question, "answer": s.answers[0], "image": s.image,
               "question_type": s.question_type or ""}
        if dataset == "shapes":  # VQAv2's answer records; answer_id keeps equal answers distinct
            doc["answers"] = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                              for i, a in enumerate(s.answers)]
        docs.append(doc)
    return docs


def write(folder=DEFAULT_DIR, *, shapes: int = 200, easyvqa: int | None = 200, seed: int = 0) -> Path:
    """Write both tasks to ``folder`` (``shapes`` questions of the shapes test set,
    ``easyvqa`` of easy-vqa's, None for all); returns its absolute path."""
    import datasets

    datasets.disable_progress_bars()  # stdout and stderr stay quiet: the path is the output
    folder = Path(folder).resolve()
    settings = {"format": 1, "shapes": shapes, "easyvqa": easyvqa, "seed": seed}
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(
            (folder / f"{t}.yaml").is_file() and (folder / t / "test.parquet").is_file() for t in TASKS):
        return folder
    limits = {"shapes": shapes, "easyvqa": easyvqa}
    for task, dataset in TASKS.items():
        rows = documents(dataset, samples(dataset, limits[dataset], seed))
        (folder / task).mkdir(parents=True, exist_ok=True)
        table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
        part = folder / task / "test.parquet.part"  # renamed when complete: never a half file
        table.to_parquet(str(part))
        part.replace(folder / task / "test.parquet")
        shutil.copyfile(TEMPLATES / f"{task}.yaml", folder / f"{task}.yaml")
    stamp.write_text(json.dumps(settings))
    return folder


def _count(text: str) -> int | None:
    """``--easyvqa``: a number of questions, or ``all`` (None)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of questions or all") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mech.lmms.make_tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=DEFAULT_DIR, help=f"where to write (default {DEFAULT_DIR})")
    parser.add_argument("--shapes", type=int, default=200, help="questions of the shapes test set (default 200)")
    parser.add_argument("--easyvqa", type=_count, default=200,
                        help="questions of easy-vqa's test set, a seeded subsample (default 200), or all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shapes set and the easy-vqa subsample")
    args = parser.parse_args(argv)
    for name in ("shapes", "easyvqa"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} {value}: must be an integer >= 1")
    try:
        folder = write(args.folder, shapes=args.shapes, easyvqa=args.easyvqa, seed=args.seed)
    except ImportError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(folder)


if __name__ == "__main__":
    main()
