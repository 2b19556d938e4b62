"""Mask-ratio sweep (the paper's Fig. 7).

Contrastive attention at the review layer with the mask ratio rho from 0 (nothing
scaled) to 1 (every image token but the top-scoring one scaled by lambda); accuracy
and 1/t per ratio and dataset, beside the unmodified model.

Writes ``mask_ratio.nc`` and ``mask_ratio.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import xarray as xr

from . import cli, inputs, output
from .strategies import add_contrastive_arguments, setup


def sweep(model, samples_by_dataset: dict, chosen, *, out, ratios, lam: float, candidates="all",
          seed: int = 0, **run_options) -> xr.Dataset:
    import mech

    named = {float(r): mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates=candidates,
                                            rho=float(r), lam=lam) for r in ratios}
    ds = mech.comparisons.compare(model, samples_by_dataset, named, "ratio", out=out, seed=seed, **run_options)
    ds["ratio"].attrs.update(units="fraction", long_name="mask ratio rho (quantile of contrastive scores)")
    return ds


def ratios(args) -> list[float]:
    """--ratios as numbers in [0, 1], or a UsageError naming the bad one."""
    items = [r.strip() for r in args.ratios.split(",") if r.strip()]
    if not items:
        raise cli.UsageError(f"--ratios {args.ratios!r}: give comma-separated mask ratios in [0, 1]")
    values = [cli.number_option("--ratios", r, low=0, high=1, meaning="mask ratios") for r in items]
    if len(set(values)) != len(values):
        raise cli.UsageError(f"--ratios {args.ratios}: a ratio is given twice")
    return values


def main(argv=None) -> xr.Dataset:
    parser = cli.parser("mask_ratio", __doc__)
    add_contrastive_arguments(parser)
    parser.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                        help="comma-separated mask ratios in [0, 1]")
    cli.add_check(parser, ratios)
    args = cli.parse(parser, argv)
    model, samples, chosen = setup(args)
    ds = sweep(model, samples, chosen, out=args.out, ratios=ratios(args), lam=args.lam, seed=args.seed,
               **inputs.run_options(args))
    from mech import plots

    print((ds["accuracy"].to_pandas() * 100).round(1).to_string())
    return output.finish(ds, args, model, "mask_ratio", plots.mask_ratio, lam=args.lam, candidates="all",
                         **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
