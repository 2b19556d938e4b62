"""Prompts through the chat template, on processors built offline with and without one."""

import pytest
from PIL import Image

import mech
from mech.templates import TEMPLATES, VICUNA_FALLBACK
from mech.zoo.processor import LLAVA_CHAT_TEMPLATE
from mech.zoo.random_llava import random_llava

QUESTION = "what color is the circle?\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next"])
def test_processor_chat_template_is_used(family):
    module, processor = random_llava(family, layers=1)
    model = mech.load(module, processor=processor)
    assert model.prompt_template.source == "processor chat template"
    assert model.template == LLAVA_CHAT_TEMPLATE
    expected = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False)
    assert model.prompt(QUESTION) == expected == f"USER: <image>\n{QUESTION} ASSISTANT:"


def test_without_a_chat_template_lmms_evals_vicuna_fallback():
    module, processor = random_llava(layers=1)
    processor.chat_template = None
    model = mech.load(module, processor=processor)
    assert model.prompt_template.source == "lmms-eval vicuna fallback"
    assert model.prompt(QUESTION) == VICUNA_FALLBACK.replace("{question}", QUESTION)
    assert model.prompt(QUESTION).startswith("A chat between a curious user")
    batch = model.prepare(questions=[QUESTION], images=[Image.new("RGB", (40, 40))])
    assert batch.image_counts.tolist() == [16]


def test_tokenizer_chat_template_gets_string_content():
    module, processor = random_llava(layers=1)
    processor.chat_template = None
    processor.tokenizer.chat_template = ("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}{% endfor %}"
                                         "{% if add_generation_prompt %} <<assistant>>{% endif %}")
    model = mech.load(module, processor=processor)
    assert model.prompt_template.source == "tokenizer chat template"
    assert model.prompt("hi?") == "<<user>> <image>\nhi? <<assistant>>"


def test_given_template_wins_and_is_checked():
    module, processor = random_llava(layers=1)
    model = mech.load(module, processor=processor, template="mistral")
    assert model.prompt_template.source == "given" and model.template == TEMPLATES["mistral"]
    assert model.prompt("a {b} c") == "[INST] <image>\na {b} c [/INST]"  # braces in questions are fine
    with pytest.raises(ValueError, match="exactly one <image>"):
        mech.load(module, processor=processor, template="USER: {question}")


def test_embedded_model_prompt_is_its_training_format():
    model = mech.load("tiny")
    assert model.prompt_template.source == "processor chat template"
    assert model.prompt("what shape is red?") == "USER: <image>\nwhat shape is red? ASSISTANT:"


def test_template_is_part_of_the_chunk_fingerprint():
    from mech.store import model_fingerprint

    module, processor = random_llava(layers=1)
    with_chat = model_fingerprint(mech.load(module, processor=processor))
    processor.chat_template = None
    without = model_fingerprint(mech.load(module, processor=processor))
    assert with_chat["template"] != without["template"]
    assert without["template_source"] == "lmms-eval vicuna fallback"


def test_load_leaves_the_callers_processor_alone():
    module, processor = random_llava(layers=1)
    processor.tokenizer.padding_side = "right"
    model = mech.load(module, processor=processor)
    assert processor.tokenizer.padding_side == "right"          # the caller's object is untouched
    assert model.processor.tokenizer.padding_side == "left"     # mech's copy pads left
    batch = model.prepare(questions=["what?", "what color is the circle?"], images=[Image.new("RGB", (40, 40))] * 2)
    assert bool(batch.inputs["attention_mask"][:, -1].all())    # last prompt token at -1 in every row


def test_attn_implementation_is_honoured_for_a_built_module():
    module, processor = random_llava(layers=2)
    assert module.config._attn_implementation == "sdpa"
    model = mech.load(module, processor=processor, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    batch = model.prepare(questions=["what?"], images=[Image.new("RGB", (40, 40))])
    import torch

    with torch.no_grad(), model.trace(batch):
        captured = mech.CaptureImageAttention(layers=[1], method="eager").apply(model, batch)
    assert torch.allclose(captured[1].sum(-1), torch.ones(1))
    kept = mech.load(module, processor=processor)                # not given: the module's own is kept
    assert kept.config._attn_implementation == "eager"


def test_offline_models_and_processors_are_public():
    from mech.zoo import build_processor, random_llava as public_random

    for family in ("llava-1.5", "llava-next"):
        module, processor = public_random(family, layers=1)
        assert mech.load(module, processor=processor).family.name == family
    assert build_processor(["red"], family="llava-next").chat_template
