"""Candidate strategies for the pre-integrated layer (the paper's Table 3).

Contrastive attention at the review layer with the pre-integrated layer chosen from
the candidate sets of ``--candidates`` (default all four): all layers below the
post-integrated layer, the shallow half, the deep half, and the fusion set S from the
layer-masking sweep. Accuracy per
strategy and dataset, with bootstrap CIs, beside the unmodified model.

Writes ``strategies.nc`` and ``strategies.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import json

import xarray as xr

from . import cli, inputs, options, output, layers as layer_choice

STRATEGIES = ("all", "shallow", "deep", "fusion")


def candidate_sets(model, chosen: layer_choice.Layers, names=STRATEGIES) -> dict:
    """``{strategy: candidates}`` for ``names``; a strategy with no layer below ``post`` is left out."""
    from mech.contrastive import candidate_layers

    sets = {}
    for name in names:
        spec = [l for l in chosen.fusion if l < chosen.post] if name == "fusion" else name
        try:
            sets[name] = list(candidate_layers(spec, model.n_layers, chosen.post))
        except ValueError:
            continue
    return sets


def evaluate(model, samples_by_dataset: dict, chosen, *, out, rho: float, lam: float, seed: int = 0,
             strategies=STRATEGIES, mask_at: str | None = None, heads: str = "mean", **run_options) -> xr.Dataset:
    import mech

    sets = candidate_sets(model, chosen, strategies)
    if "fusion" in strategies and "fusion" not in sets:
        print(f"    fusion strategy left out: the fusion set {list(chosen.fusion)} has no layer below the "
              f"post-integrated layer {chosen.post}")
    where = {} if mask_at is None else {"mask_at": mask_at}
    named = {name: mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates=layers,
                                        rho=rho, lam=lam, heads=heads, **where) for name, layers in sets.items()}
    ds = mech.comparisons.compare(model, samples_by_dataset, named, "strategy", out=out, seed=seed, **run_options)
    ds["strategy"].attrs["long_name"] = "candidate set for the pre-integrated layer"
    ds.attrs["candidate_sets"] = json.dumps(sets)
    ds.attrs["strategies_left_out"] = json.dumps(
        {name: "no layer below the post-integrated layer" for name in strategies if name not in sets})
    return ds


def strategy_table(ds: xr.Dataset):
    """Accuracy per candidate set and dataset, the unmasked model first."""
    from .tables import Table, percent

    sets = json.loads(ds.attrs.get("candidate_sets", "{}"))
    datasets = [str(d) for d in ds["dataset"].values]
    t = Table(["candidate set", "layers", *[f"{d} (%)" for d in datasets]], numeric=set(range(2, 2 + len(datasets))),
              legend=["accuracy in percent on the same samples; the contrastive runs differ only in the candidate "
                      "set for the pre-integrated layer"])
    t.add("no intervention", "", *[percent(ds["baseline_accuracy"].sel(dataset=d)) for d in datasets])
    for s in ds["strategy"].values:
        t.add(str(s), ",".join(map(str, sets.get(str(s), []))),
              *[percent(ds["accuracy"].sel(dataset=d, strategy=s)) for d in datasets])
    return t


def format_table(ds) -> str:
    return strategy_table(ds).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``strategies.nc``."""
    table = strategy_table(ds)
    table.title = "Accuracy by candidate set"
    return [table]


def main(argv=None) -> xr.Dataset:
    from mech import plots, progress

    parser = cli.parser("strategies", __doc__)
    options.add_contrastive(parser, grid=("--candidates",), defaults={"candidates": ",".join(STRATEGIES)})
    args = cli.parse(parser, argv)
    model, samples, chosen = layer_choice.setup(args)
    with progress.phase("2/2 contrastive attention per candidate set"):
        print("2/2 contrastive attention per candidate set")
        ds = evaluate(model, samples, chosen, out=args.out, rho=args.rho, lam=args.lam, seed=args.seed,
                      strategies=args.candidates, mask_at=args.mask_at, heads=args.heads, **inputs.run_options(args))
    print(format_table(ds))
    return output.finish(ds, args, model, "strategies", plots.strategies, rho=args.rho, lam=args.lam,
                         mask_at=args.mask_at, heads=args.heads, **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
