"""`mech.run`: one run of interventions (or a decoder) over samples, chunk by chunk."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from .. import metrics
from .. import progress as progress_mod
from .. import prompts as prompts_mod
from ..decoding import Decoder
from ..interventions import Intervention
from ..results import Results
from .checks import as_list, check_decoder
from .generate import run_batch
from .job import Job, drive
from .names import label, run_label


def run(model, samples: Iterable, intervention: Intervention | Sequence[Intervention] | None = None,
        *, out=None, batch_size: int = 8, max_new_tokens: int | None = None,
        protocol: str = metrics.DEFAULT_PROTOCOL,
        question_prompt: Callable = prompts_mod.question_prompt, chunk_size: int | None = None,
        extras: bool | Iterable[str] = True, progress: bool = True,
        remote: bool | str = False, decoder: Decoder | None = None,
        model_fingerprint: dict | None = None, reuse_other_code: bool = False) -> Results:
    """Greedy-generate answers for ``samples`` under ``intervention`` and score them.

    Args:
        model: a `mech.Model` with its processor.
        samples: `mech.datasets.Sample` objects with unique ids.
        intervention: None, one intervention, or a list composed with `mech.apply`
            (acting on the prefill of every batch). Tensor parameters shaped by a batch
            (per-token weights) are refused: the runner makes its own batches.
        out: folder for chunk files (resume); None keeps everything in memory.
        batch_size: samples per generate call (1 gives exact per-sample timings).
        max_new_tokens: new-token cap for every sample; None (default) takes each
            sample's dataset cap from `mech.generation` (lmms-eval's task configs). A
            batch generates to its largest cap and each row is cut at its own, which is
            what a separate run at that cap would generate (greedy decoding).
        protocol: which scores ``Record.score`` holds: ``"lmms-eval"`` (default) or
            ``"official"`` (`mech.metrics`); ``Record.scores`` holds both.
        question_prompt: ``sample -> str``, the text put in the model's template.
        chunk_size: samples per chunk file, a multiple of ``batch_size``; default the
            smallest multiple >= 64. Batches never straddle chunks.
        extras: keep all per-sample intervention results (True), none (False), or the
            named labels (CaptureImageAttention with all layers and heads can be large).
            Labels are the result keys (``"pre_layer"``; ``"layer5"`` for a layer key),
            prefixed ``"Class."`` when a list is run (``"Class[i]."`` if a class repeats).
        progress: show progress: this run advances the running `mech.progress.phase`,
            or shows a bar of its own outside one.
        remote: nnsight's ``remote=`` (``True``: NDIF; ``"local"``: serialisation dry run).
            Results do not depend on it, so it is not part of the chunk fingerprint; the
            seconds then include the round trip to the server.
        decoder: a `Decoder` (e.g. ``mech.DoLa()``, ``mech.ViCrop()``) that generates
            instead of ``model.generate``; it cannot be combined with interventions or
            ``remote``. Its parameters are part of the chunk fingerprint; the clock runs
            around its ``generate`` call.
        model_fingerprint: `mech.store.model_fingerprint` of ``model`` when already
            computed (`sweep` hashes the weights once for all its runs).
        reuse_other_code: chunk fingerprints hold the code that made them
            (`mech.codebase`); a finished chunk of this configuration made by other code
            (another mech version or checkout, other torch/transformers/nnsight) is
            recomputed with a `mech.ChunkWarning` naming it (False, the default) or reused
            (True), and then listed in ``meta["chunks_of_other_code"]`` and the manifest.
    """
    samples = list(samples)
    check_decoder(model, decoder, as_list(intervention), remote)
    job = Job(model, samples, intervention, out, batch_size, max_new_tokens, question_prompt,
               chunk_size, extras, remote, decoder=decoder, protocol=protocol, model_fingerprint=model_fingerprint,
               reuse_other_code=reuse_other_code)
    # one bar: the running phase's, or this run's own (mech.progress)
    bar = progress_mod.task(run_label(samples, label(decoder if decoder is not None else intervention)), len(samples),
                            show=progress, unit="sample")

    def compute(chunk, todo):
        new = []
        for b in range(0, len(chunk), batch_size):
            new += run_batch(model, chunk[b:b + batch_size], job, remote, decoder)
            bar.update(len(chunk[b:b + batch_size]))
        return {name: new for name in todo}

    try:
        drive({"run": job}, compute, bar)
    finally:
        bar.close()
    return job.result
