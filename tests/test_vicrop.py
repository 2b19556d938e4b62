"""ViCrop: the crop-box search against brute force, grid geometry, and an end-to-end run."""

import numpy as np
import pytest

import mech
from mech.vicrop import RATIOS, ViCrop, crop_box, grid_region, two_image_prompt, window_sums
from tiny_models import tiny_llava, tiny_samples


def brute_force(att, image_size, crop_size):
    """Every window at every ViCrop scale, summed cell by cell; the sharpest scale's best window."""
    gh, gw = att.shape
    cell_w, cell_h = image_size[0] / gw, image_size[1] / gh
    best = None
    for ratio in RATIOS:
        bw, bh = min(int(crop_size * ratio / cell_w), gw), min(int(crop_size * ratio / cell_h), gh)
        if gw - bw < 1 and gh - bh < 1:
            continue
        sums = {}
        for y in range(gh - bh + 1):
            for x in range(gw - bw + 1):
                sums[x, y] = sum(att[yy, xx] for yy in range(y, y + bh) for xx in range(x, x + bw))
        (x, y), top = max(sums.items(), key=lambda kv: (kv[1], -kv[0][1], -kv[0][0]))
        around = [sums[k] for k in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)) if k in sums]
        sharp = (top - np.mean(around)) / (bw * bh)
        if best is None or sharp > best[0]:
            best = (sharp, ratio, (x, y, bw, bh))
    return best


def test_window_sums_equal_brute_force():
    att = np.random.default_rng(0).random((7, 9))
    for bw, bh in [(1, 1), (3, 2), (9, 7), (4, 6)]:
        sums = window_sums(att, bw, bh)
        expected = [[att[y:y + bh, x:x + bw].sum() for x in range(9 - bw + 1)] for y in range(7 - bh + 1)]
        np.testing.assert_allclose(sums, expected)


@pytest.mark.parametrize("peak", [(3, 4), (20, 18), (0, 23)])
def test_crop_box_finds_a_known_peak(peak):
    rng = np.random.default_rng(1)
    att = rng.random((24, 24)) * 0.1
    py, px = peak
    att[max(0, py - 1):py + 2, max(0, px - 1):px + 2] += 5.0  # a 3x3 hot spot
    box, info = crop_box(att, (1344, 1344), 336)  # 56 px cells: 6-patch windows at ratio 1
    sharp, ratio, window = brute_force(att, (1344, 1344), 336)
    assert info["ratio"] == ratio and tuple(info["window"]) == window
    assert info["sharpness"] == pytest.approx(sharp)
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= 1344 and 0 <= y1 < y2 <= 1344
    assert x2 - x1 == pytest.approx(336 * ratio, abs=1) and y2 - y1 == pytest.approx(336 * ratio, abs=1)
    assert x1 <= px * 56 + 28 <= x2 and y1 <= py * 56 + 28 <= y2  # the peak's centre is inside


def test_crop_box_keeps_small_images_whole():
    att = np.random.default_rng(2).random((4, 4))
    box, info = crop_box(att, (64, 64), 64)  # crop as large as the image: ViCrop keeps it all
    assert box == (0, 0, 64, 64) and info["ratio"] == 0


def test_grid_region_follows_the_centre_crop():
    _, processor = tiny_llava("llava-1.5")  # shortest edge 32, centre crop 32 x 32
    assert grid_region(processor.image_processor, 80, 40) == (20.0, 0.0, 40.0, 40.0)
    assert grid_region(processor.image_processor, 30, 90) == (0.0, 30.0, 30.0, 30.0)
    # a box found on the grid lands inside the central square
    att = np.zeros((4, 4))
    att[0, 0] = 1.0
    box, _ = crop_box(att, (80, 40), 10, grid_region(processor.image_processor, 80, 40))
    assert box[0] >= 20 and box[2] <= 60


def test_vicrop_end_to_end_on_a_tiny_model():
    module, processor = tiny_llava("llava-1.5", layers=4)
    model = mech.load(module, processor=processor)
    samples = tiny_samples(3, sizes=[(40, 50), (30, 90), (64, 40)])
    vicrop = ViCrop(crop_size=12)  # smaller than the images, so it really crops
    assert vicrop.attention_layer(model) == 2  # 14/32 of 4 layers
    batch = model.prepare(samples, question_prompt=mech.prompts.question_prompt)  # as the runner does
    boxes, infos = vicrop.boxes(model, [s.image for s in samples], batch.prompts)
    for box, sample in zip(boxes, samples):
        w, h = sample.image.size
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    prompt = two_image_prompt(batch.prompts[0])
    assert prompt.count("<image>") == 2 and prompt.startswith("USER: <image>\n<image>\n")
    new, extras = vicrop.generate(model, batch, 3, samples)
    assert new.shape[0] == 3 and [e["box"] for e in extras] == [list(b) for b in boxes]
    both = model.prepare(prompts=[two_image_prompt(p) for p in batch.prompts],
                         images=[im for s, b in zip(samples, boxes) for im in (s.image, s.image.crop(b))])
    assert (both.image_counts == 2 * batch.image_counts).all()
    results = mech.run(model, samples, decoder=vicrop, batch_size=3, max_new_tokens=3, progress=False)
    assert [r.extras["box"] for r in results.records] == [list(b) for b in boxes]
    with pytest.raises(ValueError, match="llava-next is not supported"):
        next_module, next_processor = tiny_llava("llava-next")
        ViCrop().validate(mech.load(next_module, processor=next_processor))
