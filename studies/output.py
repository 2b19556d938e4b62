"""What a study writes: its dataset with the provenance in ``attrs`` and its figures (PNG and
PDF), atomically, rank 0 alone, one file per configuration::

    <out>/<study>/<config id>.nc  .png  .pdf    # one per configuration, never overwritten
    <out>/<study>.nc  .png  .pdf                # links to the latest written

The configuration id (``attrs["config_id"]``, `config_id`) is 12 hex of the sha256 of its
provenance (`provenance`: the options, the model by content, the code, the versions, the
study's own settings) less what does not change its content (`NOT_CONFIGURATION`: when
and by which command line it was made, how many ranks, how the model was spelled); so
another seed, batch size, limit, model, code version, ... writes its own file, and
rerunning a configuration replaces its file with the same content. A ``<study>.nc`` of an earlier layout (a plain
file) is first moved to its own configuration's place."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import xarray as xr

from .inputs import dataset_names


def provenance(args, model, **extra) -> dict[str, Any]:
    """``attrs`` for a study dataset: how it was made (netCDF-safe values), and the
    ``config_id`` that names its file (`config_id` of the rest)."""
    import nnsight
    import torch
    import transformers

    import mech

    names = dataset_names(args)
    caps = mech.generation.caps(names, args.max_new_tokens)
    attrs = {
        "model": model.source, "revision": model.revision or "", "family": model.family.name,
        "decoder_layers": model.n_layers, "prompt_template": model.template,
        "prompt_template_source": model.prompt_template.source,
        "datasets": args.datasets, "limit": args.limit if args.limit is not None else -1,
        "seed": args.seed, "batch_size": args.batch_size,
        "max_new_tokens": json.dumps(caps),
        "max_new_tokens_source": "--max-new-tokens" if args.max_new_tokens is not None
        else "each dataset's lmms-eval task (mech.generation)",
        "generation": json.dumps({n: {**mech.generation.settings(n).as_dict(), "max_new_tokens": caps[n],
                                      "output": mech.runner.OUTPUT, "stop_strings_applied": False}
                                  for n in names}),
        "protocol": args.protocol,
        "scorers": json.dumps({n: mech.metrics.describe(n, args.protocol) for n in names}),
        "remote": args.remote or "no",
        "model_sha256": mech.store.digest(mech.store.model_fingerprint(model)),
        "code": json.dumps(mech.codebase.identity()),
        "reuse_other_code": "yes" if getattr(args, "reuse_other_code", False) else "no",
        "chunks_of_other_code": json.dumps(sorted({a["file"]: a["code"] for a in mech.store.ACCEPTED}.items())),
        "world_size": mech.parallel.current().count if mech.parallel.current().group else 1,
        "command": f"python -m studies.{getattr(args, 'study', '?')} {shlex.join(getattr(args, 'argv', []))}".strip(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": json.dumps({"mech": getattr(mech, "__version__", "0.1.0"), "torch": torch.__version__,
                                "transformers": transformers.__version__,
                                "nnsight": nnsight.__version__, "xarray": xr.__version__,
                                "python": platform.python_version()}),
    }
    if getattr(args, "question_types", None):  # only when given: earlier datasets keep their config id
        attrs["question_types"] = args.question_types
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    attrs["config_id"] = config_id(attrs)
    return attrs


# attrs that say when or how a dataset was asked for, not what it holds
NOT_CONFIGURATION = ("created", "command", "world_size", "model", "config_id")


def config_id(attrs: dict) -> str:
    """12 hex naming a study dataset's configuration: its ``attrs`` less `NOT_CONFIGURATION`."""
    from mech.store import digest

    return digest({k: str(v) for k, v in attrs.items() if k not in NOT_CONFIGURATION})[:12]


def write_dataset(ds: xr.Dataset, out: Path, name: str) -> Path:
    """``<out>/<name>.nc``, written atomically (unique temporary file; see
    `mech.writes.atomic_write`): a killed or failing write leaves the old file or none.
    Among torchrun ranks only rank 0 writes."""
    from mech import parallel
    from mech.writes import atomic_write

    if not parallel.current().writes:
        return out / f"{name}.nc"
    return atomic_write(out / f"{name}.nc", lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def write_figure(fig, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt
    from mech import parallel
    from mech.writes import atomic_write

    try:
        if not parallel.current().writes:
            return [out / f"{name}.png", out / f"{name}.pdf"]
        return [atomic_write(out / f"{name}.{kind}", lambda tmp, kind=kind: fig.savefig(
            tmp, format=kind, bbox_inches="tight", **({"dpi": 150} if kind == "png" else {})))
            for kind in ("png", "pdf")]
    finally:
        plt.close(fig)


KINDS = ("nc", "png", "pdf")


def _keep_earlier(out: Path, study: str) -> None:
    """A ``<study>.nc`` (and figures) of the earlier layout, plain files, moves to
    ``<study>/<its config id>.*`` so that the link to the latest never replaces it."""
    latest = out / f"{study}.nc"
    if not latest.is_file() or latest.is_symlink():
        return
    try:
        with xr.open_dataset(latest) as ds:
            earlier = ds.attrs.get("config_id") or config_id(dict(ds.attrs))
    except (OSError, ValueError):
        earlier = f"earlier-{latest.stat().st_mtime_ns}"
    for kind in KINDS:
        path = out / f"{study}.{kind}"
        if path.is_file() and not path.is_symlink() and not (out / study / f"{earlier}.{kind}").exists():
            (out / study).mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, out / study / f"{earlier}.{kind}")
            except FileNotFoundError:  # another process moved it first
                pass


def publish(ds: xr.Dataset, args, study: str, figure) -> Path | None:
    """Write ``ds`` (provenance already in its ``attrs``) and ``figure(ds)`` as
    ``<out>/<study>/<config id>.*`` and point ``<out>/<study>.*`` at them; say where they
    went. A shard, or a rank other than 0, writes nothing (None)."""
    from mech import parallel
    from mech.writes import atomic_link, remove_leftovers

    if not parallel.current().writes:
        print(f"{parallel.current()}: every chunk is done; {study}.nc is written by the command without --shard")
        return None
    out, name = Path(args.out), ds.attrs.get("config_id") or config_id(dict(ds.attrs))
    folder = out / study
    for where in (out, folder):
        remove_leftovers(where)
    _keep_earlier(out, study)
    path = write_dataset(ds, folder, name)
    figures = write_figure(figure(ds), folder, name)
    for kind in KINDS:
        atomic_link(out / f"{study}.{kind}", f"{study}/{name}.{kind}")
    print(f"wrote {path} and {', '.join(map(str, figures))} (latest: {out / f'{study}.nc'})")
    return path


def finish(ds: xr.Dataset, args, model, study: str, figure, **attrs) -> xr.Dataset:
    """Stamp provenance into ``ds.attrs``, write the dataset and its figure (drawn by
    ``figure(ds)``; see `publish`), and say where they went (a shard writes nothing)."""
    ds.attrs.update(provenance(args, model, study=study, **attrs))
    publish(ds, args, study, figure)
    return ds

if __name__ == "__main__":
    from .cli import not_a_study

    not_a_study(__spec__.name)
