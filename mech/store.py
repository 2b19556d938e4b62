"""Chunk files of runs: content-addressed, checksummed, locked, written atomically.

A run's output folder holds one file per chunk of samples, named by its fingerprint::

    chunk-<20 hex of sha256(fingerprint less "code")>-<8 hex of sha256(code)>.json
    {"format": 2,
     "fingerprint": {...},          # everything that produced the records, see below
     "fingerprint_sha256": "...",   # of the canonical JSON of "fingerprint"
     "records_sha256": "...",       # of the canonical JSON of "records"
     "meta": {...},                 # device, versions, time written: never compared
     "records": [{...}, ...]}       # one `Record` per sample, in sample order

and one manifest per configuration, ``run-<sha>.json`` (the configuration, the sample
count and the ordered chunk files), which `mech.Results.load` reads. The fingerprint
holds the code that makes records (`mech.codebase.identity`), the model by content
(`model_fingerprint`: config, processor, template and a digest of every weight; never the
path or name it was loaded by), the intervention with every parameter, the generation
settings, the timing mode, the prompt function and the chunk's exact sample ids with a
digest of their prompts, images and answers; so runs of different configurations share
a folder without touching each other's chunks, and equal chunks of different runs (a
larger ``limit``, another study, the same model by another path) are one file.

A chunk is reused only if it parses, has this format, its fingerprint equals the one
the current run computes and its records match their checksum; otherwise a
`ChunkWarning` names the file and the chunk is recomputed. A chunk of the same
configuration made by other code sits beside it (the name's second part differs): it
is recomputed with a warning that names it, or reused when the run asks for it
(``reuse_other_code``), and then listed in `ACCEPTED` and in the run's provenance.

Writes go through `mech.writes.atomic_write`: a unique temporary file (named by its
writer's host and process) that replaces the target, so a killed or failing writer leaves
the old file or none; a failed write raises `WriteError` with the path and the reason; the
temporary files of dead writers are removed when the folder is next opened. A lock per
chunk (``.locks/``, ``flock``, released if its holder dies, removed once the chunk is
done) lets several processes share one folder's work instead of repeating it.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .writes import WriteError, atomic_write, readable_mode, remove_leftovers, write_error  # noqa: F401

FORMAT = 2
WRITTEN: list[Path] = []  # chunk files this process wrote (what an interrupted run saved)
ACCEPTED: list[dict] = []  # chunks of other code this process reused when asked: {"file", "code"}


class ChunkWarning(UserWarning):
    """A chunk file on disk was foreign, unreadable or tampered with and is recomputed."""


def canonical(value: Any) -> Any:
    """A JSON-able description of ``value`` that keeps every parameter exactly.

    Floats stay floats (JSON round-trips them exactly), tensors become their values, and
    dataclasses (interventions) become ``{"type": module.Class, "params": {...}}`` with
    all fields, including ``init=False`` ones.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        params = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": f"{kind.__module__}.{kind.__qualname__}", "params": params}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    return repr(value)


def digest(value: Any) -> str:
    return hashlib.sha256(dumps(value).encode()).hexdigest()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sample_digest(samples, prompts: list[str]) -> str:
    """blake2b over what each sample feeds the model and the metric: the full prompt text
    (template and question prompt applied), the image pixels, the dataset and the answers."""
    h = hashlib.blake2b(digest_size=20)
    for sample, prompt in zip(samples, prompts):
        image = sample.image
        h.update(dumps([sample.id, sample.dataset, prompt, list(sample.answers),
                        image.mode, list(image.size)]).encode())
        h.update(image.tobytes())
    return h.hexdigest()


_SLICE = 1 << 26  # elements copied to the host at a time (bounds extra memory on GPUs)


def weights_digest(module: torch.nn.Module) -> str | None:
    """xxh3-128 over every parameter and buffer: names, dtypes, shapes and all bytes.

    Exact (any changed bit changes it) and cheap: hashing runs at memory speed (see the
    README's Reliability section for its cost on a 7B-sized model). None when weights are
    not materialised (meta device, e.g. a model served by NDIF).
    """
    import xxhash

    h = xxhash.xxh3_128()
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        if tensor.device.type == "meta":
            return None
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.detach().reshape(-1)
        for lo in range(0, flat.numel(), _SLICE):
            part = flat[lo:lo + _SLICE].cpu().contiguous()
            h.update(part.view(torch.uint8).numpy().data if part.numel() else b"")
    return h.hexdigest()


# Keys that say where a config or processor was loaded from, not what it is.
_WHERE = {"_name_or_path", "name_or_path", "_commit_hash", "transformers_version", "vocab_file", "is_local",
          "local_files_only", "processor_class"}


def _content(value: Any) -> Any:
    """``value`` without the keys that name a path, commit or saving version, at any depth."""
    if isinstance(value, dict):
        return {str(k): _content(v) for k, v in value.items() if str(k) not in _WHERE}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def config_digest(config) -> str:
    """sha256 of a transformers config by content (every setting; not where it came from)."""
    return digest(_content(json.loads(config.to_json_string(use_diff=False))))


def processor_digest(processor) -> str | None:
    """sha256 of what the processor does to a prompt and an image: its own and its image
    processor's settings, and the tokenizer's vocabulary, merges, normalisation, added and
    special tokens (the serialised ``tokenizers`` model) and padding side."""
    if processor is None:
        return None
    tokenizer = getattr(processor, "tokenizer", processor)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    settings = processor.to_dict() if hasattr(processor, "to_dict") and processor is not tokenizer else {}
    if backend is not None:  # its padding/truncation state is set per call by the tokenizer: not content
        vocabulary = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    else:
        vocabulary = sorted(tokenizer.get_vocab().items())
    return digest(_content({
        "processor": settings,
        "tokenizer": vocabulary,
        "special": {name: str(getattr(tokenizer, name, None))
                    for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "padding_side": getattr(tokenizer, "padding_side", None),
    }))


def model_fingerprint(model) -> dict:
    """Identity of the model by content: config, attention implementation, dtype, a digest
    of every weight (`weights_digest`), the processor (`processor_digest`) and the prompt
    template. Never the path, hub id or spelling it was loaded by, so ``"tiny"``, its
    folder by a relative or absolute path, and a node-local copy are one model. Without
    materialised weights (a model served by NDIF) the hub id, revision and commit stand in
    for them."""
    module = model.nn._module
    config = model.config
    weights = weights_digest(module)
    identity = {
        "family": model.family.name,
        "config_sha256": config_digest(config),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "weights_xxh3_128": weights,
        "dtype": str(next(module.parameters()).dtype),
        "processor_sha256": processor_digest(model.processor),
        "template": model.template,
        "template_source": model.prompt_template.source,
    }
    if weights is None:
        identity["served"] = {"source": model.source, "revision": model.revision,
                              "commit": getattr(config, "_commit_hash", None)}
    return identity


def pretty(data: dict) -> str:
    """JSON with one top-level key, and one record, per line: greppable and diffable."""
    items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if k != "records"]
    if "records" in data:
        rows = ",\n".join(f"  {json.dumps(r)}" for r in data["records"])
        items.append(f' "records": [\n{rows}\n ]')
    return "{\n" + ",\n".join(items) + "\n}\n"


def write_json(path: Path, data: dict) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(pretty(data))
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, write)


# What `ChunkStore.load` found: the records (None if not reusable), why not (None if there
# was nothing or it is sound), the file read and the code that made it. A plain namedtuple:
# mech ships by value with remote traces, and cloudpickle rebuilds these (not typing's).
Stored = collections.namedtuple("Stored", ["records", "problem", "path", "code"], defaults=(None, None))


def _code_differences(stored: dict | None, current: dict | None) -> str:
    if not isinstance(stored, dict):
        return "no code recorded"
    keys = sorted(k for k in {*stored, *(current or {})} if stored.get(k) != (current or {}).get(k))
    return ", ".join(f"{k} {stored.get(k)} (this code: {(current or {}).get(k)})" for k in keys)


class ChunkStore:
    """Reads, writes and locks the chunk files of one output folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"out={str(self.folder)!r} exists and is not a folder; "
                                     f"give a folder path for the chunk files")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(self.folder / "chunk", error) from None
        remove_leftovers(self.folder)
        _remove_free_locks(self.folder / ".locks")

    def stem(self, fingerprint: dict) -> str:
        """The name's first part: the fingerprint less the code, shared by every code version."""
        return f"chunk-{digest({k: v for k, v in fingerprint.items() if k != 'code'})[:20]}"

    def path(self, fingerprint: dict) -> Path:
        return self.folder / f"{self.stem(fingerprint)}-{digest(fingerprint.get('code'))[:8]}.json"

    def _read(self, path: Path, fingerprint: dict, any_code: bool = False) -> Stored:
        try:
            data = json.loads(path.read_text())
            stored, records = data["fingerprint"], data["records"]
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            if not isinstance(records, list) or len(records) != len(fingerprint["samples"]["ids"]):
                raise ValueError("record count does not match the chunk's samples")
        except (OSError, ValueError, KeyError, TypeError) as error:
            return Stored(None, f"{path}: corrupt chunk ({type(error).__name__}: {error}); recomputing", path)
        code = stored.get("code") if isinstance(stored, dict) else None
        compared = [k for k in fingerprint if not (any_code and k == "code")]
        if not isinstance(stored, dict) or any(dumps(stored.get(k)) != dumps(fingerprint[k]) for k in compared) \
                or any(k not in fingerprint for k in stored):
            stored = stored if isinstance(stored, dict) else {}
            keys = sorted(k for k in compared if dumps(stored.get(k)) != dumps(fingerprint[k]))
            keys += sorted(k for k in stored if k not in fingerprint)
            return Stored(None, f"{path}: foreign chunk (fingerprint differs in {', '.join(keys)}); recomputing", path)
        if data.get("records_sha256") != digest(records):
            return Stored(None, f"{path}: records do not match their checksum (edited or damaged); recomputing", path)
        return Stored(records, None, path, code)

    def load(self, fingerprint: dict, other_code: bool = False) -> Stored:
        """The chunk of ``fingerprint``: its records if it exists and is sound; else why not
        (None if there is no such file). With none made by this code, a chunk of the same
        configuration made by other code is reused if ``other_code``, else named in the
        problem (it is never reused silently)."""
        path = self.path(fingerprint)
        found = self._read(path, fingerprint) if path.exists() else Stored(None, None)
        if found.records is not None:
            return found
        others = sorted((p for p in self.folder.glob(f"{self.stem(fingerprint)}-*.json") if p != path),
                        key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for other in others:
            candidate = self._read(other, fingerprint, any_code=True)
            if candidate.records is None:
                continue
            if other_code:
                ACCEPTED.append({"file": str(other), "code": candidate.code})
                return candidate
            why = (f"{other}: made by other code ({_code_differences(candidate.code, fingerprint.get('code'))}); "
                   "recomputing with this code (reuse_other_code=True, or --reuse-other-code in a study, "
                   "reuses it and records that in the provenance)")
            return Stored(None, "; ".join(x for x in (found.problem, why) if x))
        return found

    def save(self, fingerprint: dict, records: list[dict], meta: dict) -> Path:
        data = {"format": FORMAT, "fingerprint": fingerprint, "fingerprint_sha256": digest(fingerprint),
                "records_sha256": digest(records), "meta": meta, "records": records}
        path = write_json(self.path(fingerprint), data)
        WRITTEN.append(path)
        return path

    def manifest_path(self, base: dict, ids: list[str]) -> Path:
        return self.folder / f"run-{digest([base, ids])[:20]}.json"

    def write_manifest(self, meta: dict, base: dict, ids: list[str], chunks: list[dict],
                       used: dict[int, Stored] | None = None) -> Path:
        """The run's configuration and its ordered chunk files (chunk fingerprints given);
        ``used``: chunk index -> the chunk of other code taken in its place."""
        used = used or {}
        names = [used[i].path.name if i in used else self.path(f).name for i, f in enumerate(chunks)]
        other = {used[i].path.name: used[i].code for i in sorted(used)}
        return write_json(self.manifest_path(base, ids), {
            **meta, "format": FORMAT, "fingerprint": {**base, "samples": "per chunk"},
            "chunks": names, **({"chunks_of_other_code": other} if other else {})})


@contextmanager
def lock_chunks(chunks: list[tuple[ChunkStore, dict]], wait: bool):
    """Hold the locks of these ``(store, fingerprint)`` chunks, taken in path order so two
    holders never deadlock; yields False at once, holding nothing, if ``wait`` is False
    and another process holds one. Locks live in ``<folder>/.locks`` and are released by
    the kernel when their holder dies; when the block ends without an error (its chunks
    are done) their files are removed."""
    paths = sorted({store.folder / ".locks" / f"{store.path(f).stem}.lock" for store, f in chunks})
    held = []
    done = False
    try:
        for path in paths:
            fd = _lock(path, wait)
            if fd is None:
                yield False
                return
            held.append((path, fd))
        yield True
        done = True
    finally:
        for path, fd in held:
            if done:
                path.unlink(missing_ok=True)  # while held: a waiter sees it gone and takes a fresh one
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _remove_free_locks(folder: Path) -> None:
    """Lock files nobody holds (their chunk done, or their holder dead) are removed."""
    for path in folder.glob("*.lock") if folder.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()  # held: a process that opened it before sees it gone (`_lock`)
        except OSError:
            pass
        finally:
            os.close(fd)


def _lock(path: Path, wait: bool) -> int | None:
    """An fd holding the flock of ``path``; None if ``wait`` is False and it is held. A lock
    file removed while this waited for it is taken again under its new name."""
    while True:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, readable_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed by its last holder once its chunk was done: lock the current file
