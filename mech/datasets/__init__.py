"""Datasets: every loader yields `Sample` objects."""

from .benchmarks import DATASETS, load, register
from .sample import Sample
from .shapes import VOCABULARY as SHAPES_VOCABULARY
from .shapes import shapes

__all__ = ["Sample", "load", "register", "DATASETS", "shapes", "SHAPES_VOCABULARY"]
