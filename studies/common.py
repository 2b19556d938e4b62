"""What every study shares: its command line, its inputs, and how results are written.

Each study is ``python -m studies.NAME`` with the same options (``--model``,
``--datasets``, ``--limit``, ``--batch-size``, ``--max-new-tokens``, ``--protocol``,
``--out``, ``--remote``, ``--seed``, ``--import``) and writes ``<out>/<name>.nc`` (an ``xarray.Dataset`` whose
``attrs`` say how it was made) plus figures as PNG and PDF.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

DEFAULT_OUT = Path("runs")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (the embedded model, default), a local checkpoint folder, a "
                        "Hugging Face id of a supported family (llava-hf/llava-1.5-7b-hf, "
                        "Qwen/Qwen2-VL-2B-Instruct, google/gemma-3-4b-it, ...), or random:FAMILY for a "
                        "tiny random model of that family (random:qwen2-vl)")
    p.add_argument("--revision", default=None, help="hub revision to pin (with a hub id)")
    p.add_argument("--datasets", default="shapes,shapes-dots",
                   help="comma-separated: shapes (clean test scenes), shapes-dots / shapes-speckle / shapes-crowd "
                        "(the same model's out-of-distribution scenes with distractors), easyvqa, vqav2, gqa, "
                        "textvqa, okvqa, vizwiz, docvqa, or a dataset registered by an --import module "
                        "(default: shapes,shapes-dots)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), e.g. one that calls mech.datasets.register "
                        "for a dataset of your own")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="read dataset NAME from PATH (its official files, a save_to_disk folder or a hub "
                        "snapshot) instead of the hub; repeatable")
    p.add_argument("--limit", type=int, default=200,
                   help="samples per dataset, a seeded subsample; a larger limit extends a smaller one, so "
                        "its finished chunks are reused (default: 200)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="samples per generate call; 1 gives exact per-sample 1/t (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new-token cap for every dataset (default: each dataset's lmms-eval task setting: "
                        "VQAv2, GQA, shapes 16; DocVQA 32; TextVQA, OK-VQA, VizWiz 1024, lmms-eval's "
                        "llava_hf default; generation stops at EOS before that)")
    p.add_argument("--protocol", default="lmms-eval", choices=["lmms-eval", "official"],
                   help="scoring: lmms-eval 0.7.3's task scoring (default) or each benchmark's official "
                        "scorer; predictions are shared, so switching protocol regenerates nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder shared by all studies: {name}.nc and figures go there, "
                        "generation chunks under chunks/, and finished chunks are reused by every "
                        "study (default: runs)")
    p.add_argument("--remote", nargs="?", const="ndif", default=None, choices=["ndif", "local"],
                   help="run through nnsight's remote path: bare --remote sends every trace to NDIF "
                        "(NDIF_HOST / NDIF_API_KEY from nnsight's config; the model is loaded on the "
                        "meta device here); --remote local is nnsight's serialisation dry run")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="samples per chunk file, a multiple of --batch-size: a killed run loses at most one "
                        "chunk's work (default: the smallest multiple of the batch size >= 64)")
    p.add_argument("--seed", type=int, default=0, help="subsample and bootstrap seed (default: 0)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N (chunks k with k %% N == I) and stop where the others' chunks "
                        "are needed: for SLURM arrays or machines sharing a filesystem; afterwards the command "
                        "without --shard reuses everything and writes the datasets (under torchrun the ranks "
                        "share the work by themselves)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


class UsageError(Exception):
    """Bad input: the CLI prints it as one line and exits with code 2, before model work."""


CURRENT: dict[str, Any] = {}  # the running study's name and args, for the interruption message


def parse(parser: argparse.ArgumentParser, argv=None):
    """Parse ``argv`` (default: the command line) and remember it for the provenance.

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group; with ``--shard I/N``
    this process becomes one shard (`mech.parallel`). Only rank 0 prints."""
    from mech import parallel

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.argv = argv
    args.study = parser.prog.rsplit(".", 1)[-1]
    CURRENT.update(study=args.study, args=args)
    if args.shard is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"--shard {args.shard}: torchrun already shares the work among its ranks; drop --shard")
        try:
            parallel.set_shard(parallel.parse_shard(args.shard))
        except ValueError as error:
            raise UsageError(f"--shard {args.shard}: {str(error).split(': ', 1)[1]}") from None
    else:
        parallel.set_shard(None)
    share = parallel.init()
    if share.group and not share.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the group
    return args


def cli(main) -> None:
    """Run a study's ``main`` as a command: bad input is one line and exit code 2, a write
    that fails (e.g. a full disk) one line and exit 1, Ctrl-C or SIGTERM one line saying
    what was saved and how to resume (exit 130). Anything else is a bug: its traceback stays."""
    import signal

    import mech

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    prog = f"python -m {sys.modules[main.__module__].__spec__.name}"
    try:
        main()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except mech.WriteError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except mech.parallel.ShardDone as error:
        print(f"{prog}: {error}. When every shard is done, rerun this command for the next phase, or the "
              "command without --shard to finish: it reuses every chunk and writes the datasets.", file=sys.stderr)
        sys.exit(0)
    except KeyboardInterrupt:
        args = CURRENT.get("args")
        out = getattr(args, "out", DEFAULT_OUT)
        saved = len(mech.store.WRITTEN)
        command = f"{prog} {shlex.join(getattr(args, 'argv', []))}".strip()
        print(f"\n{prog}: interrupted; {saved} chunk file{'s' * (saved != 1)} finished and saved under {out} in "
              f"this run (and every earlier one is kept). Resume with the same command ({command}): finished "
              "chunks are reused, nothing they hold is recomputed.", file=sys.stderr)
        sys.exit(130)


def _positive(args, option: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{option} {value}: must be an integer >= 1")


def number_option(option: str, text, **bounds) -> float:
    """A numeric option, finite and in range (see `mech.checks.number`), or a UsageError."""
    from mech.checks import number

    try:
        return number(option, text, **bounds)
    except ValueError as error:
        raise UsageError(str(error).replace(f"{option}=", f"{option} ", 1)) from None


def layer_list(option: str, text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> ``(2, 4, 8)``, or a UsageError naming the option."""
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{option} {text}: give comma-separated decoder layer numbers, e.g. 2,4,8") from None
    if not layers:
        raise UsageError(f"{option} {text!r}: give at least one layer, e.g. 2,4,8")
    return layers


def add_check(parser: argparse.ArgumentParser, check, *, needs_model: bool = False) -> None:
    """Run ``check(args)`` (or ``check(args, model)``) with the common checks, before any
    sample is loaded or generated; it raises `UsageError`."""
    key = "model_checks" if needs_model else "checks"
    parser.set_defaults(**{key: [*(parser.get_default(key) or []), check]})


def check_args(args) -> None:
    """Every option that needs no model, each failing with one line naming it."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give at least 1 sample per dataset")
    _positive(args, "--batch-size", args.batch_size)
    _positive(args, "--max-new-tokens", args.max_new_tokens, allow_none=True)
    _positive(args, "--chunk-size", args.chunk_size, allow_none=True)
    if args.chunk_size is not None and args.chunk_size % args.batch_size:
        raise UsageError(f"--chunk-size {args.chunk_size}: must be a multiple of --batch-size {args.batch_size} "
                         "(batches never straddle chunks)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    names = dataset_names(args)
    sources(args, names)
    for check in getattr(args, "checks", None) or []:
        check(args)


def check_model_args(args, model) -> None:
    """The options that need the model (layer numbers, ...), before any sample is run."""
    for check in getattr(args, "model_checks", None) or []:
        check(args, model)


def layer_option(model, option: str, value) -> int:
    try:
        return model.check_layer(value, option)
    except ValueError as error:
        raise UsageError(str(error).replace(f"{option} {value!r} is", f"{option} {value}:", 1)) from None


def import_modules(args) -> None:
    import importlib

    for name in getattr(args, "imports", []):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(f"--import {name}: cannot import it ({error}); give an importable module name "
                             "(its folder on PYTHONPATH)") from None


def dataset_names(args) -> list[str]:
    import mech

    import_modules(args)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names:
        raise UsageError("--datasets is empty; e.g. --datasets shapes")
    unknown = [n for n in names if n not in mech.datasets.DATASETS]
    if unknown:
        raise UsageError(f"--datasets {','.join(unknown)}: unknown; known: {', '.join(sorted(mech.datasets.DATASETS))}")
    return names


def sources(args, names=None) -> dict[str, str]:
    """``--source NAME=PATH`` as ``{name: path}`` (each name one of ``--datasets``)."""
    names = dataset_names(args) if names is None else names
    out = {}
    for item in getattr(args, "source", None) or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--source {item}: give NAME=PATH, e.g. --source vqav2=/data/vqav2")
        if name not in names:
            raise UsageError(f"--source {item}: {name} is not among --datasets ({', '.join(names)})")
        if not Path(path).expanduser().exists() and path.count("/") != 1:
            raise UsageError(f"--source {item}: {path} does not exist")
        out[name] = str(Path(path).expanduser()) if Path(path).expanduser().exists() else path
    return out


def load_model(args):
    import mech

    try:
        if args.remote == "ndif":
            from mech.remote import require_served

            require_served(args.model, args.revision)
        device = mech.parallel.device()
        return mech.load(args.model, revision=args.revision, dispatch=args.remote != "ndif",
                         **({"device_map": device} if device else {}))
    except (ValueError, OSError, ImportError) as error:
        raise UsageError(f"--model {args.model}: {error}") from None


def load_samples(args) -> dict[str, list]:
    """``{dataset: samples}`` for ``--datasets`` with ``--limit``, ``--seed`` and ``--source``."""
    import mech

    given = sources(args)
    out = {}
    for name in dataset_names(args):
        options = {"source": given[name]} if name in given else {}
        try:
            out[name] = list(mech.datasets.load(name, limit=args.limit, seed=args.seed, **options))
        except (ValueError, TypeError, OSError, ImportError) as error:
            raise UsageError(f"--datasets {name}: {error}") from None
        if not out[name]:
            raise UsageError(f"--datasets {name}: no samples (is the source empty?)")
    return out


def start(args):
    """Check every option, load the model, check the options that need it, load the
    samples: all before the first generation. ``(model, samples)``."""
    check_args(args)
    model = load_model(args)
    check_model_args(args, model)
    return model, load_samples(args)


def run_options(args) -> dict[str, Any]:
    """Keyword options every study passes to `mech.run` / `mech.sweep`."""
    options = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, protocol=args.protocol,
                   chunk_size=args.chunk_size, progress=not args.no_progress)
    if args.remote:
        options["remote"] = True if args.remote == "ndif" else "local"
    return options


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


def chunks(out: Path, dataset: str) -> Path:
    """Where the runner keeps one dataset's chunk files; shared by all studies."""
    return out / "chunks" / dataset


PER_SAMPLE = ("score", "inverse_time", "new_tokens", "prediction")


def positional(ds: xr.Dataset) -> xr.Dataset:
    """Sample ids -> a ``sample_id`` coordinate over a positional ``sample`` dim."""
    ids = ds["sample"].values
    ds = ds.drop_vars([v for v in ("dataset",) if v in ds.coords])
    return ds.assign_coords(sample=np.arange(len(ids)), sample_id=("sample", ids.astype(str)))


def per_dataset(runs: dict[str, xr.Dataset]) -> xr.Dataset:
    """``{dataset: Dataset(..., sample)}`` -> one Dataset with a leading ``dataset`` dim
    (shorter datasets are NaN-padded along ``sample``)."""
    names = list(runs)
    parts = [positional(runs[n]).assign(is_sample=lambda d: xr.ones_like(d["sample"], dtype=bool))
             for n in names]
    ds = xr.concat(parts, dim=xr.DataArray(names, dims="dataset", name="dataset"), join="outer")
    ds["is_sample"] = ds["is_sample"].fillna(False).astype(bool)
    for var in [v for v in ds.data_vars if ds[v].dtype == object]:  # netCDF: no NaN in strings
        ds[var] = ds[var].where(ds["is_sample"], "").astype(str)
    ds = ds.assign_coords(sample_id=ds["sample_id"].fillna("").astype(str))  # netCDF: no NaN in strings
    if "question_type" in ds.coords:
        ds = ds.assign_coords(question_type=ds["question_type"].fillna("").astype(str))
    ds["is_sample"].attrs["long_name"] = "a real sample (False: padding of a shorter dataset)"
    return ds


def compare(model, samples_by_dataset: dict, named: dict, dim: str, *, out: Path, seed: int = 0,
            **run_options) -> xr.Dataset:
    """Baseline plus one run per intervention, on the same samples, as one Dataset.

    ``named``: ``{coordinate: intervention}`` along the new dim ``dim`` (e.g. layer -> ZeroImage).
    Dims: ``dataset``, ``dim``, ``sample`` (positional, ``sample_id`` coord), ``bound``.
    Vars: ``score``, ``inverse_time`` (1/s), ``new_tokens``, ``prediction`` and numeric
    per-sample extras (``extra_*``, e.g. ``extra_pre_layer``) over (dataset, dim, sample);
    ``baseline_score``, ``baseline_inverse_time``, ``baseline_new_tokens``,
    ``baseline_prediction`` over (dataset, sample); ``changed`` (dataset, dim): predictions
    that differ from the baseline's; ``accuracy``/``accuracy_ci``,
    ``mean_inverse_time`` and ``baseline_*`` summaries with percentile-bootstrap 95% CIs.
    """
    import mech

    coords = list(named)
    runs = {}
    for name, samples in samples_by_dataset.items():
        folders = {"baseline": None, **{mech.runner.slug(named[c]): named[c] for c in coords}}
        results = mech.sweep(model, samples, folders, out=chunks(out, name), **run_options)
        parts = []
        for c in coords:
            one = results[mech.runner.slug(named[c])].to_xarray()
            extra = [v for v in one.data_vars if v.startswith("extra_") and one[v].dims == ("sample",)]
            parts.append(one[[*PER_SAMPLE, *extra]])
        stacked = xr.concat(parts, dim=xr.DataArray(coords, dims=dim, name=dim))
        base = results["baseline"].to_xarray()
        timings = {results[mech.runner.slug(named[c])].meta["timing"] for c in coords}
        stacked["inverse_time"].attrs["timing"] = ",".join(sorted(timings))
        stacked["baseline_score"] = base["score"]
        stacked["baseline_inverse_time"] = base["inverse_time"]
        stacked["baseline_new_tokens"] = base["new_tokens"]
        stacked["baseline_prediction"] = base["prediction"]
        runs[name] = stacked.drop_vars("dataset", errors="ignore")
    return summarise(per_dataset(runs), seed)


def summarise(ds: xr.Dataset, seed: int) -> xr.Dataset:
    """Add accuracy with bootstrap CIs and mean 1/t, per dataset and run."""
    parts = []
    for name in ds["dataset"].values:
        one = ds.sel(dataset=name)
        one = one.isel(sample=np.flatnonzero(one["is_sample"].values))
        masked = accuracy_with_ci(one["score"], seed)
        base = accuracy_with_ci(one["baseline_score"], seed)
        parts.append(xr.Dataset({
            "accuracy": masked["accuracy"], "accuracy_ci": masked["accuracy_ci"],
            "mean_inverse_time": one["inverse_time"].mean("sample"),
            "mean_new_tokens": one["new_tokens"].mean("sample"),
            "baseline_accuracy": base["accuracy"], "baseline_accuracy_ci": base["accuracy_ci"],
            "baseline_mean_inverse_time": one["baseline_inverse_time"].mean("sample"),
            "baseline_mean_new_tokens": one["baseline_new_tokens"].mean("sample"),
            "changed": (one["prediction"] != one["baseline_prediction"]).sum("sample"),
        }))
    ds = ds.merge(xr.concat(parts, dim=ds["dataset"]), compat="no_conflicts")
    for var in ds.data_vars:
        unit = "1/s" if "inverse_time" in var else "tokens" if "new_tokens" in var else \
            "fraction" if ("score" in var or "accuracy" in var) else None
        if unit:
            ds[var].attrs["units"] = unit
    for var in ("accuracy_ci", "baseline_accuracy_ci"):
        ds[var].attrs["long_name"] = "95% percentile bootstrap CI of the mean over samples"
    ds["changed"].attrs.update(units="samples", long_name="predictions that differ from the baseline's")
    ds["inverse_time"].attrs["long_name"] = "1/t: inverse seconds in generate per sample"
    ds["new_tokens"].attrs["long_name"] = ("generated tokens before EOS (at most the cap): tells a slower "
                                           "run from a longer answer")
    timing = ds["inverse_time"].attrs.get("timing", "")
    ds["inverse_time"].attrs["timing_note"] = (
        "sweep: the runs shared one clean prefill, so a layer's seconds cover only its own "
        "incremental prefill (layers >= L) and decoding; run with --naive-sweep for standalone times"
        if "sweep" in timing else "per-sample: exact per-sample generate time" if timing == "per-sample"
        else "amortised: each batch's generate time shared equally by its samples")
    return ds


def accuracy_with_ci(score: xr.DataArray, seed: int, confidence: float = 0.95) -> xr.Dataset:
    """Mean over ``sample`` with a percentile-bootstrap CI (``bound`` = low/high)."""
    from mech import stats

    values = score.transpose(..., "sample").values
    low, high = stats.bootstrap_ci(values, confidence=confidence, seed=seed, axis=-1)
    dims = [d for d in score.dims if d != "sample"]
    mean = score.mean("sample")
    ci = xr.DataArray(np.stack([np.asarray(low), np.asarray(high)], -1), dims=[*dims, "bound"],
                      coords={**{d: score[d] for d in dims}, "bound": ["low", "high"]})
    return xr.Dataset({"accuracy": mean, "accuracy_ci": ci})


def paired_rows(ds: xr.Dataset, dim: str, coord, seed: int) -> xr.Dataset:
    """One run against the plain model, per dataset (and ``average`` over several):
    ``baseline_accuracy``, ``accuracy``, ``difference`` (run - baseline) with its paired
    bootstrap 95% CI, the paired-test ``p_value`` (McNemar for 0/1 scores, paired
    bootstrap for soft ones) and ``n_samples``, over a ``row`` dim.

    ``ds``: a `compare` Dataset; ``coord``: the run's coordinate along ``dim``.
    """
    from mech import stats

    rows = {}
    pooled_a, pooled_b = [], []
    for name in ds["dataset"].values:
        one = ds.sel(dataset=name).isel(sample=np.flatnonzero(ds["is_sample"].sel(dataset=name).values))
        a = one["baseline_score"].values
        b = one["score"].sel({dim: coord}).values
        pooled_a.append(a)
        pooled_b.append(b)
        diff = stats.paired_bootstrap_diff(b, a, seed=seed)
        rows[str(name)] = (a.mean(), b.mean(), diff["mean_diff"], diff["low"], diff["high"],
                           float(stats.paired_test(b, a, seed=seed)), len(a))
    if len(rows) > 1:
        a, b = np.concatenate(pooled_a), np.concatenate(pooled_b)
        diff = stats.paired_bootstrap_diff(b, a, seed=seed)
        means = np.array([r[:3] for r in rows.values()]).mean(0)  # average over datasets, as the paper
        rows["average"] = (*means, diff["low"], diff["high"], float(stats.paired_test(b, a, seed=seed)), len(a))
    names = list(rows)
    values = np.array([rows[n] for n in names], dtype=float)
    table = xr.Dataset(
        {"baseline_accuracy": ("row", values[:, 0]), "accuracy": ("row", values[:, 1]),
         "difference": ("row", values[:, 2]),
         "difference_ci": (("row", "bound"), values[:, 3:5]), "p_value": ("row", values[:, 5]),
         "n_samples": ("row", values[:, 6].astype(int))},
        coords={"row": names, "bound": ["low", "high"]})
    for var in ("baseline_accuracy", "accuracy", "difference", "difference_ci"):
        table[var].attrs["units"] = "fraction"
    table["difference_ci"].attrs["long_name"] = f"paired bootstrap 95% CI of {coord} - baseline"
    table["p_value"].attrs["long_name"] = "paired test: McNemar (0/1 scores) or paired bootstrap (soft)"
    table["row"].attrs["long_name"] = "dataset, or 'average' (mean of dataset accuracies; CI/test pooled)"
    return table
