"""Offline LLaVA processors: a word-level tokenizer plus a CLIP-style image processor.

Real LLaVA processors come from the hub; ours are built from a word list so that the
embedded tiny model and the tiny random test models run without any download, while
``processor(text=..., images=...)`` expands ``<image>`` exactly as real LLaVA does.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
# A processor chat template in the llava-hf style (typed content: images first, then
# text): one user turn renders "USER: <image>\n{text} ASSISTANT:", LLaVA-1.5's format.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Words of both chat templates (LLaVA-1.5 "USER: <image>\n... ASSISTANT:" and
# mistral NeXT "[INST] <image>\n... [/INST]"), lower-cased like every other word.
TEMPLATE_WORDS = ("user", "assistant", ":", "[", "]", "inst", "/", "?", ".", ",", "'")


def build_tokenizer(words: Iterable[str], special: Sequence[str] = (), newline: bool = False,
                    **named: str) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` plus the template words.

    ``newline=True`` keeps ``"\n"`` as a token of its own (the last id, so every other id is
    as without it): in ``USER: <image>\n{question}`` it is the one text token between the
    image and the question.

    Punctuation is split off words, so ``"ASSISTANT:"`` is two tokens. Unknown words map
    to ``<unk>``. ``<image>`` and ``special`` (another family's markers, e.g.
    ``<|image_pad|>``) are special tokens, never split or lower-cased; ``named`` makes
    some of them attributes a family's processor reads (``boi_token="<start_of_image>"``
    gives ``tokenizer.boi_token`` and ``tokenizer.boi_token_id``).
    """
    specials = (*SPECIAL_TOKENS, *special)
    vocab: dict[str, int] = {}
    for token in (*specials, *TEMPLATE_WORDS, *words, *(["\n"] if newline else [])):
        token = token if token in specials else token.lower()
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    split = ([pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces, not newlines
              pre_tokenizers.Split("\n", behavior="isolated")] if newline else [pre_tokenizers.WhitespaceSplit()])
    core.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", **named},
        padding_side="left",
        add_bos_token=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", *special]})
    return tokenizer


def build_processor(
    words: Sequence[str],
    *,
    family: str = "llava-1.5",
    image_size: int = 32,
    patch_size: int = 8,
    grid_pinpoints: Sequence[Sequence[int]] | None = None,
    chat_template: str | None = LLAVA_CHAT_TEMPLATE,
    newline: bool = False,
):
    """A ``LlavaProcessor`` (family ``"llava-1.5"``) or ``LlavaNextProcessor``
    (``"llava-next"``) whose image processor resizes/crops to ``image_size`` and whose
    ``<image>`` expansion matches a CLIP tower with ``patch_size`` patches, a CLS token,
    and ``vision_feature_select_strategy="default"`` (the LLaVA-1.5 setting): one
    ``<image>`` per patch, ``(image_size // patch_size) ** 2`` per image (per tile for NeXT).
    ``chat_template``: the processor's chat template, as hub processors carry one
    (default `LLAVA_CHAT_TEMPLATE`; None builds a processor without one). ``newline``: see
    `build_tokenizer`.
    """
    tokenizer = build_tokenizer(words, newline=newline)
    common = dict(
        do_resize=True,
        size={"shortest_edge": image_size},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_convert_rgb=True,
    )
    if family == "llava-1.5":
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        image_processor = CLIPImageProcessorPil(**common)
        cls = LlavaProcessor
    elif family == "llava-next":
        from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

        pinpoints = grid_pinpoints or [[image_size, image_size], [image_size, 2 * image_size],
                                       [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
        image_processor = LlavaNextImageProcessorPil(
            **common, image_grid_pinpoints=[list(p) for p in pinpoints]
        )
        cls = LlavaNextProcessor
    else:
        raise ValueError(f"unknown family {family!r}; expected 'llava-1.5' or 'llava-next'")
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
