"""The one runner every study uses: batched greedy generation, scoring, timing, resume.

::

    results = mech.run(model, samples, mech.ZeroImage(layer=3), out="runs/zero3", batch_size=8)
    ds = results.to_xarray()      # dim "sample": score, correct, seconds, inverse_time, ...

Generation follows each dataset's lmms-eval task (`mech.generation`: the new-token cap,
the whole continuation kept, stripped) unless ``max_new_tokens`` overrides the cap for
all; predictions are scored under every protocol (`mech.metrics`), and ``score`` is the
one of ``protocol``. Scores are recomputed from the stored predictions when chunks are
reused, so one generation serves both protocols.

Timing (``Record.seconds``, and 1/t = ``inverse_time`` in 1/s): the clock
(``time.perf_counter``, after a CUDA synchronise on GPU) runs around the
``with model.generate(...)`` block only — batch preparation, decoding, scoring and
writing are outside it. With ``batch_size=1`` each record's seconds is that sample's
exact generate wall time (``timing="per-sample"``). With larger batches a batch's time
is divided equally among its samples (``timing="amortised"``); a smaller last batch of
a chunk amortises over fewer samples, and each record says how many (``batch_size``).
The first batch also pays one-off costs (nnsight compiling the block, CUDA kernels).

Resume: with ``out=``, samples are cut into chunks of ``chunk_size`` (see `mech.store`
for the file format); a finished chunk whose fingerprint matches is read back, not
recomputed, so a killed run restarted with the same arguments ends with the same
records (timings aside) as an uninterrupted one.

The package, one concern a module: `single` (`run`), `sweeps` (`sweep` and the shared-prefill
zero-masking path), `job` (a run's fingerprints, chunk store traffic and the chunk schedule
among processes), `generate` (one batch, timed), `records` (records and scoring), `checks`
(argument checks), `names` (`slug`, `label`).
"""

from ..decoding import Decoder
from ..results import Record, Results
from .generate import ContextWarning
from .names import label, slug
from .records import OUTPUT
from .single import run
from .sweeps import sweep

__all__ = ["run", "sweep", "slug", "label", "Decoder", "Record", "Results", "ContextWarning", "OUTPUT"]
