"""Datasets: every loader yields `Sample` objects.

``benchmarks`` knows the datasets by name (`DATASETS`, `load`, `register`); it reads
them through ``official`` (the benchmarks' own files), ``hub_copies`` (lmms-eval's
copies on the Hugging Face Hub), ``shapes`` (generated) and ``easyvqa``, all on
``base`` (`Benchmark`, the loaded sequence, and the seeded subsample every loader takes);
``shape_pairs`` makes clean/corrupted shapes pairs for activation patching (`pairs`).
"""

from .base import Benchmark
from .benchmarks import DATASETS, HF_ORGS, BenchmarkInfo, load, register
from .sample import Sample, check_samples
from .shape_pairs import Pair, asked_object, covered_tokens, object_box, pairs
from .shapes import VOCABULARY as SHAPES_VOCABULARY
from .shapes import shapes

__all__ = ["Sample", "check_samples", "load", "register", "DATASETS", "shapes", "SHAPES_VOCABULARY", "Benchmark",
           "BenchmarkInfo", "HF_ORGS", "pairs", "Pair", "asked_object", "object_box", "covered_tokens"]
