"""The prompt around a question: the model's own chat template, as lmms-eval builds it.

lmms-eval's ``llava_hf`` model turns a task's text into one user turn, ``"<image>\\n"`` +
text, and applies the chat template with the generation prompt added. mech does the
same, choosing the template in this order:

1. ``template=`` given to `mech.load`: a format string with ``{question}`` and one
   ``<image>`` (``TEMPLATES`` names a few);
2. the processor's chat template (llava-hf and newer hub processors carry one), fed the
   typed content ``[{"type": "image"}, {"type": "text", "text": text}]`` it expects;
3. the tokenizer's chat template, fed ``"<image>\\n" + text`` as a plain string;
4. lmms-eval's fallback: the vicuna template with its system line.

`PromptTemplate.text` is the exact template used (Jinja source or format string); it is
recorded in every chunk fingerprint and study dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["PromptTemplate", "resolve", "TEMPLATES", "VICUNA_FALLBACK", "IMAGE_TOKEN"]

IMAGE_TOKEN = "<image>"
# lmms-eval's VICUNA_CHAT_TEMPLATE rendered for one user turn with the generation prompt.
VICUNA_FALLBACK = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                   "gives helpful, detailed, and polite answers to the user's questions. "
                   "USER: <image>\n{question} ASSISTANT:")
TEMPLATES = {
    "vicuna": "USER: <image>\n{question} ASSISTANT:",      # LLaVA-1.5 conversation format
    "mistral": "[INST] <image>\n{question} [/INST]",       # LLaVA-NeXT (mistral) format
    "vicuna-system": VICUNA_FALLBACK,
}


@dataclass(frozen=True)
class PromptTemplate:
    """How `render` builds a prompt: ``source`` is ``"given"``, ``"processor chat template"``,
    ``"tokenizer chat template"`` or ``"lmms-eval vicuna fallback"``; ``text`` the template."""

    source: str
    text: str

    placeholder: str = IMAGE_TOKEN  # the family's image placeholder

    def render(self, processor, question: str) -> str:
        if self.source == "processor chat template":
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        if self.source == "tokenizer chat template":
            turn = [{"role": "user", "content": f"{self.placeholder}\n{question}"}]
            return processor.tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        return self.text.replace("{question}", question)


def resolve(processor, template: str | None = None, placeholder: str = IMAGE_TOKEN) -> PromptTemplate:
    """The `PromptTemplate` for ``processor`` (None: structure-only models) and an
    optional ``template`` (a format string or a name in `TEMPLATES`); ``placeholder`` is
    the family's image placeholder (the named templates and the fallback are LLaVA's)."""
    if template is not None:
        text = TEMPLATES.get(template, template)
        if text.count(placeholder) != 1 or "{question}" not in text:
            raise ValueError(f"template {template!r} must contain exactly one {placeholder} and "
                             f"'{{question}}', or be one of {', '.join(TEMPLATES)} (LLaVA's)")
        return PromptTemplate("given", text, placeholder)
    for source, owner in (("processor", processor), ("tokenizer", getattr(processor, "tokenizer", None))):
        chat = getattr(owner, "chat_template", None)
        if chat:
            text = chat if isinstance(chat, str) else json.dumps(chat, sort_keys=True)
            return PromptTemplate(f"{source} chat template", text, placeholder)
    if placeholder != IMAGE_TOKEN:
        raise ValueError(f"the processor has no chat template and lmms-eval's fallback is LLaVA's; pass "
                         f"template= with {placeholder} and {{question}}")
    return PromptTemplate("lmms-eval vicuna fallback", VICUNA_FALLBACK)
