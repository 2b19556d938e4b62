"""Peak memory of one call of a benchmarked path, each measured in a fresh process.

CPU: peak RSS above the loaded model, the kernel's high-water mark reset right before the
call; GPU: ``torch.cuda.max_memory_allocated`` above what is allocated before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .harness import build, device
from .paths import cache_image_residuals, capture, plain_forward


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(path: str, config: dict) -> dict:
    """Peak memory of one call of ``path`` (in this fresh process) above what is loaded."""
    import ctypes
    import gc
    import tracemalloc

    model, batch = build(config, attn="eager" if path == "eager" else "sdpa")
    call = {"plain": lambda: plain_forward(model, batch),
            "capture": lambda: capture(model, batch, config["capture_layers"]),
            "eager": lambda: plain_forward(model, batch, output_attentions=True),
            "cache": lambda: cache_image_residuals(model, batch)}[path]
    out = call()  # warm-up: one-off allocations (thread pools, kernels, caches) are not the path's
    del out
    gc.collect()
    if device().type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = call()
        torch.cuda.synchronize()
        return {"path": path, "peak_above_loaded_bytes": torch.cuda.max_memory_allocated() - base,
                "method": "torch.cuda.max_memory_allocated"}
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS: reuse shows in RSS
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    base = _rss_kib("VmRSS")
    tracemalloc.start()
    out = call()
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _rss_kib("VmHWM")
    held = _rss_kib("VmRSS")  # with the call's output still alive
    kept = _result_bytes(out)
    del out
    return {"path": path, "peak_above_loaded_bytes": (peak - base) * 1024, "loaded_rss_bytes": base * 1024,
            "peak_rss_bytes": peak * 1024, "python_peak_bytes": python_peak,
            "held_above_loaded_bytes": (held - base) * 1024, "result_bytes": kept,
            "method": "VmHWM - VmRSS before (clear_refs 5), tracemalloc for Python objects"}


def _result_bytes(out) -> int:
    """Bytes of the tensors a path returns besides its logits (what `mech.apply` gave back)."""
    if not isinstance(out, tuple) or not isinstance(out[1], dict):
        return 0
    return sum(v.numel() * v.element_size() for v in out[1].values() if isinstance(v, torch.Tensor))


def memory(path: str, config: dict, threads: int, env: dict | None = None) -> dict:
    """`memory_child` of ``path`` in a fresh Python process with ``threads`` torch threads
    (and ``env`` added to its environment)."""
    import os

    code = ("import json, sys, torch; torch.set_num_threads(%d); from bench.memory import memory_child; "
            "print('RESULT' + json.dumps(memory_child(sys.argv[1], json.loads(sys.argv[2]))))" % threads)
    done = subprocess.run([sys.executable, "-c", code, path, json.dumps(config)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, check=False,
                          env={**os.environ, **(env or {})})
    for line in done.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"memory measurement of {path} failed:\n{done.stderr[-3000:]}")
