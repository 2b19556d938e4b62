"""What a study writes: ``<out>/<study>.nc`` with its provenance in ``attrs`` and its figures
(PNG and PDF), atomically, rank 0 alone; and where the runner keeps each dataset's chunks."""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import xarray as xr

from .inputs import dataset_names


def provenance(args, model, **extra) -> dict[str, Any]:
    """``attrs`` for a study dataset: how it was made (netCDF-safe values)."""
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
        "world_size": mech.parallel.current().count if mech.parallel.current().group else 1,
        "command": f"python -m studies.{getattr(args, 'study', '?')} {shlex.join(getattr(args, 'argv', []))}".strip(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": json.dumps({"mech": getattr(mech, "__version__", "0.1.0"), "torch": torch.__version__,
                                "transformers": transformers.__version__,
                                "nnsight": nnsight.__version__, "xarray": xr.__version__,
                                "python": platform.python_version()}),
    }
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return attrs


def write_dataset(ds: xr.Dataset, out: Path, name: str) -> Path:
    """``<out>/<name>.nc``, written atomically (unique temporary file; see
    `mech.store.atomic_write`): a killed or failing write leaves the old file or none.
    Among torchrun ranks only rank 0 writes."""
    from mech import parallel
    from mech.store import atomic_write

    if not parallel.current().writes:
        return out / f"{name}.nc"
    return atomic_write(out / f"{name}.nc", lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def write_figure(fig, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt
    from mech import parallel
    from mech.store import atomic_write

    try:
        if not parallel.current().writes:
            return [out / f"{name}.png", out / f"{name}.pdf"]
        return [atomic_write(out / f"{name}.{kind}", lambda tmp, kind=kind: fig.savefig(
            tmp, format=kind, bbox_inches="tight", **({"dpi": 150} if kind == "png" else {})))
            for kind in ("png", "pdf")]
    finally:
        plt.close(fig)


def finish(ds: xr.Dataset, args, model, study: str, figure, **attrs) -> xr.Dataset:
    """Stamp provenance into ``ds.attrs``, write ``<out>/<study>.nc`` and its figure
    (drawn by ``figure(ds)``), and say where they went (a shard writes nothing)."""
    from mech import parallel

    ds.attrs.update(provenance(args, model, study=study, **attrs))
    if not parallel.current().writes:
        print(f"{parallel.current()}: every chunk is done; {study}.nc is written by the command without --shard")
        return ds
    path = write_dataset(ds, args.out, study)
    figures = write_figure(figure(ds), args.out, study)
    print(f"wrote {path} and {', '.join(map(str, figures))}")
    return ds



if __name__ == "__main__":
    from .cli import not_a_study

    not_a_study(__spec__.name)
