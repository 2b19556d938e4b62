"""Chunk files of a run: fingerprints, atomic writes, and the checks that make resume safe.

A run's output folder holds ``run.json`` (the configuration of the latest run, for
people) and one ``chunk-NNNNN.json`` per chunk of samples::

    {"format": 1,
     "fingerprint": {...},          # everything that produced the records, see below
     "fingerprint_sha256": "...",   # of the canonical JSON of "fingerprint"
     "meta": {...},                 # device, versions, time written: never compared
     "records": [{...}, ...]}       # one `Record` per sample, in sample order

A chunk is reused only if it parses, has this format, and its fingerprint equals the
one the current run computes for the same samples; otherwise it is reported with a
`ChunkWarning` naming the file and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = 1


class ChunkWarning(UserWarning):
    """A chunk file on disk was foreign or unreadable and is being recomputed."""


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


def model_fingerprint(model) -> dict:
    """Identity of the weights and template, cheap enough for a 7B model.

    ``weights_probe`` hashes the first and last 64 values of the first and last
    parameters, so two random models built from one config (tests) still differ.
    """
    module = model.nn._module
    params = list(module.parameters())
    probe = hashlib.sha256()
    for p in (params[0], params[-1]):
        if p.device.type != "meta":
            flat = p.detach().flatten()
            probe.update(torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes())
    config = model.config
    return {
        "source": model.source,
        "revision": model.revision,
        "family": model.family.name,
        "name_or_path": getattr(config, "_name_or_path", None),
        "commit": getattr(config, "_commit_hash", None),
        "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest(),
        "weights_probe": probe.hexdigest(),
        "dtype": str(params[0].dtype),
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


class ChunkStore:
    """Reads and writes the chunk files of one output folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"out={str(self.folder)!r} exists and is not a folder; "
                                     f"give a folder path for the chunk files")
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.json"

    def load(self, index: int, fingerprint: dict) -> tuple[list[dict] | None, str | None]:
        """``(records, None)`` if chunk ``index`` exists and matches ``fingerprint``;
        ``(None, None)`` if it does not exist; ``(None, why)`` if it is corrupt or foreign."""
        path = self.path(index)
        if not path.exists():
            return None, None
        try:
            data = json.loads(path.read_text())
            stored = data["fingerprint"]
            records = data["records"]
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
        return records, None

    def save(self, index: int, fingerprint: dict, records: list[dict], meta: dict) -> Path:
        data = {"format": FORMAT, "fingerprint": fingerprint,
                "fingerprint_sha256": digest(fingerprint), "meta": meta, "records": records}
        return self.write(self.path(index), data)

    def write(self, path: Path, data: dict) -> Path:
        """Write JSON atomically: a killed writer leaves the old file or none, never half."""
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(pretty(data))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
