"""Absolute GPU figures on a LLaVA-1.5-7B-shaped random model (nothing downloaded).

    python -m bench.gpu --out bench/gpu.json        # CUDA, bfloat16, 7B shape
    python -m bench.gpu --tiny                      # the same script on a tiny model (CPU smoke run)

The model has LLaVA-1.5-7B's shapes (32 layers, hidden 4096, 32 heads, MLP 11008, vocab
32064; CLIP ViT-L/14 at 336 px: 24 layers, hidden 1024, 576 image tokens) and random
weights. Per sample (batch 1, a ~650-token prompt): plain forward, image-attention
capture at every layer, ContrastiveMask, and the full 32-layer zero-masking sweep (naive,
bitwise, shared image rows with the run's templates warm), each as the median of
``--reps`` runs after a warm-up, with ``torch.cuda.max_memory_allocated`` above the
loaded model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SEVEN_B = dict(layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab_size=32064,
               image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24,
               vision_intermediate=4096, question_words=40, max_new_tokens=8)
TINY = dict(layers=4, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab_size=64, image_size=32,
            patch_size=4, vision_hidden=32, vision_layers=1, vision_intermediate=64, question_words=10,
            max_new_tokens=2)


def measure(fn, reps: int, cuda: bool) -> dict:
    fn()  # warm-up: kernels, allocator pools, templates
    times, peaks = [], []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - base)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "all_s": times,
            "peak_above_loaded_bytes": max(peaks) if peaks else None}


def main(argv=None) -> dict:
    import mech
    from bench.paths import capture, contrastive, naive_zero_sweep, plain_forward
    from mech.zoo.random_llava import WORDS, random_images, random_llava

    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model, any device: checks the script runs")
    p.add_argument("--reps", type=int, default=3, help="timed runs per path after one warm-up (default 3)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        p.error("no CUDA device: this benchmark is for a GPU (use --tiny for a smoke run on CPU)")
    config = TINY if args.tiny else SEVEN_B
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    keys = ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab_size", "image_size", "patch_size",
            "vision_hidden", "vision_layers", "vision_intermediate")
    module, processor = random_llava("llava-1.5", device=device, dtype=dtype, **{k: config[k] for k in keys})
    model = mech.load(module, processor=processor)
    question = " ".join(WORDS[i % len(WORDS)] for i in range(config["question_words"]))
    batch = model.prepare(questions=[question], images=random_images(1))
    layers, new = list(range(model.n_layers)), config["max_new_tokens"]
    loaded = torch.cuda.memory_allocated() if cuda else None
    templates = mech.ImageRowTemplates(model, max_bytes=8 * 2**30)  # all 528 of 7B's at batch 1: ~5 GB
    paths = {
        "plain forward": lambda: plain_forward(model, batch),
        f"capture, {len(layers)} layers": lambda: capture(model, batch, layers),
        "contrastive": lambda: contrastive(model, batch),
        f"sweep naive ({len(layers)} generates)": lambda: naive_zero_sweep(model, batch, layers, new),
        "sweep bitwise": lambda: mech.zero_mask_sweep(model, batch, layers, new),
        "sweep shared rows (templates warm)": lambda: mech.zero_mask_sweep(
            model, batch, layers, new, share_image_rows=True, templates=templates),
    }
    rows = {}
    print(f"{'path':<40} {'s/sample':>10} {'peak above loaded [GiB]':>24}")
    for name, fn in paths.items():
        with torch.no_grad():
            rows[name] = measure(fn, args.reps, cuda)
        peak = rows[name]["peak_above_loaded_bytes"]
        print(f"{name:<40} {rows[name]['seconds']:>10.4f} {'-' if peak is None else f'{peak / 2**30:.2f}':>24}",
              flush=True)
    result = {"config": config, "dtype": str(dtype), "device": torch.cuda.get_device_name() if cuda else "cpu",
              "prompt_tokens": batch.seq_len, "image_tokens": int(batch.image_counts[0]),
              "loaded_bytes": loaded, "templates": templates.stats(), "torch": torch.__version__,
              "results": rows}
    print(f"prompt {batch.seq_len} tokens ({result['image_tokens']} image); templates {templates.stats()}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
