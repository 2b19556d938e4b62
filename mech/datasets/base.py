"""What every benchmark loader shares: `Entry` (one sample's text, its image not yet
opened), `Benchmark` (a loaded benchmark as a sequence of `Sample`) and `pick` (the
seeded subsample every loader takes of its entries).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image

from .sample import Sample

__all__ = ["Entry", "Benchmark", "pick"]


@dataclass(frozen=True)
class Entry:
    """One sample as a loader reads it: the text in memory, the image a file path or a
    callable returning a PIL image, opened only when the sample is asked for."""

    id: str
    question: str
    answers: tuple[str, ...]
    image: Path | Callable[[], Image.Image]
    extras: dict = field(default_factory=dict)


def _open_image(img: Path | Callable[[], Any], sample: str) -> Image.Image:
    """The sample's image as RGB; a missing, truncated or unreadable file is an OSError
    naming the file and the sample."""
    if not callable(img) and not img.is_file():
        raise FileNotFoundError(f"image file not found: {img} (sample {sample})")
    try:
        if callable(img):
            return img().convert("RGB")
        with Image.open(img) as im:
            return im.convert("RGB")  # decodes it all: a truncated file fails here, not in the model
    except (OSError, SyntaxError, ValueError) as error:
        where = "its image" if callable(img) else f"image {img}"
        raise OSError(f"sample {sample}: {where} cannot be read ({type(error).__name__}: {error}); the file "
                      "is damaged or incomplete: download or copy it again") from None


def _question_type(extras: dict) -> str | None:
    """The group of a sample (see `Sample.question_type`) from its dataset fields."""
    if extras.get("answer_type"):
        return str(extras["answer_type"])
    types = extras.get("question_types")
    if isinstance(types, (list, tuple)) and types:
        return str(types[0])
    return None


class Benchmark(Sequence[Sample]):
    """A loaded benchmark: text is in memory, images are opened on access."""

    def __init__(self, name: str, records: list[Entry], *, split: str, source: str,
                 revision: str | None):
        self.name, self.split, self.source, self.revision = name, split, source, revision
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self._records[i]
        return Sample(r.id, self.name, _open_image(r.image, r.id), r.question, r.answers, r.extras, _question_type(r.extras))

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        rev = f"@{self.revision[:7]}" if self.revision else ""
        return f"Benchmark({self.name!r}, split={self.split!r}, n={len(self)}, source={self.source}{rev})"


def pick(n: int, limit: int | None, seed: int) -> list[int]:
    """All indices in order (no ``limit``), else the first ``limit`` of a seeded shuffle:
    the subset of a larger limit starts with the smaller one, in the same order, so its
    chunks (cut in this order) are the smaller run's and are reused."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an integer >= 0, got {limit!r}")
    if limit is None:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:limit]
