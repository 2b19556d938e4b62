"""`mech.sweep`: several runs over the same samples, each in its own folder; runs of plain
zero-masking share one clean prefill per batch (`mech.zero_mask_sweep`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .. import metrics, parallel
from .. import progress as progress_mod
from .. import prompts as prompts_mod
from .. import store as st
from ..decoding import Decoder
from ..interventions import ZeroImage
from ..results import Results
from ..shared_rows import ImageRowTemplates
from ..zero_sweep import zero_mask_sweep
from .checks import as_list
from .generate import warn_context
from .job import Job, drive
from .names import label, run_label, slug
from .single import run


def sweep(model, samples: Iterable, interventions, *, out=None, fast: bool | str = False,
          **kwargs) -> dict[str, Results]:
    """`run` each intervention on the same samples; ``{name: Results}``.

    ``interventions``: a mapping ``name -> intervention`` (None, a list or a `Decoder`
    allowed as values), or a sequence named by `slug`. With ``out``, each run resumes in
    ``out/<name>``.

    ``fast=True``: when every intervention is None or ``ZeroImage(layer, at="input")``
    and the run is local, the runs share one clean prefill per batch
    (`mech.zero_mask_sweep`): predictions, scores and chunk fingerprints are those
    of the naive runs (chunks are interchangeable both ways); only ``seconds`` differ,
    marked ``timing="sweep"`` (the baseline's is the clean generate, a layer's its own
    incremental generate). Anything else falls back to one `run` per intervention.

    ``fast="shared"``: as ``fast=True``, and the zeroed image rows are computed once for
    the run (`mech.shared_rows`, one `ImageRowTemplates` through every batch; what it kept
    is in ``meta["image_row_templates"]``): about half the work again, predictions equal to
    the naive runs' and scores up to floating-point summation order. Such chunks are
    fingerprinted apart (``image_rows: shared-template``) and kept in
    ``out/<name>+shared-rows``, never mixed with bitwise ones.
    """
    if fast not in (False, True, "exact", "shared"):
        raise ValueError(f"fast={fast!r}: use False (naive runs), True or 'exact' (bitwise-exact sweep) "
                         "or 'shared' (image rows shared across the batch)")
    if fast == "shared" and model.family.shared_rows:
        raise ValueError(f"fast='shared' does not apply to {model.family.name}: {model.family.shared_rows}; "
                         "use fast=True (the bitwise-exact sweep) or fast=False")
    samples = list(samples)
    if isinstance(interventions, Mapping):
        named = dict(interventions)
    else:
        named = {}
        for iv in interventions:
            name = slug(iv)
            if name in named:
                raise ValueError(f"intervention {iv!r} is given twice")
            named[name] = iv
    for name in named:
        if not re.fullmatch(r"[\w.+=-]+", name):
            raise ValueError(f"run name {name!r} is not a safe folder name ([A-Za-z0-9_.+=-])")
    folders = {name: None if out is None else Path(out) / name for name in named}
    # the runs share one bar: the running phase's, or the sweep's own
    with progress_mod.phase(f"mech.sweep, {len(named)} runs", total=len(samples) * len(named), show=kwargs.get("progress", True)):
        return _sweep(model, samples, named, folders, fast, kwargs)


def _sweep(model, samples, named, folders, fast, kwargs) -> dict[str, Results]:
    if fast and not kwargs.get("remote") and all(zero_layer(iv) is not ... for iv in named.values()):
        if fast == "shared":  # beside the bitwise chunks, never over them
            folders = {name: folder if folder is None or zero_layer(named[name]) is None
                       else folder.with_name(name + "+shared-rows") for name, folder in folders.items()}
        return zero_mask_sweep_runs(model, samples, named, folders, shared=fast == "shared", **kwargs)
    fingerprint = st.model_fingerprint(model)  # hashes every weight: once for all runs
    # a shard goes on with the next run where one lacks other shards' chunks
    return parallel.each(named, lambda name, iv: run(
        model, samples, None if isinstance(iv, Decoder) else iv, decoder=iv if isinstance(iv, Decoder) else None,
        out=folders[name], model_fingerprint=fingerprint, **kwargs))


def zero_layer(intervention):
    """The layer of a plain ``ZeroImage(layer, at="input")`` (alone or in a one-item list),
    None for no intervention, ``...`` for anything else."""
    if isinstance(intervention, Decoder):
        return ...
    interventions = as_list(intervention)
    if not interventions:
        return None
    if len(interventions) == 1 and type(interventions[0]) is ZeroImage and interventions[0].at == "input":
        return interventions[0].layer
    return ...


def zero_mask_sweep_runs(model, samples, named, folders, *, shared: bool = False, batch_size: int = 8,
                     max_new_tokens: int | None = None, protocol: str = metrics.DEFAULT_PROTOCOL,
                     question_prompt: Callable = prompts_mod.question_prompt,
                     chunk_size: int | None = None, extras=True, progress: bool = True,
                     remote=False, reuse_other_code: bool = False) -> dict[str, Results]:
    """`sweep` of ZeroImage runs (and the baseline) sharing one clean prefill per batch.

    Each run keeps its own folder, fingerprints and chunk files exactly as `run` writes
    them; a chunk is computed only for the runs that do not have it yet.
    """
    layer_of = {name: zero_layer(iv) for name, iv in named.items()}
    fingerprint = st.model_fingerprint(model)  # once for all runs: it hashes every weight
    jobs = {name: Job(model, samples, iv, folders[name], batch_size, max_new_tokens, question_prompt,
                       chunk_size, extras, remote, timing="sweep",
                       shared_image_rows=shared and layer_of[name] is not None, protocol=protocol,
                       model_fingerprint=fingerprint, reuse_other_code=reuse_other_code)
            for name, iv in named.items()}
    first = next(iter(jobs.values()))
    templates = None
    if shared:  # one for the run: every batch after the first reuses the zeroed image rows
        templates = ImageRowTemplates(model)
    # one bar: the running phase's, or the sweep's own (mech.progress)
    layers = sorted(layer for layer in layer_of.values() if layer is not None)
    what = f"ZeroImage layer={layers[0]}..{layers[-1]}" if len(layers) > 1 else label(next(iter(named.values())))
    bar = progress_mod.task(run_label(samples, f"zero-masking sweep, {len(jobs)} runs ({what}"
                                               f"{', shared image rows' if shared else ''})"),
                            len(samples) * len(jobs), show=progress)

    def compute(chunk, todo):
        layers = sorted({layer_of[name] for name in todo} - {None})
        new = {name: [] for name in todo}
        for b in range(0, len(chunk), batch_size):
            part = chunk[b:b + batch_size]
            batch = model.prepare(part, question_prompt=question_prompt)
            warn_context(model, part, batch, first.batch_cap(part))
            times: dict = {}
            ids = zero_mask_sweep(model, batch, layers, first.batch_cap(part), baseline=True, times=times,
                                  share_image_rows=shared, templates=templates)
            for name in todo:
                key = layer_of[name]
                new[name] += first.records(part, ids[key][:, batch.seq_len:], times[key], [dict() for _ in part],
                                           timing="sweep")
            bar.update(len(part) * len(todo))
        return new

    try:
        drive(jobs, compute, bar)
    finally:
        bar.close()
    if templates is not None:  # what this process kept (a resumed run computes only what it needed)
        for name, job in jobs.items():
            if job.meta["image_rows"] == "shared":
                job.meta["image_row_templates"] = templates.stats()
    return {name: job.result for name, job in jobs.items()}
