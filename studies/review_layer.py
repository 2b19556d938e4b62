"""The main job: find where the model fuses vision into language, then refine it.

1. Layer-masking sweep: zero the image tokens at the input of every decoder layer.
2. Discover the fusion layers S, the review layer and the post-integrated layer from
   significant accuracy drops (`mech.discovery.discover_layers`; when no review layer
   is found it says so and falls back to the paper's review layer at its relative depth,
   at least three from the end, labelled).
3. Check the post-integrated layer against the Hellinger profile (Fig. 5): the layer
   whose image attention is closest to the final layer's.
4. Evaluate the model with and without contrastive attention at those layers on the
   same samples, beside the random control (as many tokens scaled, at random slots,
   averaged over ``--seeds``): accuracy per dataset and on average (the paper's Table 1
   row), the paired bootstrap 95% CI of each difference, a paired test (McNemar for 0/1
   scores, paired bootstrap for soft scores), and how many predictions change.

Layers are also discovered per question type (where samples have one); the default
datasets are the clean shapes test set and a cluttered one (distractor dots), which
gives the method errors to fix.

Defaults run offline on the embedded tiny model and the shapes set. Everything lands
under ``--out`` (default ``runs/``): ``review_layer.nc``, ``layer_masking.nc``,
``hellinger_profile.nc`` and their figures; finished generation chunks are reused.
"""

from __future__ import annotations

import xarray as xr

from . import cli, inputs, options, output, controls, hellinger_profile, layers as layer_choice
from .layer_masking import sweep as masking_sweep


def paired_table(ds: xr.Dataset, seed: int, dim: str = "intervention", coord="contrastive") -> xr.Dataset:
    """Per dataset (and ``average``): accuracy of baseline and contrastive (the run
    ``coord`` along ``dim``), difference with its paired bootstrap CI, and the p-value of
    the same bootstrap."""
    import mech

    table = mech.comparisons.paired_rows(ds, dim, coord, seed)
    table = table.rename(accuracy="contrastive_accuracy")
    table["difference_ci"].attrs["long_name"] = "paired bootstrap 95% CI of contrastive - baseline"
    return table


def format_table(table: xr.Dataset) -> str:
    return table1(table).text()


def report_tables(ds: xr.Dataset) -> list:
    """The tables `studies.report` shows for a saved ``review_layer.nc``."""
    seeds = int(ds.attrs["seeds"]) if "seeds" in ds.attrs else None
    first = controls.summary_table(controls.unprefixed(ds, "controls"), seeds=seeds)
    first.title = "No intervention vs contrastive attention and the controls"
    t1 = ds[[v for v in ds.data_vars if v.startswith("table1_")]]
    t1 = t1.rename({v: v.removeprefix("table1_") for v in t1.data_vars} | {"table1_row": "row"})
    second = table1(t1)
    second.title = "The paper's Table 1 row"
    return [first, second]


def table1(table: xr.Dataset):
    """The paper's Table 1 row: per dataset (and the average), the unmasked model and
    contrastive attention, Δ with its CI and p, n."""
    from .tables import Table, interval, p_value, percent, points

    t = Table(["dataset", "no intervention", "contrastive", "Δ", "95% CI", "p", "n"], numeric={1, 2, 3, 5, 6},
              legend=["Δ", "95% CI", "p", "n"],
              note="average: the mean of the dataset accuracies; its CI and p pool the samples"
              if "average" in table["row"].values else "")
    for row in table["row"].values:
        r = table.sel(row=row)
        t.add(str(row), percent(r["baseline_accuracy"]), percent(r["contrastive_accuracy"]), points(r["difference"]),
              interval(*r["difference_ci"].values), p_value(r["p_value"]), int(r["n_samples"]))
    return t


def main(argv=None) -> xr.Dataset:
    from mech import plots, progress

    parser = cli.parser("review_layer", __doc__)
    options.add_contrastive(parser, defaults={"candidates": "fusion"})
    controls.add_arguments(parser, default="random")
    args = cli.parse(parser, argv)
    model, samples = inputs.start(args)
    run = inputs.run_options(args)
    print(f"{model}; datasets: {', '.join(f'{k} ({len(v)})' for k, v in samples.items())}")

    print("1/4 layer-masking sweep")
    with progress.phase("1/4 layer-masking sweep"):
        masking = masking_sweep(model, samples, out=args.out, seed=args.seed, **run)
    chosen = layer_choice.resolve(args, model, masking)
    marks = {"fusion": chosen.fusion, "review": chosen.review, "fallback": chosen.source == "fallback"}
    output.finish(masking, args, model, "layer_masking", lambda d: plots.layer_masking(d, marks), **chosen.attrs())
    print("2/4 " + "\n".join(chosen.lines()))
    by_type = layer_choice.discover_by_type(masking, seed=args.seed)
    if by_type:
        print("    by question type:\n" + "\n".join(layer_choice.by_type_lines(by_type)))

    print("3/4 Hellinger profile")
    with progress.phase("3/4 Hellinger profile"):
        profile = hellinger_profile.profile(model, samples, out=args.out, heads=args.heads, **run)
    check = hellinger_profile.check(profile, post_layer=chosen.post, seed=args.seed)
    output.finish(profile, args, model, "hellinger_profile", plots.hellinger_profile, heads=args.heads,
                  closest_layer=check.layer, closest_reason=check.reason)
    print(f"    {check.reason}")

    candidates = options.candidates_for(args.candidates, chosen.fusion, chosen.post)
    if args.candidates == "fusion" and candidates == "all":
        print(f"    the fusion set {list(chosen.fusion)} has no layer below the post-integrated layer "
              f"{chosen.post}: using all layers below it as candidates")
    picked = controls.lists(args)["controls"]
    title = (f"4/4 no intervention vs contrastive attention and controls ({', '.join(picked)}): candidates "
             f"{candidates}, ρ {args.rho:g}, λ {args.lam:g}, mask at {args.mask_at}")
    print(title)
    setting = dict(review=chosen.review, post=chosen.post, mask_at=args.mask_at, rho=args.rho, lam=args.lam)
    named, meta = controls.runs([setting], candidates, picked, args.seeds, heads=args.heads)
    with progress.phase(title.split(":")[0]):
        ds = controls.evaluate(model, samples, named, meta, out=args.out, seed=args.seed, **run)
    method = next(name for name, m in meta.items() if m["selection"] == "contrastive")
    table = paired_table(ds, args.seed, dim="run", coord=method)
    summary = controls.table(ds, args.seed)
    paired = table.rename({v: f"table1_{v}" for v in table.data_vars} | {"row": "table1_row"})
    ds = ds.merge(paired).merge(controls.prefixed(summary, "controls"))
    print(controls.format_table(summary, seeds=args.seeds))
    if len(table["row"]) > 2:
        print("\naverage over the datasets (the paper's Table 1 row)\n" + format_table(table.sel(row=["average"])))
    return output.finish(ds, args, model, "review_layer", lambda d: plots.controls(summary, d.attrs), rho=args.rho,
                         lam=args.lam, mask_at=args.mask_at, heads=args.heads, candidates=candidates,
                         controls=picked, seeds=args.seeds, intervention=repr(named[method]),
                         hellinger_closest_layer=check.layer, hellinger_agrees=str(check.agrees),
                         discovery_by_question_type=by_type, **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
