"""What the exact weights digest of chunk fingerprints costs (`mech.store.weights_digest`).

    python -m bench.digest            # the bench model, and a 7B-sized set of bf16 tensors
    python -m bench.digest --no-7b    # the bench model only

The 7B-sized set has LLaVA-1.5-7B's decoder shapes (32 layers, hidden 4096, MLP 11008,
vocabulary 32064) plus a 0.3B vision tower, in bfloat16: 13.5 GB, allocated and touched
here (no download). Each digest is timed three times; the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def seven_b_like() -> torch.nn.Module:
    module = torch.nn.Module()
    shapes = {"embed": (32064, 4096), "lm_head": (32064, 4096), "vision": (300_000_000,)}
    for i in range(32):
        for name, shape in (("q", (4096, 4096)), ("k", (4096, 4096)), ("v", (4096, 4096)), ("o", (4096, 4096)),
                            ("gate", (11008, 4096)), ("up", (11008, 4096)), ("down", (4096, 11008))):
            shapes[f"layer{i}_{name}"] = shape
    for name, shape in shapes.items():
        module.register_parameter(name, torch.nn.Parameter(torch.ones(shape, dtype=torch.bfloat16),
                                                           requires_grad=False))
    return module


def timed(module) -> tuple[float, int]:
    from mech.store import weights_digest

    times = []
    for _ in range(3):
        start = time.perf_counter()
        weights_digest(module)
        times.append(time.perf_counter() - start)
    size = sum(t.numel() * t.element_size() for t in module.parameters())
    return statistics.median(times), size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.digest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-7b", action="store_true", help="skip the 13.5 GB tensor set")
    args = parser.parse_args(argv)
    from bench.harness import FULL, build

    model, _ = build(FULL)
    seconds, size = timed(model.nn._module)
    print(f"bench model: {size / 1e6:.0f} MB in {seconds * 1e3:.1f} ms ({size / seconds / 1e9:.1f} GB/s)")
    if not args.no_7b:
        seconds, size = timed(seven_b_like())
        print(f"7B-sized bf16 set: {size / 1e9:.1f} GB in {seconds:.2f} s ({size / seconds / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
