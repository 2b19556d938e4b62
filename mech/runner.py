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
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from . import generation, metrics, parallel, stepwise
from . import prompts as prompts_mod
from . import store as st
from .interventions import Intervention, apply
from .results import Record, Results

__all__ = ["run", "sweep", "slug", "Decoder", "Record", "Results", "ContextWarning"]

# What a prediction is, recorded in every chunk fingerprint (chunks of the earlier
# first-line rule are therefore recomputed, not mixed in).
OUTPUT = "whole continuation, special tokens skipped, stripped"

# Result keys in the batch's padded image-token layout ([batch, ..., n_image]): trimmed
# to each sample's own image-token count so records do not depend on batch-mates.
# None means every key. Unknown interventions: last dim == n_image is taken as this layout.
_PER_IMAGE = {"ContrastiveMask": {"scores", "weights"}, "CaptureImageAttention": None}
# Results that are the same for every sample (not along the batch dim) are not extras.
_RUN_CONSTANTS = {"ContrastiveMask": {"candidates"}}


# -- alternative decoders --------------------------------------------------------------


class Decoder:
    """Base of decoders that replace ``model.generate`` in the runner (DoLa, ViCrop).

    A decoder is a frozen dataclass (its fields are its parameters: they enter the chunk
    fingerprint and the run's slug) with
    ``generate(model, batch, max_new_tokens, samples) -> (new_ids, extras)``: greedy new
    tokens ``[batch, new]`` (padding after EOS, as ``generate`` pads) and one dict of
    plain per-sample values per row. ``samples`` are the batch's samples, for decoders
    that need more than the prepared batch (ViCrop crops the original images).
    """

    def validate(self, model) -> None:
        pass

    def generate(self, model, batch, max_new_tokens: int, samples) -> tuple[torch.Tensor, list[dict]]:
        raise NotImplementedError


# -- the runner ------------------------------------------------------------------------


def run(model, samples: Iterable, intervention: Intervention | Sequence[Intervention] | None = None,
        *, out=None, batch_size: int = 8, max_new_tokens: int | None = None,
        protocol: str = metrics.DEFAULT_PROTOCOL,
        question_prompt: Callable = prompts_mod.question_prompt, chunk_size: int | None = None,
        extras: bool | Iterable[str] = True, progress: bool = True,
        remote: bool | str = False, decoder: Decoder | None = None,
        model_fingerprint: dict | None = None) -> Results:
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
        progress: show a tqdm bar.
        remote: nnsight's ``remote=`` (``True``: NDIF; ``"local"``: serialisation dry run).
            Results do not depend on it, so it is not part of the chunk fingerprint; the
            seconds then include the round trip to the server.
        decoder: a `Decoder` (e.g. ``mech.DoLa()``, ``mech.ViCrop()``) that generates
            instead of ``model.generate``; it cannot be combined with interventions or
            ``remote``. Its parameters are part of the chunk fingerprint; the clock runs
            around its ``generate`` call.
        model_fingerprint: `mech.store.model_fingerprint` of ``model`` when already
            computed (`sweep` hashes the weights once for all its runs).
    """
    from tqdm.auto import tqdm

    samples = list(samples)
    _check_decoder(model, decoder, _as_list(intervention), remote)
    job = _Job(model, samples, intervention, out, batch_size, max_new_tokens, question_prompt,
               chunk_size, extras, remote, decoder=decoder, protocol=protocol, model_fingerprint=model_fingerprint)
    bar = tqdm(total=len(samples), disable=not progress or not parallel.current().writes_output, unit="sample",
               desc=job.meta["slug"])

    def compute(chunk, todo):
        new = []
        for b in range(0, len(chunk), batch_size):
            new += _run_batch(model, chunk[b:b + batch_size], job, remote, decoder)
            bar.update(len(chunk[b:b + batch_size]))
        return {name: new for name in todo}

    try:
        _drive({"run": job}, compute, bar)
    finally:
        bar.close()
    return job.result


def _drive(jobs: dict, compute: Callable, bar) -> None:
    """Finish every chunk of ``jobs`` (parallel runs over the same samples): reuse what is
    stored, compute the rest with ``compute(chunk, todo) -> {name: records}``.

    Chunks another process is computing (its lock is held) are passed over and taken up
    at the end: by then they are usually finished and only read; if their holder died,
    the lock is free again and they are computed here.

    Among torchrun ranks or shards (`mech.parallel`), this process computes only the chunks
    it owns; ranks then meet at a barrier and read the others', so each ends with the
    whole result; a shard that lacks others' chunks stops with `mech.parallel.ShardDone`.
    """
    share = parallel.current()
    if any(job.store is None for job in jobs.values()):
        share = parallel.Share()  # nothing to share through: every process does it all

    def finish(index, chunk, fingerprints, wait: bool) -> bool:
        todo = [name for name, job in jobs.items() if not job.take_stored(index, chunk, fingerprints[name], bar)]
        if not todo:
            return True
        stores = [(jobs[name].store, fingerprints[name]) for name in todo if jobs[name].store is not None]
        with st.lock_chunks(stores, wait=wait) as held:
            if not held:
                return False
            todo = [name for name in todo if not jobs[name].take_stored(index, chunk, fingerprints[name], bar)]
            if todo:
                new = compute(chunk, todo)
                for name in todo:
                    jobs[name].save(index, fingerprints[name], new[name])
        return True

    def stored(index, chunk, fingerprints) -> bool:
        return all([job.take_stored(index, chunk, fingerprints[name], bar) for name, job in jobs.items()])

    later, theirs = [], []
    for parts in zip(*(job.chunks() for job in jobs.values())):
        index, chunk = parts[0][0], parts[0][1]
        fingerprints = {name: part[2] for name, part in zip(jobs, parts)}
        if not share.owns(index):
            if not stored(index, chunk, fingerprints):
                theirs.append((index, chunk, fingerprints))
        elif not finish(index, chunk, fingerprints, wait=False):
            later.append((index, chunk, fingerprints))
    for index, chunk, fingerprints in later:
        finish(index, chunk, fingerprints, wait=True)
    if share.count == 1:
        return
    names = ", ".join(job.meta["slug"] for job in jobs.values())
    if not share.group:
        if theirs:
            raise parallel.ShardDone(f"{share} finished its chunks of {names}; {len(theirs)} chunk(s) of other "
                                     "shards are not there yet")
        return
    parallel.barrier()
    for index, chunk, fingerprints in theirs:
        if not stored(index, chunk, fingerprints):
            raise RuntimeError(f"chunk {index} of {names} is missing after every rank finished: rank "
                               f"{parallel.rank_of(index, share)} stopped before writing it; rerun the same "
                               "command to finish it (finished chunks are reused)")


class _Job:
    """One run's configuration, fingerprints, chunk store and the records of its chunks."""

    def __init__(self, model, samples, intervention, out, batch_size, max_new_tokens, question_prompt,
                 chunk_size, extras, remote, timing=None, decoder=None, shared_image_rows=False,
                 protocol=metrics.DEFAULT_PROTOCOL, model_fingerprint=None):
        interventions = _as_list(intervention)
        _check_args(model, samples, interventions, batch_size, max_new_tokens, chunk_size, protocol)
        if chunk_size is None:
            chunk_size = batch_size * -(-64 // batch_size)
        self.model, self.samples, self.interventions = model, samples, interventions
        self.chunk_size, self.question_prompt, self.protocol = chunk_size, question_prompt, protocol
        self.caps = generation.caps((s.dataset for s in samples), max_new_tokens)
        self.keep = keep = extras if isinstance(extras, bool) else \
            sorted({extras} if isinstance(extras, str) else set(extras))
        self.store = store = st.ChunkStore(out) if out is not None else None
        self.base = base = {
            "format": st.FORMAT,
            "model": model_fingerprint or st.model_fingerprint(model),
            "intervention": st.canonical(interventions) if interventions else None,
            "generation": {"max_new_tokens": dict(sorted(self.caps.items())), "do_sample": False,
                           "batch_size": batch_size, "output": OUTPUT,
                           # seconds of a shared sweep are incremental, not standalone
                           "timing": "sweep" if timing == "sweep" else "standalone"},
            "prompt": {"question_prompt": _name(question_prompt)},
            "extras": keep,
        }
        if decoder is not None:  # absent otherwise, so chunks written before decoders still match
            base["decoder"] = st.canonical(decoder)
        if shared_image_rows:  # other arithmetic (see mech.shared_rows): its own chunks
            # "template": rows from the run-level unpadded template, not a batch's padded row
            base["generation"]["image_rows"] = "shared-template"
        self.meta = meta = {
            "model": model.source, "revision": model.revision, "family": model.family.name,
            "intervention": st.dumps(base["intervention"]),
            "slug": slug(decoder if decoder is not None else intervention),
            "max_new_tokens": self.caps, "protocol": protocol, "batch_size": batch_size, "chunk_size": chunk_size,
            "question_prompt": _name(question_prompt), "n_samples": len(samples),
            "timing": timing or ("per-sample" if batch_size == 1 else "amortised"),
            "device": str(model.device), "versions": _versions(), "remote": str(remote),
            "image_rows": "shared" if shared_image_rows else "per sample",
        }
        self._chunks = []
        for lo in range(0, len(samples), chunk_size):
            chunk = samples[lo:lo + chunk_size]
            texts = [model.prompt(question_prompt(s)) for s in chunk]
            self._chunks.append((chunk, {**base, "samples": {"ids": [s.id for s in chunk],
                                                             "digest": st.sample_digest(chunk, texts)}}))
        if store is not None:
            parallel.agree(st.digest(base), f"run {meta['slug']}")
            if parallel.current().main:
                store.write_manifest(meta, base, [s.id for s in samples], [f for _, f in self._chunks])
        self.parts: dict[int, list[Record]] = {}
        self.computed, self.reused, self.rejected = [], [], {}

    def chunks(self):
        """``(index, samples, fingerprint)`` of each chunk."""
        for index, (chunk, fingerprint) in enumerate(self._chunks):
            yield index, chunk, fingerprint

    def take_stored(self, index, chunk, fingerprint, bar=None) -> bool:
        """Take chunk ``index`` from the store if it is there and sound; its scores are
        recomputed from the stored predictions (under every protocol)."""
        if index in self.parts:
            return True
        stored, problem = _stored(self.store, fingerprint)
        if problem and index not in self.rejected:
            warnings.warn(problem, st.ChunkWarning, stacklevel=4)
            self.rejected[index] = problem
        if stored is None:
            return False
        for record, sample in zip(stored, chunk):
            record.scores, record.score = _scores(sample, record.prediction, self.protocol)
            record.question_type = sample.question_type
        self.parts[index] = stored
        self.reused.append(index)
        if bar is not None:
            bar.update(len(chunk))
        return True

    def batch_cap(self, samples) -> int:
        """New tokens a batch generates: the largest cap among its samples."""
        return max(self.caps[s.dataset] for s in samples)

    def records(self, samples, new, seconds, per_sample, timing=None) -> list[Record]:
        return _records(self.model, samples, new, seconds, per_sample, self.caps, self.protocol, timing)

    def save(self, index, fingerprint, new: list[Record]) -> None:
        if self.store is not None:
            self.store.save(fingerprint, [asdict(r) for r in new],
                            {"device": self.meta["device"], "versions": self.meta["versions"],
                             "protocol": self.protocol, "written_by": str(parallel.current()),
                             "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.parts[index] = new
        self.computed.append(index)

    @property
    def result(self) -> Results:
        records = [r for index in sorted(self.parts) for r in self.parts[index]]
        return Results(records, self.meta, sorted(self.computed), sorted(self.reused), dict(self.rejected))


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
    if fast and not kwargs.get("remote") and all(_zero_layer(iv) is not ... for iv in named.values()):
        if fast == "shared" and out is not None:  # beside the bitwise chunks, never over them
            folders = {name: folder if _zero_layer(named[name]) is None
                       else folder.with_name(name + "+shared-rows") for name, folder in folders.items()}
        return _zero_mask_sweep(model, samples, named, folders, shared=fast == "shared", **kwargs)
    fingerprint = st.model_fingerprint(model)  # hashes every weight: once for all runs
    return {name: run(model, samples, None if isinstance(iv, Decoder) else iv,
                      decoder=iv if isinstance(iv, Decoder) else None, out=folders[name],
                      model_fingerprint=fingerprint, **kwargs)
            for name, iv in named.items()}


def _zero_layer(intervention):
    """The layer of a plain ``ZeroImage(layer, at="input")`` (alone or in a one-item list),
    None for no intervention, ``...`` for anything else."""
    from .interventions import ZeroImage

    if isinstance(intervention, Decoder):
        return ...
    interventions = _as_list(intervention)
    if not interventions:
        return None
    if len(interventions) == 1 and type(interventions[0]) is ZeroImage and interventions[0].at == "input":
        return interventions[0].layer
    return ...


def _zero_mask_sweep(model, samples, named, folders, *, shared: bool = False, batch_size: int = 8,
                     max_new_tokens: int | None = None, protocol: str = metrics.DEFAULT_PROTOCOL,
                     question_prompt: Callable = prompts_mod.question_prompt,
                     chunk_size: int | None = None, extras=True, progress: bool = True,
                     remote=False) -> dict[str, Results]:
    """`sweep` of ZeroImage runs (and the baseline) sharing one clean prefill per batch.

    Each run keeps its own folder, fingerprints and chunk files exactly as `run` writes
    them; a chunk is computed only for the runs that do not have it yet.
    """
    from tqdm.auto import tqdm

    from .zero_sweep import zero_mask_sweep

    layer_of = {name: _zero_layer(iv) for name, iv in named.items()}
    fingerprint = st.model_fingerprint(model)  # once for all runs: it hashes every weight
    jobs = {name: _Job(model, samples, iv, folders[name], batch_size, max_new_tokens, question_prompt,
                       chunk_size, extras, remote, timing="sweep",
                       shared_image_rows=shared and layer_of[name] is not None, protocol=protocol,
                       model_fingerprint=fingerprint)
            for name, iv in named.items()}
    first = next(iter(jobs.values()))
    templates = None
    if shared:  # one for the run: every batch after the first reuses the zeroed image rows
        from .shared_rows import ImageRowTemplates

        templates = ImageRowTemplates(model)
    bar = tqdm(total=len(samples) * len(jobs), disable=not progress or not parallel.current().writes_output, unit="run-sample",
               desc=f"zero-mask sweep ({len(jobs)} runs{', shared image rows' if shared else ''})")

    def compute(chunk, todo):
        layers = sorted({layer_of[name] for name in todo} - {None})
        new = {name: [] for name in todo}
        for b in range(0, len(chunk), batch_size):
            part = chunk[b:b + batch_size]
            batch = model.prepare(part, question_prompt=question_prompt)
            _warn_context(model, part, batch, first.batch_cap(part))
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
        _drive(jobs, compute, bar)
    finally:
        bar.close()
    if templates is not None:  # what this process kept (a resumed run computes only what it needed)
        for name, job in jobs.items():
            if job.meta["image_rows"] == "shared":
                job.meta["image_row_templates"] = templates.stats()
    return {name: job.result for name, job in jobs.items()}


def slug(intervention) -> str:
    """Stable folder name: readable non-default parameters plus a hash of all of them.

    ``slug(None) == "baseline"``; ``slug(ZeroImage(layer=3))`` is like
    ``"zeroimage-layer3-1f0c2a9b"``; lists join their parts with ``+``.
    """
    interventions = [intervention] if isinstance(intervention, Decoder) else _as_list(intervention)
    if not interventions:
        return "baseline"
    parts = []
    for iv in interventions:
        words = [type(iv).__name__.lower()]
        for f in getattr(iv, "__dataclass_fields__", {}).values():
            value = getattr(iv, f.name)
            if f.init and _differs(value, f.default):
                text = st.dumps(st.canonical(value)) if not isinstance(value, str) else value
                words.append(f.name + re.sub(r"[^\w.]+", ".", text).strip("."))
        parts.append("-".join(words))
    return "+".join(parts)[:80] + "-" + st.digest(st.canonical(interventions))[:8]


def _stored(store, fingerprint) -> tuple[list[Record] | None, str | None]:
    """A chunk's records if stored and sound; else None and why, if it exists."""
    if store is None:
        return None, None
    stored, problem = store.load(fingerprint)
    try:
        return (None if stored is None else [Record(**r) for r in stored]), problem
    except TypeError as error:
        return None, f"{store.path(fingerprint)}: corrupt chunk ({error}); recomputing"


# -- one batch ---------------------------------------------------------------------------


class ContextWarning(UserWarning):
    """A prompt plus its new tokens does not fit the model's context window."""


def _warn_context(model, samples, batch, cap: int) -> None:
    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if not limit:
        return
    lengths = batch.inputs["attention_mask"].sum(-1).tolist()
    for sample, length in zip(samples, lengths):
        if length + cap > limit:
            warnings.warn(f"sample {sample.id} ({sample.dataset}): its prompt is {length} tokens and up to {cap} "
                          f"new tokens follow, beyond the model's context of {limit} positions; its answer "
                          "is unreliable (shorten the question or lower --max-new-tokens)", ContextWarning,
                          stacklevel=4)


def _run_batch(model, samples, job, remote=False, decoder=None) -> list[Record]:
    batch = model.prepare(samples, question_prompt=job.question_prompt)
    interventions, cap = job.interventions, job.batch_cap(samples)
    _warn_context(model, samples, batch, cap)
    results = None
    with torch.no_grad():
        start = time.perf_counter()
        if decoder is not None:
            new, decoded = decoder.generate(model, batch, cap, samples)
        elif stepwise.edits_generation(interventions):  # acts on every generated token
            new, results = stepwise.generate(model, batch, interventions, cap, remote=remote)
        else:
            options = {"remote": remote} if remote else {}
            with model.generate(batch, max_new_tokens=cap, **options) as tracer:
                if interventions:
                    results = apply(model, batch, *interventions)
                ids = tracer.result.save()
            new = ids[:, batch.seq_len:]
        if new.device.type == "cuda":
            torch.cuda.synchronize(new.device)
        seconds = time.perf_counter() - start
    keep = job.keep
    if decoder is not None:
        per_sample = [{k: v for k, v in row.items() if keep is True or (keep is not False and k in keep)}
                      for row in decoded]
    else:
        per_sample = _split_results(interventions, results, batch, keep)
    return job.records(samples, new, seconds, per_sample)


def _scores(sample, prediction: str, protocol: str) -> tuple[dict[str, float], float | None]:
    """``({protocol: score}, score under protocol)``; empty and None without answers."""
    if not len(sample.answers):
        return {}, None
    scores = {p: metrics.score(sample.dataset, prediction, sample.answers, protocol=p) for p in metrics.PROTOCOLS}
    return scores, scores[protocol]


def _records(model, samples, new, seconds, per_sample, caps, protocol, timing=None) -> list[Record]:
    """One `Record` per sample from the new token ids ``[batch, new]``, each row cut at its
    dataset's cap (``caps``); ``seconds`` is the batch's time."""
    new = new.cpu()
    counts = _count_new_tokens(new, _eos_ids(model))
    tokenizer = model.processor.tokenizer
    n = len(samples)
    records = []
    for i, sample in enumerate(samples):
        count = min(counts[i], caps[sample.dataset])
        text = tokenizer.decode(new[i, :count], skip_special_tokens=True).strip()
        scores, score = _scores(sample, text, protocol)
        records.append(Record(id=sample.id, dataset=sample.dataset, prediction=text, score=score,
                              seconds=seconds / n, new_tokens=count,
                              timing=timing or ("per-sample" if n == 1 else "amortised"), batch_size=n,
                              extras=per_sample[i], scores=scores, question_type=sample.question_type))
    return records


def _eos_ids(model) -> set[int]:
    eos = model.nn._module.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    tok = model.processor.tokenizer.eos_token_id
    return set(eos) | ({tok} if tok is not None else set())


def _count_new_tokens(new: torch.Tensor, eos: set[int]) -> list[int]:
    """Tokens before the first EOS in each row of ``new`` ``[batch, new]`` (padding only
    ever follows an EOS: generate pads rows that finished early)."""
    if not eos:
        return [new.shape[1]] * new.shape[0]
    stop = torch.isin(new, torch.tensor(sorted(eos)))
    first = torch.where(stop.any(1), stop.int().argmax(1), torch.tensor(new.shape[1]))
    return first.tolist()


def _split_results(interventions, results, batch, keep) -> list[dict]:
    """Per-sample extras from ``mech.apply``'s results: tensors along the batch dim, as
    plain Python values; per-image-token ones trimmed to the sample's own tokens."""
    rows = [dict() for _ in range(batch.size)]
    if not interventions or keep is False:
        return rows
    results = [results] if len(interventions) == 1 else list(results)
    names = [type(iv).__name__ for iv in interventions]
    counts = batch.image_counts.tolist()
    n_image = batch.image_index.shape[1]
    for i, (name, result) in enumerate(zip(names, results)):
        prefix = "" if len(names) == 1 else (f"{name}." if names.count(name) == 1 else f"{name}[{i}].")
        per_image = _PER_IMAGE.get(name, ...)
        for key, value in result.items():
            label = prefix + (f"layer{key}" if isinstance(key, int) else str(key))
            if key in _RUN_CONSTANTS.get(name, ()) or (keep is not True and label not in keep):
                continue
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch.size:
                continue
            value = value.detach().cpu()
            if per_image is ...:
                trim = value.dim() >= 2 and value.shape[-1] == n_image
            else:
                trim = per_image is None or key in per_image
            for b in range(batch.size):
                rows[b][label] = (value[b, ..., :counts[b]] if trim else value[b]).tolist()
    return rows


# -- checks and helpers ------------------------------------------------------------------


def _as_list(intervention) -> list:
    if intervention is None:
        return []
    if isinstance(intervention, Intervention):
        return [intervention]
    if isinstance(intervention, (list, tuple)):
        for iv in intervention:
            if not isinstance(iv, Intervention):
                raise TypeError(f"not an intervention: {iv!r}")
        return list(intervention)
    raise TypeError(f"intervention must be None, a mech intervention or a list of them, "
                    f"not {type(intervention).__name__}")


def _check_args(model, samples, interventions, batch_size, max_new_tokens, chunk_size, protocol) -> None:
    metrics.check_protocol(protocol)
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value is None and name == "max_new_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    if chunk_size is not None and chunk_size % batch_size:
        # Batches never straddle chunks, so any other size would quietly shrink batches.
        raise ValueError(f"chunk_size={chunk_size} must be a multiple of batch_size={batch_size}")
    if not samples:
        raise ValueError("no samples to run: the sample list is empty")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"sample ids must be unique (records and chunks are keyed by id); "
                         f"repeated: {dupes}")
    for sample in samples:
        _check_sample(sample)
        if sample.dataset not in metrics.SCORERS:
            raise ValueError(f"sample {sample.id}: no scorer for dataset {sample.dataset!r}; known: "
                             f"{', '.join(sorted(metrics.SCORERS))} (add one with mech.datasets.register)")
    if model.processor is None:
        raise ValueError("the runner needs a model loaded with its processor")
    for iv in interventions:
        iv.validate(model)
        for f in getattr(iv, "__dataclass_fields__", {}).values():
            value = getattr(iv, f.name)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                raise ValueError(f"{type(iv).__name__}.{f.name} is a tensor of shape "
                                 f"{tuple(value.shape)}, tied to one batch; the runner builds its "
                                 f"own batches, so give a scalar")


def _check_sample(sample) -> None:
    """A clear error for a sample the model or a scorer could not take."""
    from PIL import Image

    name = getattr(sample, "id", repr(sample))
    for field, kind in (("id", str), ("dataset", str), ("question", str)):
        if not isinstance(getattr(sample, field, None), kind):
            raise TypeError(f"sample {name}: {field} must be a {kind.__name__}, got {getattr(sample, field, None)!r}")
    if not isinstance(getattr(sample, "image", None), Image.Image):
        raise TypeError(f"sample {name}: image must be a PIL image, got {type(getattr(sample, 'image', None)).__name__}")
    answers = getattr(sample, "answers", None)
    if isinstance(answers, str) or not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"sample {name}: answers must be a tuple of strings, got {answers!r}")


def _check_decoder(model, decoder, interventions, remote) -> None:
    if decoder is None:
        return
    if not isinstance(decoder, Decoder):
        raise TypeError(f"decoder must be a mech Decoder (e.g. mech.DoLa()), not {type(decoder).__name__}")
    if interventions:
        raise ValueError("a decoder runs its own generation: give either interventions or decoder=, not both")
    if remote:
        raise ValueError("decoders run locally: remote= is not supported with decoder=")
    decoder.validate(model)


def _differs(value, default) -> bool:
    try:
        return bool(value != default)
    except Exception:  # tensors and other odd values: show them
        return True


def _name(fn) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    name = f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', repr(inner))}"
    if inner is not fn:
        name += st.dumps(st.canonical([list(fn.args), dict(fn.keywords)]))
    return name


def _versions() -> dict:
    import nnsight
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "nnsight": getattr(nnsight, "__version__", "?")}

