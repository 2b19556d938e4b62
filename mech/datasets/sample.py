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
    question type, ...) and never affects scoring unless a metric asks for it.
    """

    id: str
    dataset: str
    image: Image.Image
    question: str
    answers: tuple[str, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)
