"""Datasets: every loader yields `Sample` objects."""

from .sample import Sample
from .shapes import VOCABULARY as SHAPES_VOCABULARY
from .shapes import shapes

__all__ = ["Sample", "shapes", "SHAPES_VOCABULARY"]
