"""Image-token grids (`mech.grid`, ``Batch.image_grid``) on every family, against the
processor's arithmetic and the model's own image features:

* every row of a batch of differently sized images gets a grid with exactly the image
  tokens the processor made (``input_ids == image_token_id``), in the batch's layout;
* with the vision tower's attention switched off (each token then reads only its own
  patches), the tokens whose boxes cover a marked region of the image are the ones whose
  features change when the mark moves, and none far from it; a mirrored grid fails;
* a changed token's tile is a crop whose pixels changed; LLaVA-NeXT/OneVision newline
  tokens hold the model's newline embedding;
* `mech.plots.overlay` draws a row's values in its view's box.
"""

import contextlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import mech
from mech import grid as mg

# (height, width) of each image, and two places (left, top, right, bottom) for its mark
MARKS = [((40, 50), (8, 8, 14, 14), (30, 22, 36, 28)), ((30, 90), (2, 10, 8, 16), (60, 5, 66, 11)),
         ((64, 40), (20, 2, 26, 8), (10, 50, 16, 56))]
MARGIN = 3.0  # image pixels: how far resampling carries a mark past its edge


def test_every_row_has_a_grid_of_its_image_tokens(model, batch):
    grids = batch.image_grid
    assert len(grids) == batch.size
    counts = batch.image_counts.tolist()
    for b, g in enumerate(grids):
        assert len(g) == counts[b] and g.box.shape == (counts[b], 4)
        assert ((g.col >= 0) == ~torch.isnan(g.box[:, 0])).all()
        assert set(g.image.tolist()) == {0} and g.image_sizes == [batch.image_sizes[b][0]]
        for i, v in enumerate(g.views):  # every token of a view inside its grid, each cell once
            keep = (g.view == i) & ~g.newline
            cells = set(zip(g.row[keep].tolist(), g.col[keep].tolist()))
            assert len(cells) == keep.sum() == v.rows * v.cols
        assert g.tile.max() < crops_of(model, batch, b)[1] or model.family.name.startswith("qwen")
    if model.family.name.startswith("qwen"):  # one token per merge x merge patches of image_grid_thw
        merge = model.config.vision_config.spatial_merge_size
        thw = batch.inputs["image_grid_thw"]
        assert [len(g) for g in grids] == (thw[:, 1] * thw[:, 2] // merge ** 2).tolist()
    # the count check stands between the grid and a processor setting it does not map
    reason = mg.batch_grids(model, batch.inputs, batch.image_sizes, [c + 1 for c in counts])
    assert isinstance(reason, str) and "tokens but the processor made" in reason
    assert pickle.loads(pickle.dumps(batch)).grids is None  # traces do not ship it


def crops_of(model, batch, b):
    """``(pixel crops of row b's image [n, ...], n)``: the processor's ``pixel_values`` of it."""
    pixels = batch.inputs["pixel_values"]
    if model.family.name in ("llava-next", "llava-onevision"):
        n = int((pixels[b].flatten(1).abs().sum(-1) > 0).sum())
        return pixels[b, :n], n
    if model.family.name == "internvl":  # tiles of all images in a row, one image per row here
        per_image = [int(g.tile.max()) + 1 for g in batch.image_grid]
        start = sum(per_image[:b])
        return pixels[start:start + per_image[b]], per_image[b]
    if model.family.name.startswith("qwen"):
        return None, 1
    return pixels[b:b + 1], 1


@contextlib.contextmanager
def local_vision(module):
    """Every attention of the vision tower outputs zeros: each token's features then come
    from its own patches (and merges or pools of neighbours) only."""
    tower = next(m for n, m in module.named_modules() if n.endswith(("vision_tower", "visual")))
    handles = []
    for name, sub in tower.named_modules():
        if name.rsplit(".", 1)[-1] in ("self_attn", "attn", "attention") and "Attention" in type(sub).__name__:
            handles.append(sub.register_forward_hook(
                lambda mod, args, out: (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple)
                else torch.zeros_like(out)))
    assert handles
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def image_features(model, batch):
    """Per row, the decoder's input at its image tokens ``[n_image_b, hidden]``."""
    layers = model.nn._module.model.language_model.layers
    seen = {}
    handle = layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.__setitem__("h", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model.nn._module(**batch.inputs)
    finally:
        handle.remove()
    counts = batch.image_counts.tolist()
    return [seen["h"][b, batch.image_index[b, :counts[b]]] for b in range(batch.size)]


def marked(size, box):
    pixels = np.full((*size, 3), 128, np.uint8)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = (255, 0, 0)
    return Image.fromarray(pixels)


def covers(boxes, mark, margin=0.0):
    left, top, right, bottom = mark
    return ((boxes[:, 0] < right + margin) & (boxes[:, 2] > left - margin)
            & (boxes[:, 1] < bottom + margin) & (boxes[:, 3] > top - margin))


def mark_mismatch(boxes, changed, mark):
    """``(tokens over the mark that did not change, changed tokens far from it)``."""
    return int((covers(boxes, mark) & ~changed).sum()), int((changed & ~covers(boxes, mark, MARGIN)).sum())


@pytest.mark.parametrize("size, first, second", MARKS)
def test_the_tokens_over_a_mark_are_the_ones_that_change(model, size, first, second):
    images = [marked(size, (0, 0, 0, 0)), marked(size, first), marked(size, second)]
    batch = model.prepare(questions=["what color is the circle?"] * 3, images=images)
    with local_vision(model.nn._module):
        plain, *moved = image_features(model, batch)
    g = batch.image_grid[0]
    width = size[1]
    mirrored = torch.stack([width - g.box[:, 2], g.box[:, 1], width - g.box[:, 0], g.box[:, 3]], -1)
    wrong = 0
    crops = [crops_of(model, batch, b)[0] for b in range(3)]
    for k, (mark, features) in enumerate(zip((first, second), moved), start=1):
        changed = (features - plain).abs().amax(-1) > 1e-4 * plain.abs().amax()
        assert mark_mismatch(g.box, changed, mark) == (0, 0)
        wrong += sum(mark_mismatch(mirrored, changed, mark))
        if crops[0] is not None:  # the crop each changed token reads changed
            moved_crops = (crops[k] - crops[0]).flatten(1).abs().amax(-1) > 0
            assert all(bool(moved_crops[t]) for t in g.tile[changed & ~g.newline].tolist())
        assert not bool(changed[g.newline].any())
    assert wrong > 0  # the check sees a wrong grid (the marks are not mirror-symmetric)


def test_newline_tokens_hold_the_models_newline(model, batch):
    g = batch.image_grid
    if model.family.name not in ("llava-next", "llava-onevision"):
        assert not any(bool(r.newline.any()) for r in g)
        return
    newline = model.nn._module.model.image_newline
    for b, features in enumerate(image_features(model, batch)):
        assert g[b].newline.sum() == g[b].views[-1].rows > 0
        assert torch.equal(features[g[b].newline], newline.expand(int(g[b].newline.sum()), -1).to(features.dtype))
        assert not (features[~g[b].newline] == newline).all(-1).any()


def test_overlay_draws_each_value_in_its_tokens_box(model, batch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mech import plots

    g = batch.image_grid[1]
    values = torch.arange(len(g), dtype=torch.float64)
    view = g.finest()
    shown = plots.overlay(Image.new("RGB", batch.image_sizes[1][0][::-1]), values, g)
    left, top, right, bottom = g.views[view].box
    assert tuple(shown.get_extent()) == (left, right, bottom, top)
    data = np.asarray(shown.get_array())
    keep = (g.view == view) & ~g.newline
    assert (data[g.row[keep], g.col[keep]] == values[keep].numpy()).all()
    assert np.isnan(data).sum() == 0
    plt.close("all")
    if len(g.views) > 1:  # the finest view has the most tokens per pixel (tiles, not the base)
        assert g.views[view].name == "tiles"
