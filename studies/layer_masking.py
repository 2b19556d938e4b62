"""Layer-wise zero-masking of image tokens (the paper's Fig. 2/3).

For every decoder layer L, the hidden states of all image tokens are set to zero at
the input of L during the prefill, and the benchmark is answered again; accuracy and
1/t (inverse generate time) per (dataset, layer), with the unmasked baseline and
percentile-bootstrap 95% CIs. A sharp accuracy drop at L marks a fusion layer; a
sharp drop deep in the stack after a flat stretch marks the review layer.

Writes ``layer_masking.nc`` and ``layer_masking.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import xarray as xr

from . import cli, inputs, output


def sweep(model, samples_by_dataset: dict, *, out, layers=None, seed: int = 0, fast: bool | str = True,
          **run_options) -> xr.Dataset:
    """Run the masking sweep; returns the study Dataset (see `mech.comparisons.compare`), with the
    run dim ``layer``: the 0-based decoder layer whose input image tokens are zeroed.

    ``fast`` (default): the runs share one clean prefill per batch (`mech.zero_mask_sweep`;
    same predictions and chunk files as naive runs, ``timing="sweep"`` seconds);
    ``fast="shared"`` also computes the zeroed image rows once for the run
    (`mech.ImageRowTemplates`; equal to naive up to floating-point summation order; its own
    chunks); remote runs are always naive."""
    import mech

    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    named = {layer: mech.ZeroImage(layer=layer) for layer in layers}
    ds = mech.comparisons.compare(model, samples_by_dataset, named, "layer", out=out, seed=seed, fast=fast,
                        **run_options)
    ds["layer"].attrs["long_name"] = "decoder layer whose input image tokens are zeroed (0-based)"
    return ds


def check_sweep(args) -> None:
    if args.naive_sweep and args.share_image_rows:
        raise cli.UsageError("--naive-sweep and --share-image-rows exclude each other: pick one way to run "
                                "the sweep")


def masking_table(ds: xr.Dataset):
    """Accuracy (with its CI), changed predictions and 1/t per masked layer and dataset,
    the unmasked model first."""
    from .tables import Table, accuracy_interval, number, percent

    timing = ds["inverse_time"].attrs.get("timing", "")
    t = Table(["dataset", "masked at", "accuracy", "acc 95% CI", "changed", "1/t (1/s)"], numeric={1, 2, 3, 4, 5},
              legend=["masked at L: the image tokens zeroed at the input of decoder layer L (prefill); none: the "
                      "unmasked model", "acc CI", "changed: predictions that differ from the unmasked model's", "1/t"],
              note="1/t with the clean prefill shared (the default sweep): a layer's time covers only layers >= L, "
                   "so it is not a standalone 1/t (--naive-sweep gives that)" if "sweep" in timing else "")
    for d in ds["dataset"].values:
        one = ds.sel(dataset=d)
        t.add(str(d), "none", percent(one["baseline_accuracy"]), accuracy_interval(*one["baseline_accuracy_ci"].values),
              "", number(one["baseline_mean_inverse_time"], 2))
        for layer in one["layer"].values:
            x = one.sel(layer=layer)
            t.add("", int(layer), percent(x["accuracy"]), accuracy_interval(*x["accuracy_ci"].values),
                  int(x["changed"]), number(x["mean_inverse_time"], 2))
        t.gap()
    return t


def format_table(ds) -> str:
    return masking_table(ds).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``layer_masking.nc``."""
    table = masking_table(ds)
    table.title = "Accuracy and 1/t by masked layer"
    return [table]


def main(argv=None) -> xr.Dataset:
    from mech import progress

    p = cli.parser("layer_masking", __doc__)
    p.add_argument("--naive-sweep", action="store_true",
                   help="one full generate per layer (1/t of a standalone masked run) instead of "
                        "sharing the clean prefill")
    p.add_argument("--share-image-rows", action="store_true",
                   help="also compute the zeroed image rows of layers >= L once for the whole run "
                        "instead of once per sample (up to 4 GiB of them kept): about half the work "
                        "again at 8 layers; predictions equal to the naive "
                        "runs', scores up to floating-point summation order (not bitwise); kept in "
                        "chunks of their own")
    cli.add_check(p, check_sweep)
    args = cli.parse(p, argv)
    model, samples = inputs.start(args)
    fast = False if args.naive_sweep else "shared" if args.share_image_rows else True
    with progress.phase("layer-masking sweep"):
        ds = sweep(model, samples, out=args.out, seed=args.seed, fast=fast, **inputs.run_options(args))
    from mech import plots

    print(format_table(ds))
    return output.finish(ds, args, model, "layer_masking", plots.layer_masking,
                         intervention="ZeroImage(layer=L, at='input') during prefill",
                         sweep={False: "naive: one full generate per layer",
                                True: "bitwise exact: clean prefill shared, layers >= L recomputed",
                                "shared": "clean prefill and zeroed image rows shared across the batch "
                                          "(equal to naive up to floating-point summation order)"}[fast])


if __name__ == "__main__":
    cli.cli(main)
