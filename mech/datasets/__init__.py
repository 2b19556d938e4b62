"""Datasets: every loader yields `Sample` objects."""

from .sample import Sample

__all__ = ["Sample"]
