"""Contrastive attention against controls, at equal rho and lambda.

At the review and post-integrated layers (given, or discovered from the layer-masking
sweep), for every setting — where the mask acts (``--mask-at``), ``--rho``, ``--lam``,
``--review`` — the method's selection (the image tokens with the lowest contrastive score
IA) runs beside controls that scale exactly as many tokens per sample by another rule:
random slots (``--seeds`` seeds, averaged per sample), the highest IA, the lowest plain
attention A(post), the lowest attention at the pre-integrated layer A(i*). Per dataset,
and per question type where samples have one: the accuracy of each, the difference
contrastive - control with its paired bootstrap 95% CI and the p-value of the same
bootstrap, and how many predictions the method changes.

``--review``, ``--mask-at``, ``--rho`` and ``--lam`` take comma lists and span a grid:
every combination is one setting.

Writes ``controls.nc`` (dims dataset x run x sample, and the summary ``table_*``
variables over dataset x setting x control) and ``controls.png/.pdf`` under ``--out``
(``--markdown`` adds the summary as Markdown there).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import xarray as xr

from . import cli, inputs, output, layers as layer_choice

CONTROLS = ("random", "high-ia", "low-attention", "low-pre-attention")


GRID = ("--review", "--rho", "--lam", "--mask-at")


def add_arguments(parser, *, default: str = ",".join(CONTROLS)) -> None:
    """``--controls`` (``default``: which run) and ``--seeds``."""
    parser.add_argument("--controls", default=default,
                        help=f"comma-separated controls, each scaling as many tokens per sample as the method: "
                             f"{', '.join(CONTROLS)} (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of the random control, averaged per sample (default: %(default)s)")
    cli.add_check(parser, check_arguments)


def lists(args) -> dict:
    """The grid's axes (`studies.options.values`) and the controls."""
    from .options import values

    controls = [c.strip() for c in args.controls.split(",") if c.strip()]
    return dict(rho=list(values(args, "rho")), lam=list(values(args, "lam")), mask_at=list(values(args, "mask_at")),
                controls=controls)


def check_arguments(args) -> None:
    controls = [c.strip() for c in args.controls.split(",") if c.strip()]
    if not controls:
        raise cli.UsageError(f"--controls {args.controls!r}: give at least one of {', '.join(CONTROLS)}")
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise cli.UsageError(f"--controls {','.join(bad)}: use {', '.join(CONTROLS)}")
    if args.seeds < 1:
        raise cli.UsageError(f"--seeds {args.seeds}: give at least 1 seed for the random control")


def runs(settings: list[dict], candidates, controls, seeds: int, heads: str = "mean") -> tuple[dict, dict]:
    """``({run name: ContrastiveMask}, {run name: metadata})`` for each setting (review,
    post, mask_at, rho, lam): the method and each control (random once per seed).
    ``candidates``: a set for `mech.ContrastiveMask`, or a function of the setting."""
    import mech

    named, meta = {}, {}
    for setting in settings:
        base = dict(review=setting["review"], post=setting["post"],
                    candidates=candidates(setting) if callable(candidates) else candidates,
                    rho=setting["rho"], lam=setting["lam"], mask_at=setting["mask_at"], heads=heads)
        picks = [("contrastive", 0)] + [(c, s) for c in controls for s in (range(seeds) if c == "random" else [0])]
        for select, seed in picks:
            name = f"{setting_name(setting)}|{select}" + (f"|seed{seed}" if select == "random" else "")
            named[name] = mech.ContrastiveMask(**base, select=select, seed=seed)
            meta[name] = {**setting, "selection": select, "seed": seed if select == "random" else -1}
    return named, meta


def setting_name(setting: dict) -> str:
    return f"review{setting['review']}|{setting['mask_at']}|rho{setting['rho']:g}|lam{setting['lam']:g}"


def evaluate(model, samples_by_dataset, named, meta, *, out, seed: int = 0, **run_options) -> xr.Dataset:
    """`mech.comparisons.compare` over the runs, with each run's setting as coordinates of ``run``."""
    import mech

    ds = mech.comparisons.compare(model, samples_by_dataset, named, "run", out=out, seed=seed, **run_options)
    for key in ("review", "post", "mask_at", "rho", "lam", "selection", "seed"):
        ds = ds.assign_coords({key: ("run", [meta[r][key] for r in ds["run"].values])})
    ds = ds.assign_coords(setting=("run", [setting_name(meta[r]) for r in ds["run"].values]))
    return ds


def _control_scores(ds: xr.Dataset, setting: str, select: str) -> xr.DataArray:
    """Per-sample scores (dataset, sample) of one selection at one setting; the random
    control's are the mean over its seeds."""
    picks = (ds["setting"] == setting) & (ds["selection"] == select)
    return ds["score"].isel(run=np.flatnonzero(picks.values)).mean("run")


def table(ds: xr.Dataset, seed: int = 0, by: str | None = None, min_samples: int = 10) -> xr.Dataset:
    """Summary over (row, setting, control): ``baseline_accuracy``, ``contrastive_accuracy``,
    ``control_accuracy``, ``difference`` (contrastive - control) with ``difference_ci`` and
    ``p_value``, ``gain`` (contrastive - baseline) with ``gain_ci`` and ``gain_p_value``,
    ``changed`` (predictions the method changes), ``n_samples``. Rows are datasets, or
    ``dataset/question type`` with ``by="question_type"`` (groups of at least
    ``min_samples``)."""
    from mech import stats
    from mech.comparisons import P_VALUE

    settings = list(dict.fromkeys(ds["setting"].values.tolist()))
    controls = [c for c in CONTROLS if c in set(ds["selection"].values.tolist())]
    rows = []
    for name in ds["dataset"].values:
        real = np.flatnonzero(ds["is_sample"].sel(dataset=name).values)
        one = ds.sel(dataset=name).isel(sample=real)
        if by is None:
            rows.append((str(name), np.ones(len(real), dtype=bool)))
        else:
            types = one[by].values.astype(str)
            for t in sorted(set(types) - {""}):
                if (types == t).sum() >= min_samples:
                    rows.append((f"{name}/{t}", types == t))
    shape = (len(rows), len(settings), len(controls))
    out = {k: np.full(shape[:2], np.nan) for k in ("contrastive_accuracy", "gain", "gain_p_value", "changed",
                                                   "baseline_accuracy", "n_samples")}
    out["gain_ci"] = np.full((*shape[:2], 2), np.nan)
    for k in ("control_accuracy", "difference", "p_value"):
        out[k] = np.full(shape, np.nan)
    out["difference_ci"] = np.full((*shape, 2), np.nan)
    for r, (row, keep) in enumerate(rows):
        name = row.split("/")[0]
        real = np.flatnonzero(ds["is_sample"].sel(dataset=name).values)
        one = ds.sel(dataset=name).isel(sample=real).isel(sample=np.flatnonzero(keep))
        base = one["baseline_score"].values
        for s, setting in enumerate(settings):
            method = _control_scores(one, setting, "contrastive").values
            gain = stats.paired_bootstrap_diff(method, base, seed=seed)  # CI and p of one bootstrap
            picks = np.flatnonzero(((one["setting"] == setting) & (one["selection"] == "contrastive")).values)
            changed = (one["prediction"].isel(run=picks[0]) != one["baseline_prediction"]).sum().item()
            out["contrastive_accuracy"][r, s], out["baseline_accuracy"][r, s] = method.mean(), base.mean()
            out["gain"][r, s], out["gain_ci"][r, s] = gain["mean_diff"], (gain["low"], gain["high"])
            out["gain_p_value"][r, s] = gain["p_value"]
            out["changed"][r, s], out["n_samples"][r, s] = changed, len(base)
            for c, control in enumerate(controls):
                other = _control_scores(one, setting, control).values
                diff = stats.paired_bootstrap_diff(method, other, seed=seed)
                out["control_accuracy"][r, s, c] = other.mean()
                out["difference"][r, s, c] = diff["mean_diff"]
                out["difference_ci"][r, s, c] = diff["low"], diff["high"]
                out["p_value"][r, s, c] = diff["p_value"]
    dims2, dims3 = ("row", "setting"), ("row", "setting", "control")
    t = xr.Dataset({k: ((*dims2, "bound") if k == "gain_ci" else (*dims3, "bound") if k == "difference_ci"
                        else dims3 if v.ndim == 3 else dims2, v) for k, v in out.items()},
                   coords={"row": [r for r, _ in rows], "setting": settings, "control": controls,
                           "bound": ["low", "high"]})
    t["difference"].attrs["long_name"] = "contrastive - control accuracy (same samples)"
    t["difference_ci"].attrs["long_name"] = "paired bootstrap 95% CI of contrastive - control"
    t["p_value"].attrs["long_name"] = P_VALUE
    t["gain_p_value"].attrs["long_name"] = P_VALUE
    t["gain"].attrs["long_name"] = "contrastive - baseline accuracy (same samples)"
    t["changed"].attrs["long_name"] = "predictions the contrastive run changes against the baseline"
    t["control_accuracy"].attrs["long_name"] = "the control's accuracy (random: mean over its seeds per sample)"
    return t


def summary_table(t: xr.Dataset, row_label: str = "dataset", seeds: int | None = None):
    """The summary as a `studies.tables.Table`: per row and setting, the unmasked model and
    each control against the contrastive run, Δ with its CI and p, changed predictions."""
    from .tables import Table, interval, p_value, percent, points

    legend = ["Δ", "95% CI", "p", "changed", "ρ", "λ", "n"]
    controls = [str(c) for c in t["control"].values]
    if "random" in controls:
        legend.append("random: slots drawn at random" + (f", mean over {seeds} seeds per sample" if seeds else ""))
    for name, meaning in (("high-ia", "the highest contrastive scores"), ("low-attention", "the lowest A(post)"),
                          ("low-pre-attention", "the lowest A(i*)")):
        if name in controls:
            legend.append(f"{name}: the tokens with {meaning}")
    legend.append("every control scales exactly as many tokens per sample as the contrastive run")
    table = Table([row_label, "review", "mask at", "ρ", "λ", "contrastive", "against", "its accuracy", "Δ",
                   "95% CI", "p", "changed", "n"], numeric={1, 3, 4, 5, 7, 8, 10, 11, 12}, legend=legend)
    for row in t["row"].values:
        for setting in t["setting"].values:
            one = t.sel(row=row, setting=setting)
            review, mask_at, rho, lam = str(setting).split("|")
            head = [str(row), review.removeprefix("review"), mask_at, rho.removeprefix("rho"), lam.removeprefix("lam"),
                    percent(one["contrastive_accuracy"])]
            table.add(*head, "no intervention", percent(one["baseline_accuracy"]), points(one["gain"]),
                      interval(*one["gain_ci"].values), p_value(one["gain_p_value"]), int(one["changed"]),
                      int(one["n_samples"]))
            for c in controls:
                x = one.sel(control=c)
                table.add(*[""] * len(head), c, percent(x["control_accuracy"]), points(x["difference"]),
                          interval(*x["difference_ci"].values), p_value(x["p_value"]), "", "")
            table.gap()
    return table


def format_table(t: xr.Dataset, row_label: str = "dataset", seeds: int | None = None) -> str:
    return summary_table(t, row_label, seeds).text()


def prefixed(t: xr.Dataset, prefix: str) -> xr.Dataset:
    """A `table` ready to merge into the run dataset: its variables and its row dim get
    ``prefix``; its settings and controls become the dims ``table_setting`` / ``control``."""
    t = t.rename({v: f"{prefix}_{v}" for v in t.data_vars} | {"row": f"{prefix}_row"})
    return t.rename({"setting": "table_setting"})


def unprefixed(ds: xr.Dataset, prefix: str) -> xr.Dataset:
    """The `table` that `prefixed` merged into a saved dataset, back under its own names."""
    t = ds[[v for v in ds.data_vars if v.startswith(f"{prefix}_") and f"{prefix}_row" in ds[v].dims]]
    return t.rename({v: v.removeprefix(f"{prefix}_") for v in t.data_vars} | {f"{prefix}_row": "row",
                                                                            "table_setting": "setting"})


def report_tables(ds: xr.Dataset) -> list:
    """The tables `studies.report` shows for a saved ``controls.nc``."""
    seeds = int(ds.attrs["seeds"]) if "seeds" in ds.attrs else None
    tables = [summary_table(unprefixed(ds, "table"), seeds=seeds)]
    tables[0].title = "Contrastive attention against the unmasked model and the controls"
    if "type_row" in ds.dims:
        tables.append(summary_table(unprefixed(ds, "type"), "dataset/type", seeds=seeds))
        tables[1].title = "The same by question type"
    return tables


def markdown(t: xr.Dataset, seeds: int | None = None) -> str:
    """The summary as a Markdown table (the same cells as the printed one)."""
    return summary_table(t, seeds=seeds).markdown()


def settings_from(args, model, chosen) -> list[dict]:
    """Every combination of ``--review``, ``--mask-at``, ``--rho``, ``--lam`` (one review
    layer: the given or discovered one, with its post-integrated layer)."""
    from .options import values

    axes = lists(args)
    reviews = [chosen.review] if args.review is None else list(values(args, "review"))
    post = lambda r: chosen.post if r == chosen.review else (args.post if args.post is not None else r - 1)
    return [dict(review=r, post=post(r), mask_at=m, rho=rho, lam=lam)
            for r, m, rho, lam in itertools.product(reviews, axes["mask_at"], axes["rho"], axes["lam"])]


def markdown_path(args) -> Path | None:
    """``--markdown NAME``: ``<out>/NAME`` (outputs go under ``--out`` only)."""
    if args.markdown is None:
        return None
    name = Path(args.markdown)
    if name.is_absolute() or ".." in name.parts:
        raise cli.UsageError(f"--markdown {args.markdown}: give a file name; it is written under --out "
                             f"({args.out}), e.g. --markdown controls.md")
    return args.out / name


def main(argv=None) -> xr.Dataset:
    import mech
    from mech import plots, progress

    from . import options
    from .layer_masking import sweep as masking_sweep

    parser = cli.parser("controls", __doc__)
    options.add_contrastive(parser, grid=GRID)
    add_arguments(parser)
    parser.add_argument("--markdown", nargs="?", const="controls.md", default=None, metavar="NAME",
                        help="also write the summary table as Markdown to <out>/NAME (default NAME: controls.md)")
    cli.add_check(parser, markdown_path)
    args = cli.parse(parser, argv)
    model, samples = inputs.start(args)
    run = inputs.run_options(args)
    needs_layers = args.review is None or (args.candidates == "fusion" and args.fusion is None)
    steps = 2 if needs_layers else 1
    masking = None
    if needs_layers:
        with progress.phase(f"1/{steps} layer-masking sweep (the layers)"):
            print(f"1/{steps} layer-masking sweep (the layers)")
            masking = masking_sweep(model, samples, out=args.out, seed=args.seed, **run)
    chosen = layer_choice.resolve(args, model, masking)
    settings = settings_from(args, model, chosen)
    named, meta = runs(settings, lambda s: options.candidates_for(args.candidates, chosen.fusion, s["post"]),
                       lists(args)["controls"], args.seeds, heads=args.heads)
    title = (f"{steps}/{steps} contrastive attention and controls: {len(settings)} setting(s) x "
             f"{len(named) // len(settings)} runs, {len(samples)} dataset(s)")
    print(f"{model}; layers ({chosen.source}): review {chosen.review}, post {chosen.post}, fusion "
          f"{list(chosen.fusion)}\n{title}")
    with progress.phase(title):
        ds = evaluate(model, samples, named, meta, out=args.out, seed=args.seed, **run)
    summary = table(ds, args.seed)
    print(format_table(summary, seeds=args.seeds))
    by_type = table(ds, args.seed, by="question_type")
    if by_type.sizes["row"]:
        print("\nby question type\n" + format_table(by_type, "dataset/type", seeds=args.seeds))
    path = markdown_path(args)
    if path is not None and mech.parallel.current().writes:
        from mech.store import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(markdown(summary, seeds=args.seeds) + "\n"))
        print(f"wrote {path}")
    ds = ds.merge(prefixed(summary, "table"))
    if by_type.sizes["row"]:
        ds = ds.merge(prefixed(by_type, "type"))
    return output.finish(ds, args, model, "controls", lambda d: plots.controls(summary, d.attrs),
                         candidates=args.candidates, heads=args.heads, controls=lists(args)["controls"],
                         seeds=args.seeds, settings=json.dumps(settings), **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
