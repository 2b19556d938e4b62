"""A run over chunks: its configuration and fingerprints (`Job`), its chunk store traffic,
and `drive`, which finishes every chunk of one or more runs over the same samples: reusing
what is stored, computing the rest, sharing the work among processes, ranks and shards."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from typing import Callable

import torch

from .. import codebase, generation, metrics, parallel
from .. import store as st
from ..results import Record, Results
from .checks import as_list, check_args
from .names import function_name, slug
from .records import OUTPUT, build_records


def drive(jobs: dict, compute: Callable, bar) -> None:
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

    def complete(index, chunk, fingerprints, wait: bool) -> bool:
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
        elif not complete(index, chunk, fingerprints, wait=False):
            later.append((index, chunk, fingerprints))
    for index, chunk, fingerprints in later:
        complete(index, chunk, fingerprints, wait=True)
    if share.count > 1:
        names = ", ".join(job.meta["slug"] for job in jobs.values())
        if not share.group:
            if theirs:
                raise parallel.ShardDone(f"{share} finished its chunks of {names}; {len(theirs)} chunk(s) of other "
                                         "shards are not there yet")
        else:
            parallel.barrier()
            for index, chunk, fingerprints in theirs:
                if not stored(index, chunk, fingerprints):
                    raise RuntimeError(f"chunk {index} of {names} is missing after every rank finished: rank "
                                       f"{parallel.rank_of(index, share)} stopped before writing it; rerun the same "
                                       "command to finish it (finished chunks are reused)")
    for job in jobs.values():
        job.finish()


class Job:
    """One run's configuration, fingerprints, chunk store and the records of its chunks."""

    def __init__(self, model, samples, intervention, out, batch_size, max_new_tokens, question_prompt,
                 chunk_size, extras, remote, timing=None, decoder=None, shared_image_rows=False,
                 protocol=metrics.DEFAULT_PROTOCOL, model_fingerprint=None, reuse_other_code=False):
        interventions = as_list(intervention)
        check_args(model, samples, interventions, batch_size, max_new_tokens, chunk_size, protocol)
        if chunk_size is None:
            chunk_size = batch_size * -(-64 // batch_size)
        self.model, self.samples, self.interventions = model, samples, interventions
        self.chunk_size, self.question_prompt, self.protocol = chunk_size, question_prompt, protocol
        self.caps = generation.caps((s.dataset for s in samples), max_new_tokens)
        self.keep = keep = extras if isinstance(extras, bool) else \
            sorted({extras} if isinstance(extras, str) else set(extras))
        self.store = store = st.ChunkStore(out) if out is not None else None
        if not isinstance(reuse_other_code, bool):
            raise ValueError(f"reuse_other_code must be True or False, got {reuse_other_code!r}")
        self.reuse_other_code = reuse_other_code
        self.base = base = {
            "format": st.FORMAT,
            "code": codebase.identity(),  # chunks of other code: recomputed unless reuse_other_code
            "model": model_fingerprint or st.model_fingerprint(model),
            "intervention": st.canonical(interventions) if interventions else None,
            "generation": {"max_new_tokens": dict(sorted(self.caps.items())), "do_sample": False,
                           "batch_size": batch_size, "output": OUTPUT,
                           # seconds of a shared sweep are incremental, not standalone
                           "timing": "sweep" if timing == "sweep" else "standalone"},
            "prompt": {"question_prompt": function_name(question_prompt)},
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
            "question_prompt": function_name(question_prompt), "n_samples": len(samples),
            "timing": timing or ("per-sample" if batch_size == 1 else "amortised"),
            "device": str(model.device), "versions": versions(), "remote": str(remote),
            "image_rows": "shared" if shared_image_rows else "per sample",
            "code": base["code"], "reuse_other_code": "yes" if reuse_other_code else "no",
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
        self.other_code: dict[int, st.Stored] = {}  # chunk index -> the chunk of other code taken

    def chunks(self):
        """``(index, samples, fingerprint)`` of each chunk."""
        for index, (chunk, fingerprint) in enumerate(self._chunks):
            yield index, chunk, fingerprint

    def take_stored(self, index, chunk, fingerprint, bar=None) -> bool:
        """Take chunk ``index`` from the store if it is there and sound (made by this code,
        or by other code when the run accepts that); its scores are made again from the
        stored predictions (`mech.Record.rescore`, under every protocol)."""
        if index in self.parts:
            return True
        stored, found = read_chunk(self.store, fingerprint, self.reuse_other_code)
        if found.problem and index not in self.rejected:
            warnings.warn(found.problem, st.ChunkWarning, stacklevel=4)
            self.rejected[index] = found.problem
        if stored is None:
            return False
        for record, sample in zip(stored, chunk):
            record.answers, record.question_type = list(sample.answers), sample.question_type
            record.rescore(self.protocol)
        if found.path != self.store.path(fingerprint):
            self.other_code[index] = found
        self.parts[index] = stored
        self.reused.append(index)
        if bar is not None:
            bar.update(len(chunk))
        return True

    def batch_cap(self, samples) -> int:
        """New tokens a batch generates: the largest cap among its samples."""
        return max(self.caps[s.dataset] for s in samples)

    def records(self, samples, new, seconds, per_sample, timing=None) -> list[Record]:
        return build_records(self.model, samples, new, seconds, per_sample, self.caps, self.protocol, timing)

    def save(self, index, fingerprint, new: list[Record]) -> None:
        if self.store is not None:
            self.store.save(fingerprint, [asdict(r) for r in new],
                            {"device": self.meta["device"], "versions": self.meta["versions"],
                             "protocol": self.protocol, "written_by": str(parallel.current()),
                             "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.parts[index] = new
        self.computed.append(index)

    def finish(self) -> None:
        """Once every chunk is there: if chunks of other code stand in for some, the manifest
        lists those files (and their code), so `mech.Results.load` reads what the run used."""
        if self.other_code and self.store is not None and parallel.current().main \
                and len(self.parts) == len(self._chunks):
            self.store.write_manifest(self.meta, self.base, [s.id for s in self.samples],
                                      [f for _, f in self._chunks], self.other_code)

    @property
    def result(self) -> Results:
        records = [r for index in sorted(self.parts) for r in self.parts[index]]
        meta = dict(self.meta)
        if self.other_code:
            meta["chunks_of_other_code"] = {i: {"file": str(found.path), "code": found.code}
                                            for i, found in sorted(self.other_code.items())}
        return Results(records, meta, sorted(self.computed), sorted(self.reused), dict(self.rejected))


def read_chunk(store, fingerprint, other_code=False) -> tuple[list[Record] | None, st.Stored]:
    """A chunk's records if stored and sound, and what the store found (why not, if it exists)."""
    if store is None:
        return None, st.Stored(None, None)
    found = store.load(fingerprint, other_code)
    if found.records is None:
        return None, found
    try:
        return [Record(**r) for r in found.records], found
    except TypeError as error:
        return None, st.Stored(None, f"{found.path}: corrupt chunk ({error}); recomputing", found.path)


def versions() -> dict:
    import nnsight
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "nnsight": getattr(nnsight, "__version__", "?")}
