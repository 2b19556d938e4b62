"""Datasets: every loader yields `Sample` objects."""

from .benchmarks import DATASETS, load
from .sample import Sample
from .shapes import VOCABULARY as SHAPES_VOCABULARY
from .shapes import shapes

__all__ = ["Sample", "load", "DATASETS", "shapes", "SHAPES_VOCABULARY"]
