"""The one sample type every dataset yields and every runner consumes, and the check that a
sample is one the model, the scorers and the output files can take (`check_samples`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One visual question.

    ``answers`` holds the gold answers as the benchmark gives them: ten annotator
    answers for VQA-style sets (VQAv2, TextVQA, OK-VQA, VizWiz, shapes), one for GQA,
    one or more for DocVQA. ``extras`` carries dataset-specific fields (OCR tokens,
    scene, ...) and never affects scoring unless a metric asks for it.

    ``question_type``: the group a sample belongs to where the dataset has one, for results
    by group (layer discovery, controls): shapes' question type (color, shape, count,
    exist, spatial), the answer type of VQAv2 / OK-VQA / VizWiz (yes/no, number, other),
    DocVQA's first question type; None elsewhere.
    """

    id: str
    dataset: str
    image: Image.Image
    question: str
    answers: tuple[str, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)
    question_type: str | None = None


def check_id(name) -> None:
    """A sample id keeps every character through chunk files and netCDF (``.nc``): a
    non-empty string of UTF-8-encodable characters without NUL (netCDF ends a string at
    NUL, and an empty id is the padding of shorter datasets)."""
    if not isinstance(name, str):
        raise TypeError(f"sample {name!r}: id must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("sample id '': give every sample a non-empty id")
    if "\0" in name:
        raise ValueError(f"sample {name!r}: its id holds a NUL character, which netCDF files cut the id at; "
                         "remove it from the id")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"sample {name!r}: its id is not valid text ({error.reason}); give it UTF-8-encodable "
                         "characters") from None


def check_sample(sample) -> None:
    """A clear error for a sample the model or a scorer could not take."""
    name = getattr(sample, "id", repr(sample))
    check_id(getattr(sample, "id", None))
    for field_, kind in (("dataset", str), ("question", str)):
        if not isinstance(getattr(sample, field_, None), kind):
            raise TypeError(f"sample {name}: {field_} must be a {kind.__name__}, got "
                            f"{getattr(sample, field_, None)!r}")
    if not isinstance(getattr(sample, "image", None), Image.Image):
        raise TypeError(f"sample {name}: image must be a PIL image, got {type(getattr(sample, 'image', None)).__name__}")
    answers = getattr(sample, "answers", None)
    if isinstance(answers, str) or not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"sample {name}: answers must be a tuple of strings, got {answers!r}")


def check_samples(samples, where: str = "samples") -> None:
    """`check_sample` for each, and ids unique (records and chunks are keyed by id)."""
    seen, repeated = set(), []
    for sample in samples:
        check_sample(sample)
        if sample.id in seen:
            repeated.append(sample.id)
        seen.add(sample.id)
    if repeated:
        raise ValueError(f"{where}: sample ids must be unique (records and chunks are keyed by id); "
                         f"repeated: {sorted(set(repeated))[:5]}")
