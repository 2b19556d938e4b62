"""easy-vqa: a real public shapes VQA set that ships its images on PyPI (``pip install
easy-vqa``): 64x64 PNG scenes of one coloured shape, questions about its shape, colour and
presence, one gold answer each (scored as GQA). Offline, so tests and notebooks can use it.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Entry, pick

__all__ = ["easyvqa"]


def easyvqa(split: str = "test", limit: int | None = None, seed: int = 0):
    """easy-vqa's ``split`` ("train" or "test") as a `Benchmark` of `Sample` objects
    (``limit``: a seeded subsample, in the set's order)."""
    try:
        import easy_vqa
    except ImportError:
        raise ImportError("easyvqa needs the easy-vqa package: pip install easy-vqa") from None

    if split not in ("train", "test"):
        raise ValueError(f"easyvqa: split {split!r} not known; use 'train' or 'test'")
    texts, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    recs = [Entry(f"easyvqa-{split}-{i:05d}", texts[i], (answers[i],), Path(paths[image_ids[i]]),
                  {"image_id": image_ids[i]}) for i in pick(len(texts), limit, seed)]
    return Benchmark("easyvqa", recs, split=split, source=str(Path(easy_vqa.__file__).parent), revision=None)
