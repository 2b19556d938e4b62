"""Card of the ground-truth model: a tiny LLaVA whose fusion and review layers were planted.

``card.write_card`` calls `write_text` for a ``--plant`` run. Everything in it is measured
here, on the saved checkpoint, through the toolkit's own path: the zero-masking curve per
question type (`mech.sweep` of `mech.ZeroImage` at every layer), `discover_layers` on it
with bootstrap selection frequencies, and the attention mass each kind of text query puts
on image keys per layer (eager attention, no mask: the planted pattern as the weights
hold it). The main job's output (``review_layer.txt``) and the controls table
(``controls.md``), made by the studies, are included when present in the folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .runs import planted_sites


def _scores(model, samples, per_layer, prefix: str, **options) -> dict[str, np.ndarray]:
    """``{"none" | "<prefix>L": (n,) 0/1 scores}``: one `mech.sweep` of ``per_layer(L)`` at
    every layer beside the plain model; ``model`` a `mech.Model` or a checkpoint folder."""
    import mech

    model = mech.load(str(model)) if isinstance(model, (str, Path)) else model
    named = {"none": None, **{f"{prefix}{L}": per_layer(L) for L in range(model.n_layers)}}
    runs = mech.sweep(model, samples, named, batch_size=50, max_new_tokens=3, progress=False, **options)
    return {name: np.array([r.score for r in results.records], dtype=float) for name, results in runs.items()}


def masking_scores(model, samples) -> dict[str, np.ndarray]:
    """``{"none" | "zero-layerL": (n,) 0/1 scores}``: the image tokens zeroed at the input of
    each layer (`mech.ZeroImage`, the shared-prefill sweep)."""
    import mech

    return _scores(model, samples, lambda L: mech.ZeroImage(layer=L), "zero-layer", fast=True)


def knockout_scores(model, samples) -> dict[str, np.ndarray]:
    """``{"none" | "knockout-layerL": (n,) 0/1 scores}``: every text token after the image
    barred from the image keys at layer L alone (`mech.Knockout(query="text")`)."""
    import mech

    return _scores(model, samples, lambda L: mech.Knockout(layers=[L], query="text"), "knockout-layer")


def curve_table(samples, scores, types) -> str:
    """Markdown: accuracy per question type (columns) with the image zeroed at each layer (rows)."""
    qtype = np.array([s.extras["question_type"] for s in samples])
    cols = [*types, "overall"]
    lines = ["| image tokens zeroed at | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, sc in scores.items():
        label = "no masking" if name == "none" else f"input of layer {name.removeprefix('zero-layer')}"
        cells = [f"{100 * sc[qtype == t].mean():.1f}%" if t != "overall" else f"**{100 * sc.mean():.1f}%**"
                 for t in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def discovery(scores, seed: int = 0):
    """`mech.discovery.discover_layers` on the masking scores (1,000 bootstrap resamples)."""
    import xarray as xr

    from ..discovery import discover_layers

    layers = sorted(int(k.removeprefix("zero-layer")) for k in scores if k != "none")
    correct = xr.DataArray(np.stack([scores[f"zero-layer{l}"] for l in layers]), dims=("layer", "sample"))
    return discover_layers(correct, baseline=xr.DataArray(scores["none"], dims=("sample",)), seed=seed)


def attention_table(model, processor, samples, sites) -> str:
    """Markdown: per layer, the mean attention mass on image keys of the summary query,
    the answer query and every other text query after the image (mask-free checkpoint)."""
    from .planted import image_attention_by_site

    mass = image_attention_by_site(model, processor, samples, sites)
    lines = ["| layer | planted site | summary query (first token after the image) | answer query (last prompt token) "
             "| other text queries |", "|---|---|---|---|---|"]
    for layer in range(len(mass["answer"])):
        site = ("fusion" if layer in sites.fusion else "review" if layer == sites.review else "–")
        lines.append(f"| {layer} | {site} | {mass['summary'][layer]:.3f} | {mass['answer'][layer]:.3f} | "
                     f"{mass['other'][layer]:.3f} |")
    return "\n".join(lines)


def per_dataset(controls_markdown: str) -> str:
    """The rows of a `studies.controls` Markdown table for whole datasets (not per question type)."""
    lines, keep = controls_markdown.splitlines(), True
    out = lines[:2]
    for line in lines[2:]:
        first = line.split("|")[1].strip() if line.startswith("|") else ""
        if first:
            keep = "/" not in first
        if keep and line.startswith("|"):
            out.append(line)
    return "\n".join(out)


def tally(controls_markdown: str) -> str:
    """Per comparison (``against`` column) over the whole-dataset cells of a `studies.controls`
    Markdown table: in how many the contrastive run is significantly better / worse
    (paired test p < 0.05), of all."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in per_dataset(controls_markdown).splitlines()[2:]]
    if not rows:
        return ""
    counts: dict[str, list[int]] = {}
    for row in rows:
        against, delta, p = row[6], float(row[8]), row[10]
        significant = p.startswith("<") or float(p) < 0.05
        c = counts.setdefault(against, [0, 0, 0])
        c[0] += significant and delta > 0
        c[1] += significant and delta < 0
        c[2] += 1
    return "; ".join(f"against {name}: better in {b}, worse in {w} of {n} cells" for name, (b, w, n) in counts.items())


def write_text(args, result, metrics, n_params, size_mb, types, test_seed: int = 0) -> str:
    """The README of a ``--plant`` checkpoint (test samples ``shapes("test", n_test, test_seed)``)."""
    from ..datasets import shapes
    from .card_text import REVIEW_TEMPLATE

    out, sites = Path(args.out), planted_sites(args)
    test = shapes("test", n=args.n_test, seed=test_seed, types=types)
    import mech

    model = mech.load(str(out))  # once, for both sweeps
    scores = masking_scores(model, test)
    found = discovery(scores)
    knocked = knockout_scores(model, test)
    m = metrics
    rows = "\n".join(f"| {t} | {100 * m['accuracy'][t]:.1f}% | {100 * m['accuracy_image_zeroed'][t]:.1f}% | "
                     f"{100 * m['text_prior'][t]:.1f}% |" for t in [*types, "overall"])
    extra = {}
    for name in ("review_layer.txt", "controls.md"):
        path = out / name
        extra[name] = path.read_text().strip() if path.exists() else "(not measured yet)"
    command = " ".join(result.get("command") or ["python -m mech.zoo.train --preset review"])
    return REVIEW_TEMPLATE.format(
        out=args.out, n_params=n_params, size_mb=size_mb, sites=sites.describe(), fusion=", ".join(map(str, sites.fusion)),
        review=sites.review, n_layers=result["model"].config.text_config.num_hidden_layers, command=command,
        minutes=result["minutes"], init=getattr(args, "init", None) or "random weights", seed=args.seed,
        steps=args.steps + args.phase3_steps, hold=args.hold, anneal=args.anneal, bias=args.bias_start,
        weight=args.site_weight, dropout=getattr(args, "review_dropout", 0.0),
        fusion_answers=getattr(args, "fusion_answers", ""), n_test=args.n_test, rows=rows,
        curve=curve_table(test, scores, types), found_fusion="{" + ", ".join(map(str, found.fusion_layers)) + "}", found_review=found.review_layer,
        frequencies=found.frequencies_text(), reason=found.reason, types=",".join(types),
        types_tuple=", ".join(repr(t) for t in types), overall=f"{100 * m['accuracy']['overall']:.1f}%",
        review_frequency=(f"{100 * found.review_frequency.get(found.review_layer, 0):.0f}%"
                          if found.review_layer is not None else "fallback"),
        knockout=knockout_table(knocked, sites), by_n=by_n_table(scores),
        attention=attention_table(result["model"], result["processor"], test[:100], sites),
        main_job=extra["review_layer.txt"], controls=per_dataset(extra["controls.md"]), tally=tally(extra["controls.md"]) or "–",
    )


def reading_layers(model, samples, min_drop: float = 0.05) -> dict[int, float]:
    """``{layer: accuracy drop}`` of the layers where blocking text->image attention at that
    layer alone costs at least ``min_drop``: where the weights really read the image into
    the text, measured without zero-masking."""
    scores = knockout_scores(model, samples)
    base = scores.pop("none").mean()
    drops = {int(k.removeprefix("knockout-layer")): float(base - v.mean()) for k, v in scores.items()}
    return {L: d for L, d in drops.items() if d >= min_drop}


def knockout_table(scores, sites) -> str:
    """Markdown: accuracy with text->image attention blocked at each layer alone."""
    base = scores["none"].mean()
    lines = ["| text->image attention blocked at | planted site | accuracy | drop |", "|---|---|---|---|",
             f"| nowhere | – | {100 * base:.1f}% | – |"]
    for name, sc in scores.items():
        if name == "none":
            continue
        L = int(name.removeprefix("knockout-layer"))
        site = "fusion" if L in sites.fusion else "review" if L == sites.review else "–"
        lines.append(f"| layer {L} | {site} | {100 * sc.mean():.1f}% | {100 * (base - sc.mean()):+.1f} |")
    return "\n".join(lines)


def by_n_table(scores, sizes=(150, 200, 300, 400, 500)) -> str:
    """Markdown: what `discovery` finds on the first n test samples, for each n."""
    lines = ["| samples | fusion S | review layer | selection frequencies (1,000 resamples) |", "|---|---|---|---|"]
    total = len(scores["none"])
    for n in (n for n in sizes if n <= total):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = discovery({k: v[:n] for k, v in scores.items()})
        review = found.review_layer if found.review_layer is not None else "none (fallback)"
        lines.append(f"| {n} | {{{', '.join(map(str, found.fusion_layers))}}} | {review} | {found.frequencies_text()} |")
    return "\n".join(lines)
