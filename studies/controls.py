"""Contrastive attention against controls, at equal rho and lambda.

At the review and post-integrated layers (given, or discovered from the layer-masking
sweep), for every setting — where the mask acts (``--mask-at``), ``--rho``, ``--lam``,
``--review`` — the method's selection (the image tokens with the lowest contrastive score
IA) runs beside controls that scale exactly as many tokens per sample by another rule:
random slots (``--seeds`` seeds, averaged per sample), the highest IA, the lowest plain
attention A(post), the lowest attention at the pre-integrated layer A(i*). Per dataset,
and per question type where samples have one: the accuracy of each, the difference
contrastive - control with its paired bootstrap 95% CI and a paired test (McNemar for
0/1 scores, paired bootstrap for soft ones), and how many predictions the method changes.

Options taking lists (comma-separated) span a grid: every combination is one setting.

Writes ``controls.nc`` (dims dataset x run x sample, and the summary ``table_*``
variables over dataset x setting x control) and ``controls.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import xarray as xr

from . import cli, inputs, output, layers as layer_choice

CONTROLS = ("random", "high-ia", "low-attention", "low-pre-attention")


def add_arguments(parser, *, grid: bool = True) -> None:
    """``--mask-at``, ``--rho``, ``--lam`` (lists when ``grid``), ``--controls``, ``--seeds``."""
    import mech

    kind = "comma-separated " if grid else ""
    parser.add_argument("--mask-at", default=mech.interventions.DEFAULT_MASK_AT,
                        help=f"{kind}where the mask acts: input (the residual stream entering the review "
                             "layer: the paper's Eq. 4 read literally; RMSNorm divides the scale back out "
                             "there, so only later layers see it), normed (after the review layer's input "
                             "RMSNorm: its keys and values see it), attention (log lambda added to every "
                             "query's attention logits toward the masked tokens at the review layer and "
                             f"after, at every generated token) (default: {mech.interventions.DEFAULT_MASK_AT})")
    parser.add_argument("--controls", default=",".join(CONTROLS),
                        help=f"comma-separated controls, each scaling as many tokens per sample as the method: "
                             f"{', '.join(CONTROLS)} (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the random control, averaged (default: 3)")
    cli.add_check(parser, check_arguments)


def lists(args) -> dict:
    """The grid's axes from the (comma-separated) options."""
    def many(option, text, **bounds):
        return [cli.number_option(option, x, **bounds) for x in str(text).split(",") if x.strip()]

    rhos = many("--rho", args.rho, low=0, high=1)
    lams = many("--lam", args.lam, low=0)
    masks = [m.strip() for m in str(args.mask_at).split(",") if m.strip()]
    controls = [c.strip() for c in args.controls.split(",") if c.strip()]
    return dict(rho=rhos, lam=lams, mask_at=masks, controls=controls)


def check_arguments(args) -> None:
    import mech

    axes = lists(args)
    for name in ("rho", "lam", "mask_at"):
        if not axes[name]:
            raise cli.UsageError(f"--{name.replace('_', '-')} {getattr(args, name)!r}: give at least one value")
    bad = [m for m in axes["mask_at"] if m not in mech.interventions.MASK_AT]
    if bad:
        raise cli.UsageError(f"--mask-at {','.join(bad)}: use input, normed or attention")
    bad = [c for c in axes["controls"] if c not in CONTROLS]
    if bad:
        raise cli.UsageError(f"--controls {','.join(bad)}: use {', '.join(CONTROLS)}")
    if args.seeds < 1:
        raise cli.UsageError(f"--seeds {args.seeds}: give at least 1 seed for the random control")


def runs(settings: list[dict], candidates, controls, seeds: int) -> tuple[dict, dict]:
    """``({run name: ContrastiveMask}, {run name: metadata})`` for each setting (review,
    post, mask_at, rho, lam): the method and each control (random once per seed)."""
    import mech

    named, meta = {}, {}
    for setting in settings:
        base = dict(review=setting["review"], post=setting["post"], candidates=candidates,
                    rho=setting["rho"], lam=setting["lam"], mask_at=setting["mask_at"])
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
            gain = stats.paired_bootstrap_diff(method, base, seed=seed)
            picks = np.flatnonzero(((one["setting"] == setting) & (one["selection"] == "contrastive")).values)
            changed = (one["prediction"].isel(run=picks[0]) != one["baseline_prediction"]).sum().item()
            out["contrastive_accuracy"][r, s], out["baseline_accuracy"][r, s] = method.mean(), base.mean()
            out["gain"][r, s], out["gain_ci"][r, s] = gain["mean_diff"], (gain["low"], gain["high"])
            out["gain_p_value"][r, s] = float(stats.paired_test(method, base, seed=seed))
            out["changed"][r, s], out["n_samples"][r, s] = changed, len(base)
            for c, control in enumerate(controls):
                other = _control_scores(one, setting, control).values
                diff = stats.paired_bootstrap_diff(method, other, seed=seed)
                out["control_accuracy"][r, s, c] = other.mean()
                out["difference"][r, s, c] = diff["mean_diff"]
                out["difference_ci"][r, s, c] = diff["low"], diff["high"]
                out["p_value"][r, s, c] = float(stats.paired_test(method, other, seed=seed))
    dims2, dims3 = ("row", "setting"), ("row", "setting", "control")
    t = xr.Dataset({k: ((*dims2, "bound") if k == "gain_ci" else (*dims3, "bound") if k == "difference_ci"
                        else dims3 if v.ndim == 3 else dims2, v) for k, v in out.items()},
                   coords={"row": [r for r, _ in rows], "setting": settings, "control": controls,
                           "bound": ["low", "high"]})
    t["difference"].attrs["long_name"] = "contrastive - control accuracy (same samples)"
    t["difference_ci"].attrs["long_name"] = "paired bootstrap 95% CI of contrastive - control"
    t["p_value"].attrs["long_name"] = "paired test contrastive vs control: McNemar (0/1) or paired bootstrap"
    t["gain"].attrs["long_name"] = "contrastive - baseline accuracy (same samples)"
    t["changed"].attrs["long_name"] = "predictions the contrastive run changes against the baseline"
    t["control_accuracy"].attrs["long_name"] = "the control's accuracy (random: mean over its seeds per sample)"
    return t


def format_table(t: xr.Dataset, row_label: str = "dataset") -> str:
    controls = list(t["control"].values)
    head = (f"{row_label:<22}{'setting':<34}{'base':>6}{'contr':>7}{'Δ base [95% CI]':>22}{'chg':>5}"
            + "".join(f"{c[:10]:>11}{'Δ [95% CI]':>20}" for c in controls))
    lines = [head]
    for row in t["row"].values:
        for setting in t["setting"].values:
            one = t.sel(row=row, setting=setting)
            lo, hi = (float(v) * 100 for v in one["gain_ci"].values)
            line = (f"{str(row):<22}{str(setting):<34}{float(one['baseline_accuracy']) * 100:>5.1f}%"
                    f"{float(one['contrastive_accuracy']) * 100:>6.1f}%"
                    f"{float(one['gain']) * 100:>+7.1f} [{lo:+5.1f},{hi:+5.1f}]{int(one['changed']):>5}")
            for c in controls:
                x = one.sel(control=c)
                clo, chi = (float(v) * 100 for v in x["difference_ci"].values)
                line += (f"{float(x['control_accuracy']) * 100:>10.1f}%"
                         f"{float(x['difference']) * 100:>+7.1f} [{clo:+5.1f},{chi:+5.1f}]")
            lines.append(line)
    return "\n".join(lines)


def prefixed(t: xr.Dataset, prefix: str) -> xr.Dataset:
    """A `table` ready to merge into the run dataset: its variables and its row dim get
    ``prefix``; its settings and controls become the dims ``table_setting`` / ``control``."""
    t = t.rename({v: f"{prefix}_{v}" for v in t.data_vars} | {"row": f"{prefix}_row"})
    return t.rename({"setting": "table_setting"})


def markdown(t: xr.Dataset) -> str:
    """The summary as a Markdown table: percentages, differences in points with their
    paired bootstrap 95% CIs (``*``: the paired test gives p < 0.05)."""
    controls = [str(c) for c in t["control"].values]

    def cell(diff, ci, p):
        lo, hi = (float(v) * 100 for v in ci)
        return f"{float(diff) * 100:+.1f} [{lo:+.1f}, {hi:+.1f}]{'*' if float(p) < 0.05 else ''}"

    head = ["dataset", "review", "mask at", "ρ", "λ", "baseline", "contrastive", "− baseline", "changed",
            *[f"− {c}" for c in controls]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t["row"].values:
        for setting in t["setting"].values:
            one = t.sel(row=row, setting=setting)
            review, mask_at, rho, lam = str(setting).split("|")
            lines.append("| " + " | ".join([
                str(row), review.removeprefix("review"), mask_at, rho.removeprefix("rho"), lam.removeprefix("lam"),
                f"{float(one['baseline_accuracy']) * 100:.1f}", f"{float(one['contrastive_accuracy']) * 100:.1f}",
                cell(one["gain"], one["gain_ci"].values, one["gain_p_value"]), str(int(one["changed"])),
                *[cell(one["difference"].sel(control=c), one["difference_ci"].sel(control=c).values,
                       one["p_value"].sel(control=c)) for c in controls]]) + " |")
    return "\n".join(lines)


def settings_from(args, model, chosen) -> list[dict]:
    axes = lists(args)
    reviews = [chosen.review] if not getattr(args, "reviews", None) else \
        [cli.layer_option(model, "--review", r) for r in cli.layer_list("--review", args.reviews)]
    return [dict(review=r, post=(chosen.post if r == chosen.review else r - 1), mask_at=m, rho=rho, lam=lam)
            for r, m, rho, lam in itertools.product(reviews, axes["mask_at"], axes["rho"], axes["lam"])]


def main(argv=None) -> xr.Dataset:
    from mech import plots

    from .layer_masking import sweep as masking_sweep

    parser = cli.parser("controls", __doc__)
    layer_choice.add_arguments(parser)
    parser.add_argument("--reviews", default=None,
                        help="comma-separated review layers to span (each with post = review - 1); default: "
                             "the given --review or the discovered one")
    parser.add_argument("--rho", default="0.2", help="comma-separated mask ratios in [0, 1] (default: 0.2)")
    parser.add_argument("--lam", default="0.1", help="comma-separated scales >= 0 for the masked tokens (default: 0.1)")
    parser.add_argument("--candidates", default="all",
                        help="candidate set for the pre-integrated layer: all, shallow or deep (default: all)")
    add_arguments(parser)
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the summary table as Markdown to this file")
    args = cli.parse(parser, argv)
    model, samples = inputs.start(args)
    if args.reviews:
        for r in cli.layer_list("--review", args.reviews):
            if r < 1:
                raise cli.UsageError(f"--reviews {args.reviews}: layer 0 has no post-integrated layer before it")
    options = inputs.run_options(args)
    masking = None if args.review is not None else masking_sweep(model, samples, out=args.out, seed=args.seed,
                                                                 **options)
    chosen = layer_choice.resolve(args, model, masking)
    settings = settings_from(args, model, chosen)
    named, meta = runs(settings, args.candidates, lists(args)["controls"], args.seeds)
    print(f"{model}; {len(settings)} setting(s) x {len(named) // len(settings)} runs; layers ({chosen.source}): "
          f"review {chosen.review}, post {chosen.post}")
    ds = evaluate(model, samples, named, meta, out=args.out, seed=args.seed, **options)
    summary = table(ds, args.seed)
    print(format_table(summary))
    by_type = table(ds, args.seed, by="question_type")
    if by_type.sizes["row"]:
        print(format_table(by_type, "dataset/type"))
    if args.markdown:
        from mech.store import atomic_write

        atomic_write(args.markdown, lambda tmp: tmp.write_text(markdown(summary) + "\n"))
    ds = ds.merge(prefixed(summary, "table"))
    if by_type.sizes["row"]:
        ds = ds.merge(prefixed(by_type, "type"))
    return output.finish(ds, args, model, "controls", lambda d: plots.controls(summary), candidates=args.candidates,
                         controls=lists(args)["controls"], seeds=args.seeds,
                         settings=json.dumps(settings), **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
