"""Candidate strategies for the pre-integrated layer (the paper's Table 3).

Contrastive attention at the review layer with the pre-integrated layer chosen from
four candidate sets: all layers below the post-integrated layer, the shallow half,
the deep half, and the fusion set S from the layer-masking sweep. Accuracy per
strategy and dataset, with bootstrap CIs, beside the unmodified model.

Writes ``strategies.nc`` and ``strategies.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import json

import xarray as xr

from . import cli, inputs, output, layers as layer_choice
from .layer_masking import sweep as masking_sweep


def add_contrastive_arguments(parser) -> None:
    layer_choice.add_arguments(parser)
    parser.add_argument("--rho", type=float, default=0.2, help="mask ratio: quantile of contrastive scores "
                        "below which image tokens are scaled (default: 0.2, the paper's best)")
    parser.add_argument("--lam", type=float, default=0.1, help="scale for low-score image tokens "
                        "(default: 0.1; the paper does not publish it)")
    cli.add_check(parser, check_rho_lam)


def check_rho_lam(args) -> None:
    cli.number_option("--rho", args.rho, low=0, high=1,
                         meaning="the quantile of contrastive scores below which tokens are scaled")
    cli.number_option("--lam", args.lam, low=0, meaning="0 removes low-score tokens, 1 leaves them")


def candidate_sets(model, chosen: layer_choice.Layers) -> dict:
    """``{strategy: candidates}``; a strategy with no layer below ``post`` is left out."""
    from mech.contrastive import candidate_layers

    sets = {}
    for name, spec in (("all", "all"), ("shallow", "shallow"), ("deep", "deep"),
                       ("fusion", [l for l in chosen.fusion if l < chosen.post])):
        try:
            sets[name] = list(candidate_layers(spec, model.n_layers, chosen.post))
        except ValueError:
            continue
    return sets


def evaluate(model, samples_by_dataset: dict, chosen, *, out, rho: float, lam: float, seed: int = 0,
             **run_options) -> xr.Dataset:
    import mech

    sets = candidate_sets(model, chosen)
    if "fusion" not in sets:
        print(f"    fusion strategy left out: the fusion set {list(chosen.fusion)} has no layer below the "
              f"post-integrated layer {chosen.post}")
    named = {name: mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates=layers,
                                        rho=rho, lam=lam) for name, layers in sets.items()}
    ds = mech.comparisons.compare(model, samples_by_dataset, named, "strategy", out=out, seed=seed, **run_options)
    ds["strategy"].attrs["long_name"] = "candidate set for the pre-integrated layer"
    ds.attrs["candidate_sets"] = json.dumps(sets)
    ds.attrs["strategies_left_out"] = json.dumps(
        {name: "no layer below the post-integrated layer" for name in ("all", "shallow", "deep", "fusion")
         if name not in sets})
    return ds


def setup(args):
    """Model, samples and layers for a contrastive study (discovering layers if needed);
    every option is checked before the first generation."""
    model, samples = inputs.start(args)
    masking = None
    if args.review is None or args.fusion is None:
        masking = masking_sweep(model, samples, out=args.out, seed=args.seed, **inputs.run_options(args))
    return model, samples, layer_choice.resolve(args, model, masking)


def main(argv=None) -> xr.Dataset:
    parser = cli.parser("strategies", __doc__)
    add_contrastive_arguments(parser)
    args = cli.parse(parser, argv)
    model, samples, chosen = setup(args)
    ds = evaluate(model, samples, chosen, out=args.out, rho=args.rho, lam=args.lam, seed=args.seed,
                  **inputs.run_options(args))
    from mech import plots

    print(f"layers ({chosen.source}): review {chosen.review}, post {chosen.post}, fusion {list(chosen.fusion)}")
    table = ds["accuracy"].to_pandas() * 100
    table["no intervention"] = ds["baseline_accuracy"].to_pandas() * 100
    print(table.round(1).to_string())
    return output.finish(ds, args, model, "strategies", plots.strategies, rho=args.rho, lam=args.lam,
                         **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
