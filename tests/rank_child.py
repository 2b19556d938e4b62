"""One torchrun-like rank for the test that ranks running other code are refused.

``run_rank(rank, port, out, checkout, results)``: rank 1 imports mech from ``checkout`` (a
copy whose generation code differs), rank 0 from this tree; both join a group of two
through `mech.parallel.init` and start the same `mech.run`. Imports mech only inside, so
that a spawned rank picks its own copy.
"""

import os
import sys


def run_rank(rank, port, out, checkout, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    if rank == 1:
        sys.path.insert(0, checkout)
    import torch

    torch.set_num_threads(1)
    import mech
    from tiny_models import tiny_llava, tiny_samples

    mech.parallel.init()
    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    try:
        mech.run(model, tiny_samples(2), out=out, batch_size=2, max_new_tokens=1, progress=False)
        results.put((rank, "ran", mech.__file__))
    except RuntimeError as error:
        results.put((rank, str(error), mech.__file__))
