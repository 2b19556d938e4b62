"""A run in its own process, for the kill-and-restart test.

    python tests/runner_child.py OUT N_SAMPLES SLEEP_PER_BATCH_S

Builds the tiny random LLaVA-1.5 (seed 0) and samples exactly as the test does, runs
ContrastiveMask(review=3) with batch_size=1, chunk_size=2, and prints the results as one
JSON line. ``SLEEP_PER_BATCH_S`` slows each generate so the parent can kill mid-run.
"""

import json
import os
import sys
import time
from dataclasses import asdict

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mech  # noqa: E402
from tiny_models import tiny_llava, tiny_samples  # noqa: E402

INTERVENTION = mech.ContrastiveMask(review=3)
SETTINGS = dict(batch_size=1, chunk_size=2, max_new_tokens=4, progress=False)


def main(out: str, n: int, sleep: float) -> None:
    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    generate = mech.Model.generate

    def slow_generate(self, *args, **kwargs):
        time.sleep(sleep)
        return generate(self, *args, **kwargs)

    mech.Model.generate = slow_generate
    results = mech.run(model, tiny_samples(n), INTERVENTION, out=out, **SETTINGS)
    print(json.dumps({"records": [asdict(r) for r in results.records],
                      "computed": results.computed, "reused": results.reused}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
