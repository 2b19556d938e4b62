"""What every way of generating shares: the `Decoder` protocol the runner runs instead of
``model.generate`` (DoLa, ViCrop), and where a row's answer ends (EOS ids, new-token counts)."""

from __future__ import annotations

import torch

__all__ = ["Decoder", "eos_ids", "count_new_tokens"]


class Decoder:
    """Base of decoders that replace ``model.generate`` in the runner (DoLa, ViCrop).

    A decoder is a frozen dataclass (its fields are its parameters: they enter the chunk
    fingerprint and the run's slug) with
    ``generate(model, batch, max_new_tokens, samples) -> (new_ids, extras)``: greedy new
    tokens ``[batch, new]`` (padding after EOS, as ``generate`` pads) and one dict of
    plain per-sample values per row. ``samples`` are the batch's samples, for decoders
    that need more than the prepared batch (ViCrop crops the original images).
    """

    def validate(self, model) -> None:
        pass

    def generate(self, model, batch, max_new_tokens: int, samples) -> tuple[torch.Tensor, list[dict]]:
        raise NotImplementedError


def eos_ids(model) -> set[int]:
    eos = model.nn._module.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    tok = model.processor.tokenizer.eos_token_id
    return set(eos) | ({tok} if tok is not None else set())


def count_new_tokens(new: torch.Tensor, eos: set[int]) -> list[int]:
    """Tokens before the first EOS in each row of ``new`` ``[batch, new]`` (padding only
    ever follows an EOS: generate pads rows that finished early)."""
    if not eos:
        return [new.shape[1]] * new.shape[0]
    stop = torch.isin(new, torch.tensor(sorted(eos)))
    first = torch.where(stop.any(1), stop.int().argmax(1), torch.tensor(new.shape[1]))
    return first.tolist()
