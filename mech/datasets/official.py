"""The benchmarks' official files (as their authors distribute them) read into `Entry` lists.

``OFFICIAL[name](root, image_dir, ocr=False)`` parses the files of benchmark ``name``
found in folder ``root`` (or one folder below); ``image_dir`` overrides where images are
looked up. Every malformed record is named by file, record index and id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from .base import Entry

__all__ = ["OFFICIAL"]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-download the official file") from None


def _find(root: Path, *names: str) -> Path:
    for n in names:
        for p in (root / n, *root.glob(f"*/{n}")):
            if p.is_file():
                return p
    raise FileNotFoundError(
        f"none of {list(names)} found in {root} (or one folder below); point source= at "
        "the folder holding the official files")


def _field(rec: Any, key: str, path: Path, i: int, rid: Any = None) -> Any:
    if not isinstance(rec, dict) or key not in rec:
        where = f"record {i}" + (f" (id {rid})" if rid is not None else "")
        raise ValueError(f"{path}: {where} is malformed: missing {key!r}")
    return rec[key]


def _text(rec: Any, key: str, path: Path, i: int, rid: Any = None) -> str:
    value = _field(rec, key, path, i, rid)
    if not isinstance(value, str):
        where = f"record {i}" + (f" (id {rid})" if rid is not None else "")
        raise ValueError(f"{path}: {where}: {key!r} must be a string, got {type(value).__name__} {value!r}")
    return value


def _texts(rec: Any, key: str, path: Path, i: int, rid: Any = None) -> tuple[str, ...]:
    value = _field(rec, key, path, i, rid)
    where = f"record {i}" + (f" (id {rid})" if rid is not None else "")
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{path}: {where}: {key!r} must be a list of strings, got {type(value).__name__} "
                         f"{value!r}" + (" (a single string would be split into characters)"
                                         if isinstance(value, str) else ""))
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: {where}: {key!r} must hold only strings, got {value!r}")
    return tuple(value)


def _records_list(data: Any, key: str, path: Path) -> list:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
    return items


def _first_dir(root: Path, *cands: str) -> Path:
    return next((root / c for c in cands if (root / c).is_dir()), root / cands[0])


def _vqa_format(root: Path, qfile: str, afile: str, image_dir: Path | None) -> list[Entry]:
    qpath, apath = _find(root, qfile), _find(root, afile)
    imgs = image_dir or _first_dir(root, "val2014", "images/val2014", "images")
    anns = {}
    for i, a in enumerate(_records_list(_read_json(apath), "annotations", apath)):
        anns[_field(a, "question_id", apath, i)] = (i, a)
    out = []
    for i, q in enumerate(_records_list(_read_json(qpath), "questions", qpath)):
        qid = _field(q, "question_id", qpath, i)
        if qid not in anns:
            raise ValueError(f"{apath}: no annotation for question_id {qid} "
                             f"(record {i} of {qpath.name}); are the files from the same split?")
        j, a = anns[qid]
        answers = _answer_records(a, apath, j, qid)
        image_id = int(_field(q, "image_id", qpath, i, qid))
        extras = {k: a[k] for k in ("question_type", "answer_type", "multiple_choice_answer") if k in a}
        out.append(Entry(str(qid), _text(q, "question", qpath, i, qid), answers,
                        imgs / f"COCO_val2014_{image_id:012d}.jpg", {"image_id": image_id, **extras}))
    return out


def _answer_records(rec: Any, path: Path, i: int, rid: Any) -> tuple[str, ...]:
    """The ``answer`` strings of a record's list of annotator answer records."""
    items = _field(rec, "answers", path, i, rid)
    if not isinstance(items, list):
        raise ValueError(f"{path}: record {i} (id {rid}): 'answers' must be a list of answer records, "
                         f"got {type(items).__name__}")
    return tuple(_text(x, "answer", path, i, rid) for x in items)


def _gqa_official(root: Path, image_dir: Path | None, **_: Any) -> list[Entry]:
    path = _find(root, "testdev_balanced_questions.json")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping question id -> question")
    imgs = image_dir or _first_dir(root, "images")
    out = []
    for i, (qid, q) in enumerate(data.items()):
        image_id = _field(q, "imageId", path, i, qid)
        out.append(Entry(str(qid), _text(q, "question", path, i, qid),
                        (_text(q, "answer", path, i, qid),), imgs / f"{image_id}.jpg",
                        {"imageId": image_id, "fullAnswer": q.get("fullAnswer")}))
    return out


def _textvqa_official(root: Path, image_dir: Path | None, ocr: bool = False, **_: Any) -> list[Entry]:
    path = _find(root, "TextVQA_0.5.1_val.json")
    tokens: dict[str, list[str]] = {}
    try:
        opath = _find(root, "TextVQA_Rosetta_OCR_v0.2_val.json")
    except FileNotFoundError:
        if ocr:
            raise FileNotFoundError(
                f"ocr=True needs TextVQA_Rosetta_OCR_v0.2_val.json next to {path.name} in {root}; "
                "download it from textvqa.org or load with ocr=False") from None
    else:
        for i, r in enumerate(_records_list(_read_json(opath), "data", opath)):
            tokens[str(_field(r, "image_id", opath, i))] = list(_field(r, "ocr_tokens", opath, i))
    imgs = image_dir or _first_dir(root, "train_images", "images")
    out = []
    for i, q in enumerate(_records_list(_read_json(path), "data", path)):
        qid = _field(q, "question_id", path, i)
        image_id = str(_field(q, "image_id", path, i, qid))
        extras = {"image_id": image_id, "ocr_tokens": tokens.get(image_id, []), "use_ocr": ocr}
        out.append(Entry(str(qid), _text(q, "question", path, i, qid),
                        _texts(q, "answers", path, i, qid), imgs / f"{image_id}.jpg", extras))
    return out


def _vizwiz_official(root: Path, image_dir: Path | None, **_: Any) -> list[Entry]:
    path = _find(root, "val.json")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of VizWiz annotations")
    imgs = image_dir or _first_dir(root, "val", "images/val", "images")
    out = []
    for i, q in enumerate(data):
        image = _field(q, "image", path, i)
        answers = _answer_records(q, path, i, image)
        extras = {k: q[k] for k in ("answer_type", "answerable") if k in q}
        out.append(Entry(Path(image).stem, _text(q, "question", path, i, image), answers,
                        imgs / image, extras))
    return out


def _docvqa_official(root: Path, image_dir: Path | None, **_: Any) -> list[Entry]:
    path = _find(root, "val_v1.0.json", "val_v1.0_withQT.json")
    # "image" fields are relative ("documents/x.png"): beside the JSON in the original
    # layout; the SP-DocVQA download keeps the same field but puts every image in a flat
    # spdocvqa_images/ folder next to spdocvqa_qas/.
    bases = [image_dir] if image_dir else [path.parent, root]
    flat = [image_dir] if image_dir else [d for d in (root / "spdocvqa_images", path.parent.parent / "spdocvqa_images")
                                          if d.is_dir()]

    def image(rel: str) -> Path:
        for candidate in [b / rel for b in bases] + [d / Path(rel).name for d in flat]:
            if candidate.is_file():
                return candidate
        return bases[0] / rel

    out = []
    for i, q in enumerate(_records_list(_read_json(path), "data", path)):
        qid = _field(q, "questionId", path, i)
        extras = {k: q[k] for k in ("docId", "question_types", "ucsf_document_id") if k in q}
        out.append(Entry(str(qid), _text(q, "question", path, i, qid), _texts(q, "answers", path, i, qid),
                        image(_text(q, "image", path, i, qid)), extras))
    return out


# name -> parser(root, image_dir, ocr=False) -> entries in the files' order
OFFICIAL: Mapping[str, Callable[..., list[Entry]]] = {
    "vqav2": lambda root, image_dir, **_: _vqa_format(
        root, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", image_dir),
    "okvqa": lambda root, image_dir, **_: _vqa_format(
        root, "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json", image_dir),
    "gqa": _gqa_official,
    "textvqa": _textvqa_official,
    "vizwiz": _vizwiz_official,
    "docvqa": _docvqa_official,
}
