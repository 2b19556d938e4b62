"""Chunk files of runs: content-addressed, checksummed, locked, written atomically.

A run's output folder holds one file per chunk of samples, named by its fingerprint::

    chunk-<first 20 hex of sha256(fingerprint)>.json
    {"format": 2,
     "fingerprint": {...},          # everything that produced the records, see below
     "fingerprint_sha256": "...",   # of the canonical JSON of "fingerprint"
     "records_sha256": "...",       # of the canonical JSON of "records"
     "meta": {...},                 # device, versions, time written: never compared
     "records": [{...}, ...]}       # one `Record` per sample, in sample order

and one manifest per configuration, ``run-<sha>.json`` (the configuration, the sample
count and the ordered chunk files), which `mech.Results.load` reads. The fingerprint
holds the model (config, template and a digest of every weight), the intervention
with every parameter, the generation settings, the timing mode, the prompt function and
the chunk's exact sample ids with a digest of their prompts, images and answers; so
runs of different configurations share a folder without touching each other's chunks,
and equal chunks of different runs (a larger ``limit``, another study) are one file.

A chunk is reused only if it parses, has this format, its fingerprint equals the one
the current run computes and its records match their checksum; otherwise a
`ChunkWarning` names the file and the chunk is recomputed. Writes go to a unique
temporary file that replaces the target, so a killed or failing writer leaves the old
file or none; a failed write raises `WriteError` with the path and the reason. A lock
per chunk (``.locks/``, ``flock``, released if its holder dies) lets several processes
share one folder's work instead of repeating it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

FORMAT = 2
WRITTEN: list[Path] = []  # chunk files this process wrote (what an interrupted run saved)


class ChunkWarning(UserWarning):
    """A chunk file on disk was foreign, unreadable or tampered with and is recomputed."""


class WriteError(OSError):
    """A result file could not be written; nothing partial was left behind."""


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


def model_fingerprint(model) -> dict:
    """Identity of the weights (all of them, see `weights_digest`), config and template."""
    module = model.nn._module
    config = model.config
    return {
        "source": model.source,
        "revision": model.revision,
        "family": model.family.name,
        "name_or_path": getattr(config, "_name_or_path", None),
        "commit": getattr(config, "_commit_hash", None),
        "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest(),
        "weights_xxh3_128": weights_digest(module),
        "dtype": str(next(module.parameters()).dtype),
        "template": model.template,
        "template_source": model.prompt_template.source,
    }


def pretty(data: dict) -> str:
    """JSON with one top-level key, and one record, per line: greppable and diffable."""
    items = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if k != "records"]
    if "records" in data:
        rows = ",\n".join(f"  {json.dumps(r)}" for r in data["records"])
        items.append(f' "records": [\n{rows}\n ]')
    return "{\n" + ",\n".join(items) + "\n}\n"


def _readable_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(temporary_path)``: a unique temporary file in the same
    folder, made readable as the umask allows (collaborators can read a shared run), then
    renamed over ``path``. On any failure the temporary file is removed and a `WriteError`
    names the path and the reason (e.g. the disk is full)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    tmp = Path(tmp)
    try:
        os.fchmod(fd, _readable_mode())
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            raise _write_error(path, error) from None
        raise
    return path


def _write_error(path: Path, error: BaseException) -> WriteError:
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or free == 0
    hint = "the disk is full: free space there and rerun (finished results are kept)" if full \
        else "rerun once that is fixed (finished results are kept)"
    space = f", {free} bytes free" if free is not None else ""
    code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
    return WriteError(code, f"could not write {path}: {reason}{space}; nothing partial was left; {hint}")


def write_json(path: Path, data: dict) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(pretty(data))
            f.flush()
            os.fsync(f.fileno())
    return atomic_write(path, write)


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
            raise _write_error(self.folder / "chunk", error) from None

    def path(self, fingerprint: dict) -> Path:
        return self.folder / f"chunk-{digest(fingerprint)[:20]}.json"

    def load(self, fingerprint: dict) -> tuple[list[dict] | None, str | None]:
        """``(records, None)`` if the chunk of ``fingerprint`` exists and is sound;
        ``(None, None)`` if it does not exist; ``(None, why)`` if it is corrupt or foreign."""
        path = self.path(fingerprint)
        if not path.exists():
            return None, None
        try:
            data = json.loads(path.read_text())
            stored, records = data["fingerprint"], data["records"]
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            if not isinstance(records, list) or len(records) != len(fingerprint["samples"]["ids"]):
                raise ValueError("record count does not match the chunk's samples")
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"{path}: corrupt chunk ({type(error).__name__}: {error}); recomputing"
        if dumps(stored) != dumps(fingerprint):
            keys = sorted(k for k in fingerprint if dumps(stored.get(k)) != dumps(fingerprint[k]))
            keys += sorted(k for k in stored if k not in fingerprint)
            return None, f"{path}: foreign chunk (fingerprint differs in {', '.join(keys)}); recomputing"
        if data.get("records_sha256") != digest(records):
            return None, f"{path}: records do not match their checksum (edited or damaged); recomputing"
        return records, None

    def save(self, fingerprint: dict, records: list[dict], meta: dict) -> Path:
        data = {"format": FORMAT, "fingerprint": fingerprint, "fingerprint_sha256": digest(fingerprint),
                "records_sha256": digest(records), "meta": meta, "records": records}
        path = write_json(self.path(fingerprint), data)
        WRITTEN.append(path)
        return path

    def manifest_path(self, base: dict, ids: list[str]) -> Path:
        return self.folder / f"run-{digest([base, ids])[:20]}.json"

    def write_manifest(self, meta: dict, base: dict, ids: list[str], chunks: list[dict]) -> Path:
        """The run's configuration and its ordered chunk files (chunk fingerprints given)."""
        return write_json(self.manifest_path(base, ids), {
            **meta, "format": FORMAT, "fingerprint": {**base, "samples": "per chunk"},
            "chunks": [self.path(f).name for f in chunks]})


@contextmanager
def lock_chunks(chunks: list[tuple[ChunkStore, dict]], wait: bool):
    """Hold the locks of these ``(store, fingerprint)`` chunks, taken in path order so two
    holders never deadlock; yields False at once, holding nothing, if ``wait`` is False
    and another process holds one. Locks live in ``<folder>/.locks`` and are released by
    the kernel when their holder dies."""
    paths = sorted({store.folder / ".locks" / f"{store.path(f).stem}.lock" for store, f in chunks})
    held = []
    try:
        for path in paths:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _readable_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            held.append(fd)
        yield True
    finally:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
