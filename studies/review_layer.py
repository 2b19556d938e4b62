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

from . import cli, inputs, output, controls, hellinger_profile, layers as layer_choice
from .layer_masking import sweep as masking_sweep
from .strategies import add_contrastive_arguments


def paired_table(ds: xr.Dataset, seed: int, dim: str = "intervention", coord="contrastive") -> xr.Dataset:
    """Per dataset (and ``average``): accuracy of baseline and contrastive (the run
    ``coord`` along ``dim``), difference with its paired bootstrap CI, and the paired-test
    p-value."""
    import mech

    table = mech.comparisons.paired_rows(ds, dim, coord, seed)
    table = table.rename(accuracy="contrastive_accuracy")
    table["difference_ci"].attrs["long_name"] = "paired bootstrap 95% CI of contrastive - baseline"
    return table


def format_table(table: xr.Dataset) -> str:
    lines = [f"{'':<10} {'baseline':>9} {'contrastive':>12} {'diff':>7}  {'95% CI':<16} {'p':>7}  n"]
    for row in table["row"].values:
        r = table.sel(row=row)
        lo, hi = (float(v) * 100 for v in r["difference_ci"].values)
        lines.append(f"{row:<10} {float(r['baseline_accuracy']) * 100:>8.1f}% "
                     f"{float(r['contrastive_accuracy']) * 100:>11.1f}% {float(r['difference']) * 100:>+6.1f}  "
                     f"[{lo:+.1f}, {hi:+.1f}]{'':<3} {float(r['p_value']):>7.3f}  {int(r['n_samples'])}")
    return "\n".join(lines)


def check_candidates(args) -> None:
    if args.candidates not in ("fusion", "all", "shallow", "deep"):
        raise cli.UsageError(f"--candidates {args.candidates}: use fusion, all, shallow or deep")


def main(argv=None) -> xr.Dataset:
    from mech import plots

    parser = cli.parser("review_layer", __doc__)
    add_contrastive_arguments(parser)
    parser.add_argument("--candidates", default="fusion",
                        help="candidate set for the pre-integrated layer: fusion (the discovered set S; "
                             "'all' when S has no layer below the post layer), all, shallow or deep "
                             "(default: fusion)")
    controls.add_arguments(parser, grid=False)
    parser.set_defaults(controls="random")
    cli.add_check(parser, check_candidates)
    args = cli.parse(parser, argv)
    model, samples = inputs.start(args)
    options = inputs.run_options(args)
    print(f"{model}; datasets: {', '.join(f'{k} ({len(v)})' for k, v in samples.items())}")

    print("1/4 layer-masking sweep")
    masking = masking_sweep(model, samples, out=args.out, seed=args.seed, **options)
    chosen = layer_choice.resolve(args, model, masking)
    marks = {"fusion": chosen.fusion, "review": chosen.review, "fallback": chosen.source == "fallback"}
    output.finish(masking, args, model, "layer_masking", lambda d: plots.layer_masking(d, marks), **chosen.attrs())
    print(f"2/4 layers ({chosen.source}): fusion S = {list(chosen.fusion)}, review layer {chosen.review}, "
          f"post-integrated layer {chosen.post}")
    if chosen.source != "given":  # how often a resample of the samples selects each discovered layer
        print(f"    {layer_choice.discover(masking, seed=args.seed).frequencies_text()}")
    print(f"    {chosen.reason}")
    by_type = layer_choice.discover_by_type(masking, seed=args.seed)
    for qtype, found in by_type.items():
        print(f"    {qtype:<8} fusion {list(found['fusion'])}, review "
              f"{found['review'] if found['review'] is not None else 'none'} (n={found['n']})")

    print("3/4 Hellinger profile")
    profile = hellinger_profile.profile(model, samples, out=args.out, **options)
    check = hellinger_profile.check(profile, post_layer=chosen.post, seed=args.seed)
    output.finish(profile, args, model, "hellinger_profile", plots.hellinger_profile, closest_layer=check.layer,
                  closest_reason=check.reason)
    print(f"    {check.reason}")

    candidates = args.candidates
    if candidates == "fusion":
        below = [l for l in chosen.fusion if l < chosen.post]
        candidates = below if below else "all"
        if not below:
            print(f"    the fusion set {list(chosen.fusion)} has no layer below the post-integrated layer "
                  f"{chosen.post}: using all layers below it as candidates")
    picked = controls.lists(args)["controls"]
    print(f"4/4 baseline vs contrastive attention and controls ({', '.join(picked)}); candidates {candidates}, "
          f"rho {args.rho}, lambda {args.lam}, mask at {args.mask_at}")
    setting = dict(review=chosen.review, post=chosen.post, mask_at=args.mask_at, rho=args.rho, lam=args.lam)
    named, meta = controls.runs([setting], candidates, picked, args.seeds)
    ds = controls.evaluate(model, samples, named, meta, out=args.out, seed=args.seed, **options)
    method = next(name for name, m in meta.items() if m["selection"] == "contrastive")
    table = paired_table(ds, args.seed, dim="run", coord=method)
    summary = controls.table(ds, args.seed)
    paired = table.rename({v: f"table1_{v}" for v in table.data_vars} | {"row": "table1_row"})
    ds = ds.merge(paired).merge(controls.prefixed(summary, "controls"))
    print(controls.format_table(summary))
    if len(table["row"]) > 2:
        print(format_table(table.sel(row=["average"])))
    return output.finish(ds, args, model, "review_layer", lambda d: plots.controls(summary), rho=args.rho,
                         lam=args.lam, mask_at=args.mask_at, candidates=candidates, controls=picked, seeds=args.seeds,
                         intervention=repr(named[method]), hellinger_closest_layer=check.layer,
                         hellinger_agrees=str(check.agrees), discovery_by_question_type=by_type, **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
