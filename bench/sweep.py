"""The zero-masking sweep measured the way a study runs it: many batches, one run.

A study's sweep goes batch after batch through one `mech.ImageRowTemplates`, so the
zeroed image rows are computed for the first batch and reused by every later one. These
benchmarks time exactly that (fresh templates each repetition, their cost included)
against the naive sweep (one plain generate per layer and batch), and print beside each
ratio its structural limit: the decoder's prefill row-layers (rows times layers run) of
the path over those of the naive sweep. Decode steps are not in the limit; both paths
pay them in full, so the measured ratio sits above it by their share.
"""

from __future__ import annotations

import torch

from .harness import QUICK, SWEEP32, build, pair_statistics, timed
from .paths import naive_zero_sweep

# depth x prompt length: 576 or 256 image tokens, ~705 or ~320 tokens per prompt
DEPTHS, PROMPTS = (8, 16, 32), {705: dict(image_size=96, question_words=125),
                                320: dict(image_size=64, question_words=60)}


def batches(model, config: dict, n: int, seed: int = 0) -> list:
    """``n`` batches of ``config["batch"]`` rows, rows of different lengths (left padding)."""
    from mech.zoo.random_llava import WORDS, random_images

    out = []
    for k in range(n):
        words = [WORDS[(i + k) % len(WORDS)] for i in range(config["question_words"])]
        questions = [" ".join(words[i:] + words[:i]) for i in range(config["batch"])]
        questions[0] = " ".join(words[:-(3 + k % 3)])
        out.append(model.prepare(questions=questions, images=random_images(config["batch"], seed=seed + k)))
    return out


def row_layers(batches: list, n_layers: int, path: str, once: bool = True) -> int:
    """Prefill row-layers of a sweep over all ``n_layers`` on ``batches``.

    ``naive``: every variant runs every layer on every row. ``exact``: one clean prefill,
    then layers ``>= L`` on every row for variant L. ``shared``: the clean prefill, then
    layers ``>= L`` on the rows after the image only, plus, once per run, each template
    (its image rows through layers ``>= L``) and the prefix run alone; ``once=False``
    leaves those out (templates kept from earlier batches).
    """
    from mech.shared_rows import shared_layout

    variants = range(n_layers)
    total, templates, prefixes = 0, set(), set()
    for batch in batches:
        rows = batch.size * batch.seq_len
        if path == "naive":
            total += n_layers * rows * n_layers
            continue
        total += rows * n_layers
        if path == "exact":
            total += sum(rows * (n_layers - L) for L in variants)
            continue
        layout = shared_layout(batch)
        after = batch.size * (batch.seq_len - layout["start"])
        total += sum(after * (n_layers - L) for L in variants)
        prefixes.add(layout["prefix_ids"])
        templates |= {(L, n) for L in variants for n in layout["counts"].tolist()}
    if once:
        total += sum(n * (n_layers - L) for L, n in templates) + sum(len(p) * n_layers for p in prefixes)
    return total


def sweep_over_batches(model, batches: list, shared: bool, max_new_tokens: int) -> tuple[list, object]:
    """The study's loop: every layer, batch after batch, one run's templates;
    ``([{layer: ids}] per batch, templates or None)``."""
    import mech

    layers = list(range(model.n_layers))
    templates = mech.ImageRowTemplates(model) if shared else None
    out = [mech.zero_mask_sweep(model, b, layers, max_new_tokens, share_image_rows=shared, templates=templates)
           for b in batches]
    return out, templates


def naive_over_batches(model, batches: list, max_new_tokens: int) -> list:
    """The anchor over ``batches``: `bench.paths.naive_zero_sweep` at every layer, batch
    after batch; ``[{layer: ids}]`` per batch."""
    return [naive_zero_sweep(model, b, list(range(model.n_layers)), max_new_tokens) for b in batches]


def measure(model, batches: list, shared: bool, max_new_tokens: int, reps: int) -> dict:
    """Interleaved ``reps`` pairs (path over all batches, naive over all batches) after a
    one-batch warm-up of each; `bench.harness.pair_statistics` of them, the structural
    limit and whether the ids equal naive's."""
    sweep_over_batches(model, batches[:1], shared, max_new_tokens)
    naive_over_batches(model, batches[:1], max_new_tokens)
    a, b, equal = [], [], True
    for _ in range(reps):
        found: dict = {}
        a.append(timed(lambda: found.update(zip(("fast", "templates"),
                                                 sweep_over_batches(model, batches, shared, max_new_tokens)))))
        b.append(timed(lambda: found.update(naive=naive_over_batches(model, batches, max_new_tokens))))
        equal &= all(torch.equal(f[l], n[l]) for f, n in zip(found["fast"], found["naive"]) for l in n)
    limit = row_layers(batches, model.n_layers, "shared" if shared else "exact") / \
        row_layers(batches, model.n_layers, "naive")
    result = {**pair_statistics(a, b), "limit": limit, "batches": len(batches), "ids_equal_naive": bool(equal)}
    if shared:
        result["templates"] = found["templates"].stats()
    return result


def depth_table(log=print, quick: bool = False) -> list[dict]:
    """Shared vs naive sweep seconds per sample at each depth and prompt length: one
    batch, the first pass (templates computed), a second (templates reused), and how
    much of the second is decode steps (it again with one new token, no decode)."""
    import mech

    depths, prompts = ((2, 4), {k: dict(image_size=32, question_words=w) for k, w in ((30, 10), (20, 4))}) \
        if quick else (DEPTHS, PROMPTS)
    base = QUICK if quick else SWEEP32
    rows = []
    log(f"{'layers':>6} {'prompt':>6} {'naive s/sample':>15} {'shared 1st':>11} {'shared reuse':>13} "
        f"{'of it decode':>12} {'ratio 1st':>9} {'ratio reuse':>11} {'limit 1st':>9} {'limit reuse':>11}")
    for depth in depths:
        for length, shape in prompts.items():
            config = {**base, **shape, "layers": depth}
            model, _ = build(config)
            (batch,) = batches(model, config, 1)
            new, per = config["max_new_tokens"], batch.size
            templates = mech.ImageRowTemplates(model)
            run = lambda: mech.zero_mask_sweep(model, batch, None, new, share_image_rows=True,  # noqa: E731
                                               templates=templates)
            first, reuse = timed(run), timed(run)
            prefill = timed(lambda: mech.zero_mask_sweep(model, batch, None, 1, share_image_rows=True,
                                                          templates=templates))  # decode steps left out
            naive = timed(lambda: naive_over_batches(model, [batch], new))
            naive_rows = row_layers([batch], depth, "naive")
            row = {"layers": depth, "prompt_tokens": batch.seq_len, "naive_s_per_sample": naive / per,
                   "shared_first_s_per_sample": first / per, "shared_reuse_s_per_sample": reuse / per,
                   "shared_reuse_decode_s_per_sample": max(reuse - prefill, 0.0) / per,
                   "ratio_first": first / naive, "ratio_reuse": reuse / naive,
                   "limit_first": row_layers([batch], depth, "shared") / naive_rows,
                   "limit_reuse": row_layers([batch], depth, "shared", once=False) / naive_rows,
                   "template_bytes": templates.stats()["bytes"]}
            rows.append(row)
            log(f"{depth:>6} {batch.seq_len:>6} {row['naive_s_per_sample']:>15.3f} "
                f"{row['shared_first_s_per_sample']:>11.3f} {row['shared_reuse_s_per_sample']:>13.3f} "
                f"{row['shared_reuse_decode_s_per_sample']:>12.3f} "
                f"{row['ratio_first']:>9.3f} {row['ratio_reuse']:>11.3f} {row['limit_first']:>9.3f} "
                f"{row['limit_reuse']:>11.3f}")
    return rows
