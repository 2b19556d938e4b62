"""Datasets: every loader yields `Sample` objects."""

from .benchmarks import DATASETS, load
from .sample import Sample

__all__ = ["Sample", "load", "DATASETS"]
