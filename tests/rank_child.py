"""One torchrun-like rank for the test that other code is recomputed alone and refused
among ranks.

``run_rank(rank, port, alone, ranks, checkout, results)``: rank 1 imports mech from
``checkout`` (a copy whose generation code differs) and first runs alone into ``alone``,
a folder the other code's chunks are in (its predictions, computed chunks and warnings go
to ``results``); then both ranks join a group of two through `mech.parallel.init` and
start the same `mech.run` into ``ranks``. Imports mech only inside, so that a spawned rank
picks its own copy.
"""

import os
import sys


def run_rank(rank, port, alone, ranks, checkout, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    if rank == 1:
        sys.path.insert(0, checkout)
    import warnings

    import torch

    torch.set_num_threads(1)
    import mech
    from tiny_models import tiny_llava, tiny_samples

    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    if rank == 1:  # alone first: no group yet
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            done = mech.run(model, tiny_samples(4), out=alone, batch_size=2, chunk_size=2, max_new_tokens=2,
                            progress=False)
        results.put(("alone", done.predictions, done.computed, [str(w.message) for w in caught], mech.__file__))
    mech.parallel.init()
    try:
        mech.run(model, tiny_samples(2), out=ranks, batch_size=2, max_new_tokens=1, progress=False)
        results.put(("rank", rank, "ran", mech.__file__))
    except RuntimeError as error:
        results.put(("rank", rank, str(error), mech.__file__))
