"""What every benchmark shares: the bench models' configs, building one with its batch on
the benchmark device, and timing (one call, interleaved pairs, and their statistics).

The configs are `mech.zoo.random_llava` shapes (random weights, nothing downloaded):
``FULL`` the mid-size model of ``python -m bench``, ``QUICK`` its smoke-run stand-in,
``SWEEP32`` LLaVA-1.5-7B's depth on a narrower model (the 32-layer sweep rows).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

FULL = dict(layers=8, hidden=512, heads=8, kv_heads=8, image_size=96, patch_size=4,
            vision_hidden=128, vision_layers=2, batch=2, question_words=125, max_new_tokens=4,
            capture_layers=[1, 3, 5, 7])
QUICK = dict(layers=4, hidden=64, heads=4, kv_heads=2, image_size=32, patch_size=4,
             vision_hidden=32, vision_layers=1, batch=2, question_words=10, max_new_tokens=2,
             capture_layers=[0, 1, 2, 3])
SWEEP32 = dict(layers=32, hidden=128, heads=2, kv_heads=2, image_size=96, patch_size=4, vision_hidden=128,
               vision_layers=2, batch=2, question_words=125, max_new_tokens=4)


# -- the model and its batch -------------------------------------------------------------

def build(config: dict, attn: str = "sdpa"):
    """``(mech.Model, Batch)`` for ``config`` on the benchmark device; the batch has
    ``config["batch"]`` rows of different lengths (left padding)."""
    import mech
    from mech.zoo.random_llava import WORDS, random_images, random_llava

    keys = ("layers", "hidden", "heads", "kv_heads", "image_size", "patch_size", "vision_hidden",
            "vision_layers")
    module, processor = random_llava("llava-1.5", attn=attn, **{k: config[k] for k in keys})
    module.to(device())
    model = mech.load(module, processor=processor)
    words = [WORDS[i % len(WORDS)] for i in range(config["question_words"])]
    questions = [" ".join(words[i:] + words[:i]) for i in range(config["batch"])]
    questions[0] = " ".join(words[:-3])  # rows of different length: left padding
    batch = model.prepare(questions=questions, images=random_images(config["batch"]))
    return model, batch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- timing ------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def pair_statistics(a: list[float], b: list[float]) -> dict:
    """Interleaved timings ``a`` (toolkit) and ``b`` (anchor), pair ``i`` being
    ``(a[i], b[i])``: both medians, the ratio of the medians, the median and range of the
    pair ratios ``a[i] / b[i]``, and the timings themselves."""
    ma, mb = statistics.median(a), statistics.median(b)
    pairs = [x / y for x, y in zip(a, b)]
    return {"toolkit_s": ma, "anchor_s": mb, "ratio": ma / mb, "pair_ratio_median": statistics.median(pairs),
            "pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs), "toolkit_all_s": a, "anchor_all_s": b}


def interleaved(toolkit, anchor, reps: int) -> dict:
    """Warm up each, then time ``reps`` interleaved pairs A B A B ...; `pair_statistics`."""
    toolkit(), anchor()
    a, b = [], []
    for _ in range(reps):
        for fn, times in ((toolkit, a), (anchor, b)):
            times.append(timed(fn))
    return pair_statistics(a, b)
