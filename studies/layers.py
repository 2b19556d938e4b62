"""Which layers a contrastive study uses: given on the command line, or discovered.

Discovery runs the layer-masking sweep (reusing finished chunks) and applies
`mech.discovery.discover_layers` to the per-sample scores pooled over datasets. When
no review layer is found, the study says so and falls back to the paper's review layer
at its relative depth, at least three from the end (`mech.default_review_layer`: 29 of
32, 25 of 28, 5 of 8), labelled
``"fallback"`` everywhere it is used.

How settled the discovered layers are is said with them (`Layers.lines`): how often each
is selected over bootstrap resamples of the samples (`mech.discovery`), and, when the
answer is not stable, that it is the sample size speaking (with ``n``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class Layers:
    fusion: tuple[int, ...]
    review: int
    post: int
    source: str     # "given", "discovered" or "fallback"
    reason: str
    discovery: object = field(default=None, compare=False, repr=False)  # the LayerDiscovery, when run

    def frequencies(self) -> dict:
        """How often the discovery selects each layer over bootstrap resamples ({} when not run)."""
        d = self.discovery
        if d is None or not d.fusion_frequency:
            return {}
        a = d.stats.attrs
        return {"n_samples": int(a["n_samples"]), "n_bootstrap": int(a["n_bootstrap"]),
                "fusion": {str(k): round(v, 4) for k, v in d.fusion_frequency.items() if v > 0},
                "review": {str(k): round(v, 4) for k, v in d.review_frequency.items() if v > 0},
                "no_review": round(float(a["no_review_frequency"]), 4),
                "this_answer": round(float(a["answer_frequency"]), 4), "stable": bool(a["stable"])}

    def attrs(self) -> dict:
        out = {"fusion_layers": list(self.fusion), "review_layer": self.review, "post_layer": self.post,
               "layers_source": self.source, "layers_reason": self.reason}
        if self.frequencies():
            out["discovery_frequencies"] = self.frequencies()
        return out

    def lines(self) -> list[str]:
        """What a study prints about its layers: the answer, then how settled it is."""
        out = [f"layers ({self.source}): fusion S = {{{', '.join(map(str, self.fusion))}}}, review layer "
               f"{self.review}, post-integrated layer {self.post}"]
        f = self.frequencies()
        if f:
            share = lambda x: f"{100 * x:.0f}%"
            found = self.discovery
            over = f" of {f['n_bootstrap']:,} resamples of the {f['n_samples']:,} samples"
            text = (f"    S = {{{', '.join(map(str, found.fusion_layers))}}} — selected in "
                    + ", ".join(share(found.fusion_frequency[L]) for L in found.fusion_layers) + over
                    if found.fusion_layers else
                    f"    S = {{}} — no layer is a fusion layer in more than "
                    f"{share(max(found.fusion_frequency.values(), default=0))}" + over)
            if self.source != "given":
                text += (f"; review layer {found.review_layer} — {share(found.review_frequency[found.review_layer])}"
                         if found.review_layer is not None else f"; no review layer — {share(f['no_review'])}")
            text += f"; this exact answer {share(f['this_answer'])}" + ("" if f["stable"] else
                                                                         f" (not stable at n = {f['n_samples']:,})")
            out.append(text)
        if self.source != "given":
            import textwrap

            import re

            reason = re.sub(r"\s*Selected in [^.]*\.", "", self.reason)  # said in the line above
            out += textwrap.wrap(reason, 110, initial_indent="    ", subsequent_indent="    ")
        return out


def check_layers(args, model) -> None:
    """--review, --post and --fusion against the model's layers, before any sweep
    (``args`` as `studies.options.read` left them: ``review`` one layer or a grid's tuple)."""
    from . import cli

    given = args.review if isinstance(args.review, tuple) else (args.review,)
    reviews = [] if args.review is None else [cli.layer_option(model, "--review", r) for r in given]
    post = None if args.post is None else cli.layer_option(model, "--post", args.post)
    for review in reviews:
        if post is None and review < 1:
            raise cli.UsageError(f"--review {review}: the post-integrated layer is the one before it, and "
                                 "layer 0 has none; pick a review layer >= 1")
        if post is not None and post >= review:
            raise cli.UsageError(f"--post {post}: must come before the review layer {review}")
    if args.fusion is not None:
        fusion = [cli.layer_option(model, "--fusion", layer) for layer in args.fusion]
        lowest = post if post is not None else min((r - 1 for r in reviews), default=None)
        if lowest is not None and not any(layer < lowest for layer in fusion):
            raise cli.UsageError(f"--fusion {','.join(map(str, args.fusion))}: no layer below the post-integrated "
                                 f"layer {lowest}; candidate pre-integrated layers must precede it")


def pooled(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``var`` over (…, dataset, sample) -> (…, sample) with all datasets' real samples."""
    stacked = ds[var].stack(pooled=("dataset", "sample"))
    keep = ds["is_sample"].stack(pooled=("dataset", "sample")).values
    out = stacked.isel(pooled=np.flatnonzero(keep)).drop_vars(["pooled", "dataset", "sample", "sample_id"],
                                                            errors="ignore")
    return out.rename(pooled="sample")


def discover_by_type(masking: xr.Dataset, *, seed: int = 0, min_samples: int = 20) -> dict[str, dict]:
    """`mech.discovery.discover_layers` per question type (pooled over datasets), for the
    types with at least ``min_samples`` samples: ``{type: {fusion, review, post, n, reason,
    this_answer, stable}}`` (``this_answer``: the share of bootstrap resamples giving this
    type's answer; its instability is said in `by_type_lines`, not warned once per type)."""
    import warnings

    from mech.discovery import DiscoveryWarning, discover_layers

    if "question_type" not in masking.coords:
        return {}
    types = masking["question_type"].broadcast_like(masking["is_sample"]).stack(pooled=("dataset", "sample"))
    types = types.values[masking["is_sample"].stack(pooled=("dataset", "sample")).values].astype(str)
    correct = pooled(masking, "score").transpose("layer", "sample")
    baseline = pooled(masking, "baseline_score")
    out = {}
    for qtype in sorted(set(types) - {""}):
        keep = np.flatnonzero(types == qtype)
        if len(keep) < min_samples:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiscoveryWarning)
            found = discover_layers(correct.isel(sample=keep), baseline=baseline.isel(sample=keep), seed=seed)
        a = found.stats.attrs
        out[qtype] = {"fusion": list(found.fusion_layers), "review": found.review_layer, "post": found.post_layer,
                      "n": int(len(keep)), "reason": found.reason,
                      "this_answer": round(float(a.get("answer_frequency", float("nan"))), 4),
                      "stable": bool(a.get("stable", True))}
    return out


def by_type_lines(by_type: dict) -> list[str]:
    """The per-type answers as printed: layers, n and how often a resample gives the answer."""
    out = []
    for qtype, found in by_type.items():
        settled = "" if found["stable"] else ", not stable"
        out.append(f"    {qtype:<8} fusion {{{', '.join(map(str, found['fusion']))}}}, review "
                   f"{found['review'] if found['review'] is not None else 'none'} (n={found['n']}; this answer in "
                   f"{100 * found['this_answer']:.0f}% of resamples{settled})")
    return out


def discover(masking: xr.Dataset, *, seed: int = 0):
    """`mech.discovery.LayerDiscovery` from a layer-masking study Dataset."""
    from mech.discovery import discover_layers

    correct = pooled(masking, "score").transpose("layer", "sample")
    baseline = pooled(masking, "baseline_score")
    return discover_layers(correct, baseline=baseline, seed=seed)


def resolve(args, model, masking: xr.Dataset | None) -> Layers:
    """Layers from ``--review/--post/--fusion`` or, where absent, from ``masking`` (a grid
    of review layers: the first; the study spans the others)."""
    import mech

    fusion = tuple(args.fusion) if args.fusion else None
    if args.review is not None:
        first = args.review[0] if isinstance(args.review, tuple) else args.review
        review = model.check_layer(first, "review layer")
        post = model.check_layer(args.post if args.post is not None else review - 1, "post-integrated layer")
        found = discover(masking, seed=args.seed) if fusion is None and masking is not None else None
        return Layers(fusion if fusion is not None else (found.fusion_layers if found else ()),
                      review, post, "given", "review layer given with --review", found)
    found = discover(masking, seed=args.seed)
    fusion = fusion if fusion is not None else found.fusion_layers
    if found.review_layer is not None:
        post = found.post_layer if args.post is None else model.check_layer(args.post, "post-integrated layer")
        return Layers(fusion, found.review_layer, post, "discovered", found.reason, found)
    review = mech.default_review_layer(model.n_layers)
    post = review - 1 if args.post is None else model.check_layer(args.post, "post-integrated layer")
    return Layers(fusion, review, post, "fallback",
                  f"{found.reason} Falling back to the paper's review layer at its relative depth (29 of 32), "
                  f"at least three from the end: review layer {review} of {model.n_layers}.", found)


def setup(args, steps: int = 2):
    """Model, samples and layers for a contrastive study: every option checked before the
    first generation, then the layer-masking sweep when the layers are to be discovered
    (phase 1 of ``steps``), its answer printed with how settled it is."""
    from mech import progress

    from . import inputs
    from .layer_masking import sweep as masking_sweep

    model, samples = inputs.start(args)
    masking = None
    if args.review is None or args.fusion is None:
        title = f"1/{steps} layer-masking sweep (the layers)"
        print(title)
        with progress.phase(title):
            masking = masking_sweep(model, samples, out=args.out, seed=args.seed, **inputs.run_options(args))
    chosen = resolve(args, model, masking)
    print("\n".join(chosen.lines()))
    return model, samples, chosen


if __name__ == "__main__":
    from .cli import not_a_study

    not_a_study(__spec__.name)
