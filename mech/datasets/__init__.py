"""Datasets: every loader yields `Sample` objects.

``benchmarks`` knows the datasets by name (`DATASETS`, `load`, `register`); it reads
them through ``official`` (the benchmarks' own files), ``hub_copies`` (lmms-eval's
copies on the Hugging Face Hub), ``shapes`` (generated) and ``easyvqa``, all on
``base`` (`Benchmark`, the loaded sequence, and the seeded subsample every loader takes).
"""

from .base import Benchmark
from .benchmarks import DATASETS, HF_ORGS, BenchmarkInfo, load, register
from .sample import Sample, check_samples
from .shapes import VOCABULARY as SHAPES_VOCABULARY
from .shapes import shapes

__all__ = ["Sample", "check_samples", "load", "register", "DATASETS", "shapes", "SHAPES_VOCABULARY", "Benchmark", "BenchmarkInfo",
           "HF_ORGS"]
