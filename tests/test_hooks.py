"""The named hook points' table, positions, joined batches and the analysis primitives'
refusals of bad input (one clear line, before any model work)."""

import re
from pathlib import Path

import pytest
import torch

import mech
from mech.hooks import HOOK_POINTS
from tiny_models import QUESTIONS, random_images, tiny_llava

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_one_line_per_hook_point_with_its_shapes():
    text = README.read_text()
    section = text[text.index("## Beyond the paper"):]
    section = section[:section.index("\n## ", 1)]
    rows = {m.group(1): line for line in section.splitlines() if (m := re.match(r"\| `([\w.]+)` \|", line))}
    assert set(rows) == set(HOOK_POINTS)
    for name, point in HOOK_POINTS.items():
        assert f"`{point.shape}`" in rows[name] and f"`{point.recorded}`" in rows[name], name
        assert point.transformer_lens in rows[name]


def test_joined_batches_equal_one_prepare_and_questions_are_found(model):
    from conftest import SIZES

    images = random_images(3, sizes=SIZES) + random_images(2, seed=4, sizes=[(64, 64), (20, 90)])
    questions = QUESTIONS + ["what?", "is the red circle green, yes?"]
    first, second = model.prepare(questions=questions[:3], images=images[:3]), \
        model.prepare(questions=questions[3:], images=images[3:])
    together = model.prepare(questions=questions, images=images)
    joined = mech.join(model, first, second)
    assert set(joined.inputs) == set(together.inputs)
    for key, value in together.inputs.items():
        assert joined.inputs[key].shape == value.shape and torch.equal(joined.inputs[key], value), key
    assert torch.equal(joined.image_index, together.image_index)
    assert [part[:2] for part in joined.extras["parts"]] == [(0, 3), (3, 2)]
    assert joined.image_sizes == together.image_sizes
    for got, want in zip(joined.image_grid, together.image_grid, strict=True):
        assert torch.equal(got.box.nan_to_num(-1), want.box.nan_to_num(-1))
    assert torch.equal(joined.extras["question"], together.extras["question"])
    tokenizer = model.processor.tokenizer
    for row, question in enumerate(questions):
        ids = together.inputs["input_ids"][row][together.extras["question"][row]]
        assert tokenizer.decode(ids).replace(" ", "") == question.replace(" ", "")
    _, valid = mech.positions.select(together, "question")
    assert valid.sum(-1).tolist() == together.extras["question"].sum(-1).tolist()


@pytest.fixture(scope="module")
def llava():
    module, processor = tiny_llava("llava-1.5")
    model = mech.load(module, processor=processor)
    batch = model.prepare(questions=QUESTIONS, images=random_images(3))
    return model, batch


def test_positions_by_name_index_and_mask(llava):
    _, batch = llava
    lengths = batch.inputs["attention_mask"].sum(-1)
    index, _ = mech.positions.select(batch, [0, -1])
    assert index[:, 1].tolist() == [batch.seq_len - 1] * 3
    assert index[:, 0].tolist() == (batch.seq_len - lengths).tolist()  # each row's first token
    text = mech.positions.mask(batch, "text")
    assert not bool((text & batch.image_mask).any()) and bool(text[:, -1].all())
    everything = mech.positions.mask(batch, "all")
    assert torch.equal(everything, batch.inputs["attention_mask"].bool())
    chosen = torch.zeros(batch.size, batch.seq_len, dtype=torch.bool)
    chosen[:, -2] = True
    assert mech.positions.select(batch, chosen)[0].tolist() == [[batch.seq_len - 2]] * 3
    values = torch.arange(batch.size * batch.seq_len * 2.0).view(batch.size, batch.seq_len, 2)
    picked = mech.positions.gather(values, batch.image_index)
    assert torch.equal(mech.positions.scatter(values, batch.image_index, picked), values)


BAD = {
    "unknown name": (lambda: mech.Cache("resid_mid"), "resid_mid.*not a hook point.*resid_pre"),
    "a TransformerLens name": (lambda: mech.Cache("blocks.2.hook_resid_pre"), "hook_resid_pre is 'resid_pre'"),
    "layer out of range": (lambda: mech.Cache("resid_pre", layers=[9]), "layer 9 is out of range"),
    "positions name": (lambda: mech.Cache("resid_pre", positions="image-tokens"), "positions='image-tokens'"),
    "positions float": (lambda: mech.Cache("resid_pre", positions=[0.5]), "at least one integer"),
    "image_embeds elsewhere": (lambda: mech.Cache(["image_embeds"], positions="last"),
                               "image_embeds exist at the image tokens only"),
    "pattern patched": (lambda: mech.Patch("attn.pattern", layers=[1], source={}), "cannot be patched"),
    "source type": (lambda: mech.Patch("resid_pre", layers=[1], source=3), "source=int"),
    "cache lacks name": (lambda: mech.Patch("mlp_out", layers=[1], source={"valid": torch.ones(1)}),
                         "holds no 'mlp_out'"),
    "image_embeds layers": (lambda: mech.Patch("image_embeds", layers=[1], source={}), "have no layer"),
    "top_k": (lambda: mech.LogitLens(top_k=0), "top_k=0"),
    "targets": (lambda: mech.LogitLens(targets=[10 ** 6]), "outside the vocabulary"),
    "residual": (lambda: mech.LogitLens(at="mlp_out"), "at='mlp_out'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_before_model_work(llava, case):
    model, batch = llava
    make, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        with torch.no_grad(), model.trace(batch):
            mech.apply(model, batch, make())


def test_patch_refuses_unjoined_sources_and_unequal_pairs(llava):
    model, batch = llava
    other = model.prepare(questions=["what shape is red and round?"] * 3, images=random_images(3, seed=2))
    with pytest.raises(ValueError, match="not part of the traced one"):
        with torch.no_grad(), model.trace(batch):
            mech.apply(model, batch, mech.Patch("resid_pre", layers=[1], source=other))
    both = mech.join(model, batch, other)
    with pytest.raises(ValueError, match=r"target rows hold \[.*\] positions and the source's"):
        with torch.no_grad(), model.trace(both):
            mech.apply(model, both, mech.Patch("resid_pre", layers=[1], positions="question", source=other))
    from_prompts = model.prepare(prompts=batch.prompts, images=random_images(3))
    with pytest.raises(ValueError, match="does not know its questions' tokens"):
        with torch.no_grad(), model.trace(from_prompts):
            mech.apply(model, from_prompts, mech.Cache("resid_pre", positions="question"))
