"""Hellinger profile of image attention (the paper's Fig. 5).

For each sample, A(i) — the last prompt token's attention to the image tokens at
decoder layer i, mean over heads, renormalised over the image tokens — is captured at
every layer in one pass, and H(A(i), A(final)) is its Hellinger distance to the final
layer's. The paper takes the layer whose attention is closest to the final one (the
minimum before the last layers) as the post-integrated layer; `mech.discovery.
min_hellinger_check` reports that layer and whether it agrees with the post-integrated layer in use.

Writes ``hellinger_profile.nc`` and ``hellinger_profile.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from . import cli, inputs, output


def attention_by_layer(record, layers) -> list[torch.Tensor]:
    """A(i) of one runner record, per layer (each ``[n_image]``)."""
    return [torch.tensor(record.extras[f"layer{layer}"]) for layer in layers]


def profile(model, samples_by_dataset: dict, *, out, heads: str = "mean", **run_options) -> xr.Dataset:
    """Dataset with ``hellinger`` over (dataset, layer, sample), in [0, 1]."""
    import mech
    from mech.contrastive import hellinger

    layers = list(range(model.n_layers))
    capture = mech.CaptureImageAttention(layers=layers, heads=heads)
    options = {**run_options, "max_new_tokens": 1}  # attention is read in the prefill
    runs = {}
    # a shard finishes every dataset it can before it stops (mech.parallel.each)
    swept = mech.parallel.each(samples_by_dataset, lambda name, samples: mech.sweep(
        model, samples, {f"capture-{heads}": capture}, out=mech.comparisons.chunk_folder(out, name), **options))
    for name, by_run in swept.items():
        results = by_run[f"capture-{heads}"]
        distances = []
        for record in results.records:
            attention = torch.stack(attention_by_layer(record, layers))  # [layer, n_image]
            distances.append(hellinger(attention, attention[-1:]).numpy())
        base = results.to_xarray()
        runs[name] = xr.Dataset(
            {"hellinger": (("layer", "sample"), np.stack(distances, -1))},
            coords={"layer": layers, "sample": base["sample"].values})
    ds = mech.comparisons.per_dataset(runs)
    ds["hellinger"].attrs.update(units="1", long_name="Hellinger distance of A(i) to A(final layer)")
    ds["layer"].attrs["long_name"] = "decoder layer i (0-based)"
    return ds


def check(ds: xr.Dataset, post_layer=None, seed: int = 0):
    """`mech.discovery.min_hellinger_check` on the samples pooled over datasets."""
    from mech.discovery import min_hellinger_check

    from .layers import pooled

    return min_hellinger_check(pooled(ds, "hellinger").transpose("layer", "sample"), post_layer=post_layer,
                               seed=seed)


def profile_table(ds: xr.Dataset):
    """Mean Hellinger distance (and its 25-75% spread) per layer and dataset."""
    from .tables import Table, number

    datasets = [str(d) for d in ds["dataset"].values]
    n = {d: int(ds["is_sample"].sel(dataset=d).sum()) for d in datasets}
    t = Table(["layer i", *[f"{d} H (n={n[d]})" for d in datasets], *[f"{d} 25-75%" for d in datasets]],
              numeric=set(range(1 + 2 * len(datasets))), legend=["H"])
    for layer in ds["layer"].values:
        h = {d: ds["hellinger"].sel(dataset=d, layer=layer).values[ds["is_sample"].sel(dataset=d).values]
             for d in datasets}
        t.add(int(layer), *[number(np.nanmean(h[d])) for d in datasets],
              *[f"{np.nanpercentile(h[d], 25):.3f}-{np.nanpercentile(h[d], 75):.3f}" for d in datasets])
    return t


def format_table(ds) -> str:
    return profile_table(ds).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``hellinger_profile.nc``."""
    table = profile_table(ds)
    table.title = "Hellinger distance to the final layer's attention"
    return [table]


def main(argv=None) -> xr.Dataset:
    from mech import plots, progress

    from .options import HEADS, HELP

    parser = cli.parser("hellinger_profile", __doc__)
    parser.add_argument("--heads", default="mean", choices=HEADS, help=HELP["--heads"][1])
    args = cli.parse(parser, argv)
    model, samples = inputs.start(args)
    with progress.phase("image attention at every layer"):
        ds = profile(model, samples, out=args.out, heads=args.heads, **inputs.run_options(args))
    found = check(ds, seed=args.seed)
    print(format_table(ds))
    print(found.reason)
    return output.finish(ds, args, model, "hellinger_profile", plots.hellinger_profile, heads=args.heads,
                         closest_layer=found.layer, closest_reason=found.reason)


if __name__ == "__main__":
    cli.cli(main)
