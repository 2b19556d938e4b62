"""Wall time of ``studies.layer_masking`` on the bench model with 1 and 2 CPU ranks.

    python -m bench.ranks                 # 16 samples, 2 repetitions of each, interleaved
    python -m bench.ranks --samples 32 --reps 3

The bench model (`bench.harness.FULL`: 8 layers, hidden 512, 576 image tokens) is saved
to a temporary folder; each repetition runs the whole study into a fresh ``--out``, as one
process or under ``torchrun --nproc-per-node 2``, every rank with 1 torch thread. The
study's own start-up (imports, loading the model in each rank) is inside the time: that
is what a user waits for. Writes ``bench/ranks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def save_bench_model(folder: Path) -> None:
    from mech.zoo.random_llava import random_llava

    from .harness import FULL

    keys = ("layers", "hidden", "heads", "kv_heads", "image_size", "patch_size", "vision_hidden", "vision_layers")
    module, processor = random_llava("llava-1.5", **{k: FULL[k] for k in keys})
    module.save_pretrained(folder)
    processor.save_pretrained(folder)


def timed(ranks: int, model: Path, out: Path, samples: int) -> float:
    launcher = [sys.executable, "-m"] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m"]
    command = [*launcher, "studies.layer_masking", "--model", str(model), "--datasets", "shapes",
               "--limit", str(samples), "--batch-size", "2", "--chunk-size", "2", "--no-progress", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ranks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ranks.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        save_bench_model(model)
        times = {1: [], 2: []}
        for rep in range(args.reps):
            for ranks in (1, 2):
                times[ranks].append(timed(ranks, model, Path(tmp) / f"out-{ranks}-{rep}", args.samples))
                print(f"rep {rep} ranks {ranks}: {times[ranks][-1]:.1f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    result = {"samples": args.samples, "seconds": times, "median_1_rank": one, "median_2_ranks": two,
              "ratio_2_over_1": two / one, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"1 rank {one:.1f} s, 2 ranks {two:.1f} s: ratio {two / one:.3f} (2 ranks / 1) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
