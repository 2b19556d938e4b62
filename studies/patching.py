"""Causal tracing on clean/corrupted shapes pairs: which layer and which tokens carry the answer.

Each pair is a shapes test scene and the same scene with the asked object's colour ("what
color is the circle?") or shape ("what shape is red?") changed (`mech.datasets.pairs`), so
the two answers differ and nothing else does. Both run in one forward (`mech.join`); for
every decoder layer L and position group G, `mech.Patch` writes the clean run's ``--hook``
activation (default ``resid_pre``, the residual stream entering L) at G into the corrupted
run. The metric is the normalised logit difference restored,

    restored(L, G) = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted),

with LD the last prompt token's logit of the clean answer minus that of the corrupted
answer: 1 is the clean run's preference fully restored, 0 none of it. Groups: the image
tokens the asked object covers, the other image tokens, all image tokens (at layer 0 they
restore everything: the image is the only difference), the question's tokens and the last
token. (The other image tokens differ between the two runs as well: the vision tower mixes
every patch.) Pairs where the model does not answer both images right (LD_clean <= 0 or
LD_corrupted >= 0) are left out and counted. Means over pairs with percentile-bootstrap
95% CIs, pooled and per question type.

Writes ``patching.nc`` and ``patching.png/.pdf`` (layer x group heat maps) under ``--out``.
"""

from __future__ import annotations


import numpy as np
import torch
import xarray as xr

from . import cli, inputs, output

GROUPS = ("object", "other image", "image", "question", "last")
HOOKS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "attn.z", "ln1")


def first_token(tokenizer, word: str) -> int:
    """The token id an answer word starts with."""
    return tokenizer(word, add_special_tokens=False)["input_ids"][0]


def object_slots(model, batch, row: int, sample) -> torch.Tensor:
    """``[n_image]`` bool over the row's image-layout slots: the tokens whose patches the
    asked object overlaps (the batch's image grid, `mech.grid`), in every view of the image."""
    from mech.datasets import asked_object, covered_tokens, object_box

    try:
        grid = batch.image_grid[row]
    except ValueError as error:
        raise cli.UsageError(f"--model {model.source}: where the image tokens sit is not known ({error})") from None
    covered = covered_tokens(grid.box, object_box(sample.extras["scene"], asked_object(sample)))
    slots = torch.zeros(batch.image_index.shape[1], dtype=torch.bool)
    slots[:len(covered)] = covered
    return slots


def group_masks(model, both, pairs) -> dict[str, torch.Tensor]:
    """``{group: [2n, seq] bool}`` on the joined batch (corrupted rows, then clean rows):
    each pair's rows select as many positions, the j-th of one being the j-th of the other."""
    objects = torch.zeros(both.image_mask.shape, dtype=torch.bool)
    n = len(pairs)
    for row in range(both.size):
        slots = object_slots(model, both, row, pairs[row % n].clean)
        objects[row, both.image_index[row].cpu()[slots]] = True
    image = both.image_mask.cpu()
    return {"object": objects, "other image": image & ~objects, "image": image,
            "question": both.extras["question"].cpu(), "last": both.last_token.cpu()}


def trace_batch(model, pairs, hook: str, layers, remote=None) -> dict[str, np.ndarray]:
    """Logit differences of one batch of pairs: clean and corrupted ``[n]``, patched
    ``[layer, group, n]``."""
    import mech

    tokenizer = model.processor.tokenizer
    clean = model.prepare([p.clean for p in pairs])
    corrupted = model.prepare([p.corrupted for p in pairs])
    both = mech.join(model, corrupted, clean)
    n = len(pairs)
    good = torch.tensor([first_token(tokenizer, p.clean.answers[0]) for p in pairs] * 2)
    bad = torch.tensor([first_token(tokenizer, p.corrupted.answers[0]) for p in pairs] * 2)
    options = {"remote": remote} if remote else {}

    def logit_difference(*interventions) -> torch.Tensor:
        with torch.no_grad(), model.trace(both, **options):
            if interventions:
                mech.apply(model, both, *interventions)
            last = model.logits[:, -1].save()
        last = last.float().cpu()
        rows = torch.arange(last.shape[0])
        return last[rows, good] - last[rows, bad]

    plain = logit_difference()
    masks = group_masks(model, both, pairs)
    patched = np.zeros((len(layers), len(GROUPS), n))
    for i, layer in enumerate(layers):
        for j, group in enumerate(GROUPS):
            patch = mech.Patch(hook, layers=[layer], positions=masks[group], source=clean)
            patched[i, j] = logit_difference(patch)[:n].numpy()
    return {"clean": plain[n:].numpy(), "corrupted": plain[:n].numpy(), "patched": patched}


def trace(model, pairs, *, hook: str = "resid_pre", layers=None, batch_size: int = 16, remote=None,
          seed: int = 0, progress: bool = True) -> xr.Dataset:
    """The study Dataset: per pair and per (layer, group), and the means with CIs."""
    from mech.stats import bootstrap_ci

    layers = list(range(model.n_layers)) if layers is None else list(layers)
    parts = []
    for start in range(0, len(pairs), batch_size):
        parts.append(trace_batch(model, pairs[start:start + batch_size], hook, layers, remote))
        if progress:
            print(f"  pairs {min(start + batch_size, len(pairs))}/{len(pairs)}", flush=True)
    clean = np.concatenate([p["clean"] for p in parts])
    corrupted = np.concatenate([p["corrupted"] for p in parts])
    patched = np.concatenate([p["patched"] for p in parts], -1)
    kept = (clean > 0) & (corrupted < 0)
    restored = np.where(kept, (patched - corrupted) / np.where(kept, clean - corrupted, 1.0), np.nan)
    types = np.array([p.changed for p in pairs])
    subsets = ["all", *dict.fromkeys(types)]
    mean = np.full((len(subsets), len(layers), len(GROUPS)), np.nan)
    ci = np.full(mean.shape + (2,), np.nan)
    pairs_kept = []
    for k, subset in enumerate(subsets):
        chosen = kept & ((types == subset) | (subset == "all"))
        pairs_kept.append(int(chosen.sum()))
        if chosen.sum() >= 2:
            values = restored[..., chosen]
            mean[k] = values.mean(-1)
            low, high = bootstrap_ci(values, seed=seed)
            ci[k, ..., 0], ci[k, ..., 1] = low, high
    ds = xr.Dataset(
        {"restored": (("layer", "group", "pair"), restored),
         "logit_diff_patched": (("layer", "group", "pair"), patched),
         "logit_diff_clean": (("pair",), clean), "logit_diff_corrupted": (("pair",), corrupted),
         "kept": (("pair",), kept),
         "mean_restored": (("subset", "layer", "group"), mean),
         "mean_restored_ci": (("subset", "layer", "group", "bound"), ci),
         "pairs_kept": (("subset",), np.array(pairs_kept))},
        coords={"layer": layers, "group": list(GROUPS), "pair": [p.clean.id.removesuffix("-clean") for p in pairs],
                "question_type": (("pair",), types), "subset": subsets, "bound": ["low", "high"]})
    ds["restored"].attrs.update(units="1", long_name="normalised logit difference restored, "
                                "(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted); NaN: pair left out")
    ds["logit_diff_clean"].attrs["long_name"] = "logit(clean answer) - logit(corrupted answer), clean image"
    ds["layer"].attrs["long_name"] = f"decoder layer whose {hook} is patched (0-based)"
    return ds


def figure(ds: xr.Dataset):
    import matplotlib.pyplot as plt
    import seaborn as sns

    subsets = list(ds["subset"].values)
    fig, axes = plt.subplots(1, len(subsets), figsize=(3.6 * len(subsets) + 0.8, 0.42 * ds.sizes["layer"] + 1.6),
                             squeeze=False, sharey=True)
    for k, subset in enumerate(subsets):
        ax = axes[0, k]
        table = ds["mean_restored"].sel(subset=subset).to_pandas()
        sns.heatmap(table, ax=ax, vmin=-1, vmax=1, center=0, cmap="RdBu_r", annot=True, fmt=".2f",
                    annot_kws={"size": 7}, cbar=k == len(subsets) - 1,
                    cbar_kws={"label": "logit difference restored"})
        label = "all pairs" if subset == "all" else f"{subset} changed"
        ax.set_title(f"{label} (n={int(ds['pairs_kept'].sel(subset=subset))})", fontsize=9)
        ax.set_xlabel("patched positions")
        ax.set_ylabel("decoder layer" if k == 0 else "")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"Clean {ds.attrs.get('hook', 'resid_pre')} patched into the corrupted run", fontsize=10)
    fig.tight_layout()
    return fig


def check(args) -> None:
    if args.datasets != "shapes":
        raise cli.UsageError(f"--datasets {args.datasets}: the patching study builds its clean/corrupted pairs from "
                             "the shapes generator; use --datasets shapes")


def main(argv=None) -> xr.Dataset:
    p = cli.parser("patching", __doc__)
    p.set_defaults(datasets="shapes")
    p.add_argument("--hook", default="resid_pre", choices=HOOKS,
                   help="the named hook point patched at each layer (default: resid_pre, the residual stream "
                        "entering the layer)")
    cli.add_check(p, check)
    args = cli.parse(p, argv)
    inputs.check_args(args)
    model = inputs.load_model(args)
    import mech

    pairs = mech.datasets.pairs("test", n=args.limit, seed=args.seed)
    ds = trace(model, pairs, hook=args.hook, batch_size=args.batch_size,
               remote={"local": "local", "ndif": True}.get(args.remote), seed=args.seed, progress=not args.no_progress)
    ds.attrs["hook"] = args.hook
    table = ds["mean_restored"].sel(subset="all").to_pandas().round(2)
    print(f"restored, all pairs ({int(ds['pairs_kept'].sel(subset='all'))} of {ds.sizes['pair']} kept):")
    print(table.to_string())
    return output.finish(ds, args, model, "patching", figure, hook=args.hook, groups=list(GROUPS),
                         pairs=args.limit, metric="(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), "
                         "LD = logit(clean answer) - logit(corrupted answer) at the last prompt token")


if __name__ == "__main__":
    cli.cli(main)
