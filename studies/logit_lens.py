"""The logit lens on image tokens: at which layer do an object's image tokens decode to its
colour and shape words, and the last prompt token to the answer?

`mech.LogitLens` sends the residual stream leaving every decoder layer through the model's
own final norm and unembedding, at every image token and at the last prompt token of
shapes test samples. For each sample whose question is about one object (colour and shape
questions: the asked object; spatial: the answer's), the image tokens that object covers
(where the batch's image grid, `mech.grid`, puts them: `mech.datasets.covered_tokens`) give the rank of its colour word and of its shape word
(0: the top token; the median over its tokens) and the share of its tokens whose top token
is that word; the last token gives the rank of the answer's first token, for every
question type. Image tokens come before the question, so what they decode to does not
depend on it: per question type, their curves differ only by the scenes asked about.

Writes ``logit_lens.nc`` and ``logit_lens.png/.pdf`` (a few samples' images with every
patch coloured by its top token at ``--show-layers``, and the rank-by-layer curves).
"""

from __future__ import annotations

import json

import numpy as np
import torch
import xarray as xr

from . import cli, inputs, output
from .patching import first_token

WORDS = ("color", "shape")


def lens_batch(model, samples, remote=None) -> dict[str, np.ndarray]:
    """One batch: top-1 ids at every image token ``[n, layer, n_image]`` and where each token
    sits (view, row, column of the batch's image grid), the object's word ranks and top-1
    shares ``[n, layer, 2]`` (NaN without an object), the answer's rank at the last token
    ``[n, layer]``."""
    import mech
    from mech.datasets import asked_object

    from .patching import object_slots

    tokenizer = model.processor.tokenizer
    batch = model.prepare(samples)
    objects = [asked_object(s) for s in samples]
    words = torch.tensor([[first_token(tokenizer, getattr(s.extras["scene"].objects[o], w)) for w in WORDS]
                          if o is not None else [0, 0] for s, o in zip(samples, objects)])
    answers = torch.tensor([[first_token(tokenizer, s.answers[0])] for s in samples])
    image = mech.LogitLens(positions="image", top_k=1, targets=words)
    last = mech.LogitLens(positions="last", top_k=1, targets=answers)
    with torch.no_grad(), model.trace(batch, **({"remote": remote} if remote else {})):
        on_image, on_last = mech.apply(model, batch, image, last)
    n, layers, width = on_image["top_ids"].shape[:3]
    ranks, top1 = np.full((n, layers, 2), np.nan), np.full((n, layers, 2), np.nan)
    top = np.where(batch.image_valid.cpu().numpy()[:, None], on_image["top_ids"][..., 0].numpy(), -1)
    place = np.full((n, 3, width), -1)  # view, row, column of each slot
    finest = np.zeros(n, dtype=int)
    for b, (sample, o) in enumerate(zip(samples, objects)):
        grid = batch.image_grid[b]
        place[b, :, :len(grid)] = torch.stack([grid.view, grid.row, grid.col]).numpy()
        finest[b] = grid.finest()
        if o is None:
            continue
        slots = object_slots(model, batch, b, sample)
        ranks[b] = on_image["target_ranks"][b][:, slots].float().median(1).values.numpy()
        top1[b] = (on_image["top_ids"][b][:, slots] == words[b]).float().mean(1).numpy()
    return {"top": top, "place": place, "finest": finest, "ranks": ranks, "top1": top1,
            "answer_rank": on_last["target_ranks"][:, :, 0, 0].numpy()}


def study(model, samples, *, batch_size: int = 16, remote=None, seed: int = 0) -> xr.Dataset:
    from mech.stats import bootstrap_ci

    parts = [lens_batch(model, samples[i:i + batch_size], remote) for i in range(0, len(samples), batch_size)]
    width = max(p["top"].shape[-1] for p in parts)
    top, place = (np.concatenate([np.pad(p[k], ((0, 0), (0, 0), (0, width - p[k].shape[-1])), constant_values=-1)
                                  for p in parts]) for k in ("top", "place"))
    finest = np.concatenate([p["finest"] for p in parts])
    ranks, top1 = (np.concatenate([p[k] for p in parts]) for k in ("ranks", "top1"))
    answer = np.concatenate([p["answer_rank"] for p in parts]).astype(float)
    layers = list(range(ranks.shape[1]))
    types = np.array([s.question_type or "" for s in samples])
    has_object = ~np.isnan(ranks[:, 0, 0])
    subsets = ["all", *dict.fromkeys(types)]
    curves = {k: np.full((len(subsets), len(layers)) + extra, np.nan)
              for k, extra in (("object_rank", (2,)), ("object_top1", (2,)), ("answer_rank", ()))}
    cis = {k: np.full(v.shape + (2,), np.nan) for k, v in curves.items()}
    for i, subset in enumerate(subsets):
        chosen = (types == subset) | (subset == "all")
        for key, values, rows in (("object_rank", ranks, chosen & has_object), ("object_top1", top1,
                                  chosen & has_object), ("answer_rank", answer, chosen)):
            if rows.sum() >= 2:
                picked = np.moveaxis(values[rows], 0, -1)  # samples last
                curves[key][i] = picked.mean(-1)
                low, high = bootstrap_ci(picked, seed=seed)
                cis[key][i, ..., 0], cis[key][i, ..., 1] = low, high
    used = sorted(int(i) for i in np.unique(top) if i >= 0)
    words = dict(zip(used, model.processor.tokenizer.convert_ids_to_tokens(used)))
    ds = xr.Dataset(
        {"top_token": (("sample", "layer", "image_token"), top),
         "grid_view": (("sample", "image_token"), place[:, 0]), "grid_row": (("sample", "image_token"), place[:, 1]),
         "grid_col": (("sample", "image_token"), place[:, 2]), "finest_view": (("sample",), finest),
         "object_rank": (("sample", "layer", "word"), ranks), "object_top1": (("sample", "layer", "word"), top1),
         "answer_rank": (("sample", "layer"), answer),
         **{f"mean_{k}": (("subset", "layer", *(("word",) if v.ndim == 3 else ())), v) for k, v in curves.items()},
         **{f"mean_{k}_ci": (("subset", "layer", *(("word",) if v.ndim == 4 else ()), "bound"), v)
            for k, v in cis.items()}},
        coords={"sample": [s.id for s in samples], "layer": layers, "word": list(WORDS), "subset": subsets,
                "bound": ["low", "high"], "question_type": (("sample",), types),
                "has_object": (("sample",), has_object)})
    ds["top_token"].attrs["long_name"] = "top-1 token id of the logit lens at each image token (-1: padding)"
    ds["grid_row"].attrs["long_name"] = "the token's row in its view of the image grid (mech.grid; -1: padding)"
    ds["grid_col"].attrs["long_name"] = "the token's column in its view (-1: a newline token or padding)"
    ds["object_rank"].attrs["long_name"] = ("rank of the object's colour / shape word at its image tokens "
                                            "(median over them; 0 = top token)")
    ds["object_top1"].attrs["long_name"] = "share of the object's image tokens whose top token is the word"
    ds["answer_rank"].attrs["long_name"] = "rank of the answer's first token at the last prompt token"
    ds["layer"].attrs["long_name"] = "decoder layer whose output residual stream is read (0-based)"
    ds.attrs["top_tokens"] = json.dumps(words)  # id -> token of every id in top_token
    ds.attrs["vocabulary_size"] = int(model.config.text_config.vocab_size)
    return ds


def _patch_colours(ds: xr.Dataset, sample: int, layer: int, words: dict):
    """An RGB image of the sample's finest view of its image-token grid, each token's cell
    coloured by its top token (colour words in their colour, shape words grey and marked,
    anything else white), and the shape marks ``(row, col, glyph)``."""
    from mech.datasets.shapes import COLORS

    glyph = {"circle": "o", "square": "s", "triangle": "^"}
    view = int(ds["finest_view"][sample])
    at = (ds["grid_view"].values[sample] == view) & (ds["grid_col"].values[sample] >= 0)
    rows, cols = ds["grid_row"].values[sample][at], ds["grid_col"].values[sample][at]
    ids = ds["top_token"].sel(layer=layer).values[sample][at]
    rgb = np.ones((rows.max() + 1, cols.max() + 1, 3))
    marks = []
    for r, c, token in zip(rows, cols, ids):
        word = words.get(str(int(token)), "")
        if word in COLORS:
            rgb[r, c] = np.array(COLORS[word]) / 255
        elif word in glyph:
            rgb[r, c] = 0.78
            marks.append((r, c, glyph[word]))
    return rgb, marks


def figure(ds: xr.Dataset, samples=None, show_layers=None):
    import matplotlib.pyplot as plt
    import seaborn as sns

    words = json.loads(ds.attrs["top_tokens"])
    layers = list(ds["layer"].values)
    show = list(show_layers or sorted({layers[0], layers[len(layers) // 2], layers[-1]}))
    examples = [i for i in range(ds.sizes["sample"]) if bool(ds["has_object"][i])][:3]
    cols = len(show) + (1 if samples else 0)
    fig = plt.figure(figsize=(max(2.0 * cols, 7.5), 2.0 * len(examples) + 3.2))
    grid = fig.add_gridspec(len(examples) + 1, cols, height_ratios=[1] * len(examples) + [1.5])
    for row, i in enumerate(examples):
        if samples:
            ax = fig.add_subplot(grid[row, 0])
            ax.imshow(samples[i].image)
            ax.set_title(samples[i].question, fontsize=7)
            ax.axis("off")
        for k, layer in enumerate(show):
            ax = fig.add_subplot(grid[row, k + (1 if samples else 0)])
            rgb, marks = _patch_colours(ds, i, layer, words)
            ax.imshow(rgb, interpolation="nearest")
            for r, c, g in marks:
                ax.text(c, r, g, ha="center", va="center", fontsize=6, color="0.2")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"top token, layer {layer}", fontsize=8)
    palette = sns.color_palette("deep")
    half = max(cols // 2, 1)
    ax = fig.add_subplot(grid[-1, :half])
    for w, word in enumerate(ds["word"].values):
        mean = ds["mean_object_rank"].sel(subset="all", word=word).values
        ci = ds["mean_object_rank_ci"].sel(subset="all", word=word).values
        ax.plot(layers, mean, marker="o", ms=3, color=palette[w], label=f"its {word} word")
        ax.fill_between(layers, ci[:, 0], ci[:, 1], color=palette[w], alpha=0.2, linewidth=0)
    chance = (ds.attrs.get("vocabulary_size", 0) - 1) / 2
    if chance > 0:
        ax.axhline(chance, ls="--", color="0.4", lw=1, label="a random token's rank")
    ax.set(xlabel="decoder layer", ylabel="rank at the object's tokens", title="object's image tokens (pooled)")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[-1, half:])
    for k, subset in enumerate(s for s in ds["subset"].values if s != "all"):
        ax.plot(layers, ds["mean_answer_rank"].sel(subset=subset).values, marker="o", ms=3, color=palette[k % 10],
                label=subset)
    ax.set(xlabel="decoder layer", ylabel="rank of the answer", title="last prompt token, by question type")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def main(argv=None) -> xr.Dataset:
    p = cli.parser("logit_lens", __doc__)
    p.set_defaults(datasets="shapes")
    p.add_argument("--show-layers", default=None,
                   help="comma-separated layers drawn in the figure's patch maps (default: first, middle, last)")
    cli.add_check(p, lambda args: args.show_layers is None or cli.layer_list("--show-layers", args.show_layers))
    cli.add_check(p, lambda args, model: args.show_layers is None or [
        cli.layer_option(model, "--show-layers", layer) for layer in cli.layer_list("--show-layers", args.show_layers)],
        needs_model=True)
    args = cli.parse(p, argv)
    model, by_dataset = inputs.start(args)
    samples = [s for group in by_dataset.values() for s in group]
    if not all("scene" in s.extras for s in samples):
        raise cli.UsageError(f"--datasets {args.datasets}: the logit lens study needs shapes scenes (where each "
                             "object is); use shapes or a shapes-* set")
    ds = study(model, samples, batch_size=args.batch_size, remote={"local": "local", "ndif": True}.get(args.remote),
               seed=args.seed)
    show = cli.layer_list("--show-layers", args.show_layers) if args.show_layers else None
    print("mean rank of the object's words at its image tokens, and of the answer at the last token:")
    table = ds["mean_object_rank"].sel(subset="all").to_pandas()
    table["answer (last token)"] = ds["mean_answer_rank"].sel(subset="all").to_pandas()
    print(table.round(2).to_string())
    return output.finish(ds, args, model, "logit_lens", lambda d: figure(d, samples, show),
                         residual="resid_post", words=list(WORDS))


if __name__ == "__main__":
    cli.cli(main)
