"""How each dataset's answers are generated: lmms-eval 0.7.3's task configs.

Greedy decoding, up to ``max_new_tokens`` new tokens or EOS; the prediction is the
whole decoded continuation (special tokens skipped), stripped. The caps are the tasks'
``generation_kwargs.max_new_tokens`` (VQAv2 and GQA 16, DocVQA 32); TextVQA, OK-VQA and
VizWiz set none, so lmms-eval's ``llava_hf`` model generates up to its default of 1024.

``until`` lists each task's stop strings (``generation_kwargs.until``, or the config's
``"\\n\\n"`` default). They are recorded, not applied: lmms-eval's LLaVA models
(``llava_hf``, ``llava``) take them out of the generation arguments and never cut the
output at them, so applying them would score other text than lmms-eval does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Generation", "GENERATION", "LLAVA_HF_MAX_NEW_TOKENS", "settings", "register", "caps"]

LLAVA_HF_MAX_NEW_TOKENS = 1024  # lmms-eval llava_hf's cap when a task sets none


@dataclass(frozen=True)
class Generation:
    """One dataset's generation settings and the lmms-eval task they come from."""

    max_new_tokens: int
    until: tuple[str, ...] = ()
    task: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "until": list(self.until)}


GENERATION: dict[str, Generation] = {
    "vqav2": Generation(16, ("\n\n",), "vqav2_val"),
    "gqa": Generation(16, ("\n\n",), "gqa"),
    "textvqa": Generation(LLAVA_HF_MAX_NEW_TOKENS, ("ASSISTANT:",), "textvqa_val"),
    "okvqa": Generation(LLAVA_HF_MAX_NEW_TOKENS, ("ASSISTANT:",), "ok_vqa_val2014"),
    "vizwiz": Generation(LLAVA_HF_MAX_NEW_TOKENS, ("ASSISTANT:",), "vizwiz_vqa_val"),
    "docvqa": Generation(32, ("\n\n",), "docvqa_val"),
    # Not lmms-eval tasks: short-answer sets, generated like VQAv2 / GQA.
    "shapes": Generation(16, (), ""),
    **{f"shapes-{kind}": Generation(16, (), "") for kind in ("dots", "speckle", "crowd")},
    "easyvqa": Generation(16, (), ""),
}
_DEFAULT = Generation(16, (), "")


def settings(dataset: str) -> Generation:
    """``dataset``'s `Generation` (unknown datasets: 16 new tokens, as VQAv2)."""
    return GENERATION.get(dataset, _DEFAULT)


def register(dataset: str, max_new_tokens: int = 16, until: tuple[str, ...] = ()) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens for {dataset!r} must be an integer >= 1, got {max_new_tokens!r}")
    GENERATION[dataset] = Generation(max_new_tokens, tuple(until), "")


def caps(datasets, max_new_tokens: int | None = None) -> dict[str, int]:
    """``{dataset: cap}``: ``max_new_tokens`` for all when given, else each one's own."""
    return {d: max_new_tokens if max_new_tokens is not None else settings(d).max_new_tokens
            for d in dict.fromkeys(datasets)}
