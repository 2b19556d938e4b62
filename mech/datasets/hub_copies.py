"""lmms-eval's copies of the benchmarks on the Hugging Face Hub (or saved from it):
opening one (`open_hf`; `open_hub_checked` says in one sentence why the hub cannot serve
it), reading its rows in lmms-eval's schema into `Entry` lists (`hf_entries`) and the
callables that fetch each row's image on access (`hf_image_getter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .base import Entry

__all__ = ["open_hf", "open_hub_checked", "hf_entries", "hf_image_getter"]


# name -> (columns that must exist, row -> (id, question, answers, extras))
_HF_ROWS: Mapping[str, tuple[tuple[str, ...], Callable[[dict], tuple]]] = {
    "vqav2": (("question_id", "question", "answers"), lambda r: (
        r["question_id"], r["question"], [a["answer"] for a in r["answers"]],
        {k: r[k] for k in ("image_id", "question_type", "answer_type", "multiple_choice_answer") if k in r})),
    "gqa": (("id", "imageId", "question", "answer"), lambda r: (
        r["id"], r["question"], [r["answer"]], {"imageId": r["imageId"], "fullAnswer": r.get("fullAnswer")})),
    "textvqa": (("question_id", "question", "answers", "ocr_tokens"), lambda r: (
        r["question_id"], r["question"], r["answers"],
        {"image_id": r.get("image_id"), "ocr_tokens": list(r["ocr_tokens"] or [])})),
    "okvqa": (("question_id", "question", "answers"), lambda r: (
        r["question_id"], r["question"], r["answers"],
        {k: r[k] for k in ("question_type", "answer_type") if k in r})),
    "vizwiz": (("question_id", "question", "answers"), lambda r: (
        r["question_id"], r["question"], r["answers"], {"category": r.get("category")})),
    "docvqa": (("questionId", "question", "answers"), lambda r: (
        r["questionId"], r["question"], r["answers"],
        {k: r[k] for k in ("docId", "question_types", "ucsf_document_id") if k in r})),
}


def open_hf(where: str | Path, kind: str, config: str | None, split: str,
            revision: str | None, cache_dir: str | None):
    """Split ``split`` of config ``config`` as a ``datasets.Dataset``: from a
    ``save_to_disk`` folder (``kind="disk"``), else with ``datasets.load_dataset`` (a hub id
    at ``revision``, or a local folder in the hub repo's parquet layout)."""
    import datasets  # optional dependency ("hub" extra)

    if kind == "disk":
        sub = Path(where) / config if config and (Path(where) / config).is_dir() else Path(where)
        ds = datasets.load_from_disk(str(sub))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{sub}: no split {split!r} (has {sorted(ds)}); pass split=")
            ds = ds[split]
        return ds
    return datasets.load_dataset(str(where), name=config, split=split, revision=revision,
                                 cache_dir=cache_dir)


def open_hub_checked(name, where, kind, config, split, revision, cache_dir):
    """`open_hf`, with one clear sentence (and the fix) when the hub cannot serve it."""
    from .. import hub

    if kind != "hub":
        return open_hf(where, kind, config, split, revision, cache_dir)
    fix = (f"use a local copy: load({name!r}, source=FOLDER) or --source {name}=FOLDER (the official files, "
           "a save_to_disk folder or a hub snapshot)")
    why = hub.unavailable(f"{name} ({where})", fix)
    if why:
        raise ConnectionError(why)
    try:
        return open_hf(where, kind, config, split, revision, cache_dir)
    except (ConnectionError, FileNotFoundError) as error:
        if hub.offline():
            raise ConnectionError(f"{name} ({where}): hub access is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and "
                                  f"it is not in the datasets cache; {fix}") from None
        raise ConnectionError(f"{name} ({where}): could not be downloaded ({type(error).__name__}: {error}); "
                              f"{fix}") from None


def hf_entries(name: str, ds, indices: Sequence[int], label: str,
               images: Callable[[dict], Any]) -> list[Entry]:
    """Rows ``indices`` of ``ds`` (benchmark ``name`` in lmms-eval's columns) as entries,
    in that order; ``images(row)`` gives each entry's image callable, ``label`` names the
    copy in errors. Only the text columns are read here."""
    needed, convert = _HF_ROWS[name]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ValueError(f"{label}: columns {missing} missing (has {ds.column_names}); "
                         f"is this the {name} dataset in lmms-eval's schema?")
    text = ds.select_columns([c for c in ds.column_names if c != "image"])
    cols = text[list(indices)] if indices else {c: [] for c in text.column_names}
    rows = [{c: cols[c][k] for c in cols} for k in range(len(indices))]
    out = []
    for i, r in zip(indices, rows):
        rid, question, answers, extras = convert(r)
        if not isinstance(question, str):
            raise ValueError(f"{label}: row {i} (id {rid}): the question must be a string, got {question!r}")
        if isinstance(answers, str) or not isinstance(answers, (list, tuple)) \
                or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{label}: row {i} (id {rid}): answers must be a list of strings, got {answers!r}")
        out.append(Entry(str(rid), question, tuple(answers), images({"index": i, **r}), extras))
    return out


def hf_image_getter(name: str, ds, where, kind, rev, cache_dir, label):
    """``row -> (() -> PIL image)`` for the rows of ``ds``: its own ``image`` column, or
    for GQA the image of the row's ``imageId`` in the copy's images config."""
    if name != "gqa":
        if "image" not in ds.column_names:
            raise ValueError(f"{label}: no 'image' column")
        img_ds = ds.select_columns(["image"])
        return lambda r: (lambda i=r["index"]: img_ds[i]["image"])
    # lmms-eval's GQA keeps images in a separate config keyed by imageId.
    img_ds = open_hf(where, kind, "testdev_balanced_images", "testdev", rev, cache_dir)
    index = {k: i for i, k in enumerate(img_ds["id"])}
    img_ds = img_ds.select_columns(["image"])

    def getter(r):
        if r["imageId"] not in index:
            raise FileNotFoundError(f"{label}: image {r['imageId']!r} (question {r['id']}) not "
                                    "in the testdev_balanced_images config")
        return lambda i=index[r["imageId"]]: img_ds[i]["image"]
    return getter
