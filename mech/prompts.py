"""Question prompts per benchmark, as lmms-eval's tasks build them for LLaVA.

``question_prompt`` returns the user text that goes where ``{question}`` goes in the
model family's chat template (the template, and the image token, are the model
handle's business).
"""

from __future__ import annotations

from .datasets.sample import Sample

__all__ = ["question_prompt", "POST_PROMPTS", "SHORT_ANSWER", "UNANSWERABLE"]

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."

# lmms-eval 0.7.3's ``default`` post_prompt of each task (vqav2_val, gqa, textvqa_val,
# ok_vqa_val2014, vizwiz_vqa_val, docvqa_val); LLaVA-1.5's own eval files use the same
# short-answer line. `mech.datasets.register` adds entries.
POST_PROMPTS: dict[str, str] = {
    "vqav2": SHORT_ANSWER,
    "gqa": SHORT_ANSWER,
    "textvqa": SHORT_ANSWER,
    "okvqa": UNANSWERABLE + SHORT_ANSWER,
    "vizwiz": UNANSWERABLE + SHORT_ANSWER,
    "docvqa": SHORT_ANSWER,
    # The embedded tiny model was trained on bare questions with one-word answers; its
    # word-level vocabulary has no "answer/single/phrase": the post-prompt would be <unk>s.
    "shapes": "",
    **{f"shapes-{kind}": "" for kind in ("dots", "speckle", "crowd")},
    "easyvqa": SHORT_ANSWER,
}

# lmms-eval's textvqa/vizwiz doc_to_text call str.capitalize(), which also lower-cases
# the rest of the question ("GNC" -> "gnc"); kept so prompts match token for token.
_CAPITALIZE = frozenset({"textvqa", "vizwiz"})


def question_prompt(sample: Sample, *, post_prompt: str | None = None,
                    ocr: bool | None = None) -> str:
    """``{question}{ocr reference}{post_prompt}`` for ``sample``, as lmms-eval builds it.

    ``post_prompt`` replaces the dataset's default (``POST_PROMPTS``; unknown datasets
    get the short-answer line); pass ``""`` for the bare question. ``ocr`` (TextVQA)
    appends LLaVA's ``"\\nReference OCR token: a, b, c"`` line; by default it follows
    ``sample.extras["use_ocr"]``, set by ``load("textvqa", ocr=True)``.
    """
    question = sample.question
    if sample.dataset in _CAPITALIZE:
        question = question.capitalize()
    if ocr is None:
        ocr = bool(sample.extras.get("use_ocr", False))
    ocr_ref = ""
    if ocr:
        if "ocr_tokens" not in sample.extras:
            raise ValueError(f"sample {sample.id} ({sample.dataset}) has no ocr_tokens in extras")
        ocr_ref = "\nReference OCR token: " + ", ".join(sample.extras["ocr_tokens"])
    if post_prompt is None:
        post_prompt = POST_PROMPTS.get(sample.dataset, SHORT_ANSWER)
    return f"{question}{ocr_ref}{post_prompt}"
