"""The one sample type every dataset yields and every runner consumes."""

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
