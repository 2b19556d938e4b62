"""The paper's Table 2: contrastive attention beside training-free baselines.

On the same samples: the plain model (greedy), DoLa (contrasting early-exit layers,
`mech.DoLa`), ViCrop (relative-attention crop added as a second image, `mech.ViCrop`)
and contrastive attention (`mech.ContrastiveMask` at the given or discovered layers).
Accuracy per dataset with percentile-bootstrap 95% CIs; each method against the plain
model with the paired bootstrap CI of the difference and the p-value of the same
bootstrap.

Writes ``baselines.nc`` (dims dataset x system x sample; ``system`` is
dola / vicrop / contrastive, the plain model is ``baseline_*``), ``baselines.png/.pdf``
and prints the four-row table. DoLa's premature-layer histogram is kept as
``dola_premature_count`` (dataset x premature_layer).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import cli, inputs, options, output, layers as layer_choice

SYSTEMS = {"dola": "DoLa", "vicrop": "ViCrop", "contrastive": "contrastive attention"}


def add_arguments(parser) -> None:
    options.add_contrastive(parser, defaults={"candidates": "fusion"})
    parser.add_argument("--dola-layers", default="high",
                        help="DoLa candidate premature layers: high, low, or comma-separated hidden-state "
                             "indices (0 = embeddings) (default: %(default)s)")
    parser.add_argument("--repetition-penalty", type=float, default=1.2,
                        help="DoLa's repetition penalty, 1 turns it off (default: %(default)s, DoLa's recommendation)")
    parser.add_argument("--vicrop-layer", type=int, default=None,
                        help="ViCrop attention layer (default: layer 14 of 32 at the same relative depth)")
    parser.add_argument("--vicrop-crop-size", type=int, default=None,
                        help="ViCrop crop side at ratio 1, in original pixels (default: the vision tower's "
                             "input size, as ViCrop; images no larger than that are kept whole)")
    cli.add_check(parser, check_options)
    cli.add_check(parser, check_decoders, needs_model=True)


def dola_layers(args):
    if args.dola_layers in ("low", "high"):
        return args.dola_layers
    try:
        return tuple(int(x) for x in args.dola_layers.split(","))
    except ValueError:
        raise cli.UsageError(f"--dola-layers {args.dola_layers}: use high, low or comma-separated hidden-state "
                                "indices (0 = embeddings), e.g. 16,18,20") from None


def check_options(args) -> None:
    if args.remote:
        raise cli.UsageError("--remote: DoLa and ViCrop run their own decoding loops locally; drop --remote")
    dola_layers(args)
    cli.number_option("--repetition-penalty", args.repetition_penalty, low=0, low_open=True,
                         meaning="1 turns it off; DoLa recommends 1.2")
    if args.vicrop_crop_size is not None and args.vicrop_crop_size < 1:
        raise cli.UsageError(f"--vicrop-crop-size {args.vicrop_crop_size}: give a positive number of pixels")


def check_decoders(args, model) -> None:
    import mech

    for option, make in (("--dola-layers", lambda: mech.DoLa(layers=dola_layers(args),
                                                             repetition_penalty=args.repetition_penalty)),
                         ("--vicrop-layer", lambda: mech.ViCrop(layer=args.vicrop_layer,
                                                                crop_size=args.vicrop_crop_size))):
        if option == "--vicrop-layer" and not mech.ViCrop.applies_to(model) and args.vicrop_layer is None \
                and args.vicrop_crop_size is None:
            continue  # not run on this family (systems), unless asked for by an option
        try:
            make().validate(model)
        except ValueError as error:
            value = getattr(args, option[2:].replace("-", "_"))
            raise cli.UsageError(f"{option} {value}: {error}") from None


def systems(args, model, chosen) -> dict:
    """``{system: Decoder or intervention}`` for the three methods."""
    import mech

    layers = dola_layers(args)
    named = {
        "dola": mech.DoLa(layers=layers, repetition_penalty=args.repetition_penalty),
        "vicrop": mech.ViCrop(layer=args.vicrop_layer, crop_size=args.vicrop_crop_size),
        "contrastive": mech.ContrastiveMask(review=chosen.review, post=chosen.post,
                                            candidates=options.candidates_for(args.candidates, chosen.fusion,
                                                                              chosen.post),
                                            rho=args.rho, lam=args.lam, mask_at=args.mask_at, heads=args.heads),
    }
    if not mech.ViCrop.applies_to(model):  # LLaVA-1.5's patch grid only: left out, and said so
        del named["vicrop"]
    return named


def table(ds: xr.Dataset, seed: int) -> xr.Dataset:
    """Each system against the plain model: `mech.comparisons.paired_rows` stacked along ``system``."""
    import mech

    rows = [mech.comparisons.paired_rows(ds, "system", s, seed) for s in ds["system"].values]
    baseline = rows[0]["baseline_accuracy"]
    stacked = xr.concat([r.drop_vars("baseline_accuracy") for r in rows], dim=ds["system"])
    stacked["baseline_accuracy"] = baseline
    return stacked.rename({v: f"table_{v}" for v in ("accuracy", "baseline_accuracy", "n_samples")})


def methods_table(t: xr.Dataset):
    """The paper's Table 2: accuracy per dataset for the unmasked model and each method,
    then each method against the unmasked model on the last row (a dataset, or the
    average) with Δ, its CI and p."""
    from .tables import Table, interval, p_value, percent, points

    rows = [str(r) for r in t["row"].values]
    last = rows[-1]
    table = Table(["method", *[f"{r} (%)" for r in rows], f"Δ {last}", "95% CI", "p"],
                  numeric=set(range(1, len(rows) + 4)) - {len(rows) + 2}, legend=["Δ", "95% CI", "p"],
                  note="average: the mean of the dataset accuracies; its CI and p pool the samples"
                  if last == "average" else "")
    table.add("no intervention", *[percent(t["table_baseline_accuracy"].sel(row=r)) for r in rows], "", "", "")
    for s in t["system"].values:
        one = t.sel(system=s)
        table.add(SYSTEMS.get(str(s), str(s)), *[percent(one["table_accuracy"].sel(row=r)) for r in rows],
                  points(one["difference"].sel(row=last)), interval(*one["difference_ci"].sel(row=last).values),
                  p_value(one["p_value"].sel(row=last)))
    return table


def format_table(t) -> str:
    return methods_table(t).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``baselines.nc``."""
    table = methods_table(ds)
    table.title = "Training-free methods (the paper's Table 2)"
    return [table]


def dola_histogram(model, samples_by_dataset, dola, out, **run_options) -> xr.DataArray:
    """How often DoLa chose each premature layer, per dataset (finished chunks are reused)."""
    import mech

    candidates = list(dola.candidates(model))
    counts = []
    for name, samples in samples_by_dataset.items():
        folder = mech.comparisons.chunk_folder(out, name) / mech.runner.slug(dola)
        ds = mech.run(model, samples, decoder=dola, out=folder, **run_options).to_xarray()
        counts.append(ds["extra_premature_counts"].sum("sample").values)
    da = xr.DataArray(np.array(counts, dtype=int), dims=("dataset", "premature_layer"),
                      coords={"dataset": list(samples_by_dataset), "premature_layer": candidates})
    da.attrs["long_name"] = ("generated tokens for which DoLa chose this premature layer "
                             "(hidden-state index: 0 = embeddings, j = output of decoder layer j - 1)")
    return da


def main(argv=None) -> xr.Dataset:
    import mech
    from mech import plots, progress

    parser = cli.parser("baselines", __doc__)
    add_arguments(parser)
    args = cli.parse(parser, argv)
    model, samples, chosen = layer_choice.setup(args)
    run = inputs.run_options(args)
    named = systems(args, model, chosen)
    title = f"2/2 the unmasked model, {', '.join(SYSTEMS[s] for s in named)}"
    print(f"{model}; datasets: {', '.join(f'{k} ({len(v)})' for k, v in samples.items())}"
          + ("" if "vicrop" in named else f"; ViCrop not run (LLaVA-1.5 only, not {model.family.name})") + f"\n{title}")
    with progress.phase(title):
        ds = mech.comparisons.compare(model, samples, named, "system", out=args.out, seed=args.seed, **run)
        ds["dola_premature_count"] = dola_histogram(model, samples, named["dola"], args.out, **run)
    ds["system"].attrs["long_name"] = "method compared with the plain model (baseline_*)"
    t = table(ds, args.seed)
    ds = ds.merge(t, compat="no_conflicts")
    ds.attrs.update(output.provenance(
        args, model, study="baselines", rho=args.rho, lam=args.lam, mask_at=args.mask_at, heads=args.heads,
        dola=repr(named["dola"]), dola_candidates=list(named["dola"].candidates(model)),
        **({"vicrop": repr(named["vicrop"]), "vicrop_layer": named["vicrop"].attention_layer(model)}
           if "vicrop" in named else {"vicrop": f"not run: ViCrop applies to LLaVA-1.5 only, not {model.family.name}"}),
        contrastive=repr(named["contrastive"]), **chosen.attrs()))
    print(format_table(t))
    output.publish(ds, args, "baselines", plots.baselines)
    return ds


if __name__ == "__main__":
    cli.cli(main)
