"""Which token positions an analysis primitive reads or writes, per row of a batch.

A *positions* argument (`mech.Cache`, `mech.Patch`, `mech.LogitLens`) is one of

* ``"image"``: the image tokens (the batch's image layout, `mech.Batch.image_index`);
* ``"last"``: the last prompt token (with left padding, the last position of every row);
* ``"text"``: every token after the last image token (the question and the template
  around it);
* ``"question"``: the question's own tokens (located when the batch is prepared from
  samples or questions; `question_mask`);
* ``"all"``: every non-padding position (a ``seq x seq`` attention pattern is kept only
  when this is asked for);
* explicit indices, a sequence of ints counted in each row's own prompt: ``0`` is its
  first token, ``-1`` its last, so left padding never shifts them;
* a ``[batch, seq]`` bool mask.

`select` turns it into the padded layout the image tokens use: ``index [batch, P]`` (the
sequence position of each row's j-th chosen token, in sequence order; padded slots hold
``seq``) and ``valid [batch, P]``, ``P`` the largest count in the batch. Only those
``P`` slots are ever kept: memory follows what was asked.
"""

from __future__ import annotations

from typing import Any

import torch

from .batch import Batch, image_layout

NAMED = ("image", "last", "text", "question", "all")


def check(positions: Any, what: str = "positions") -> None:
    """ValueError unless ``positions`` is a valid positions argument (before any model work)."""
    if isinstance(positions, str):
        if positions not in NAMED:
            raise ValueError(f"{what}={positions!r}; use one of {', '.join(map(repr, NAMED))}, a list of token "
                             "indices counted in each prompt (0 first, -1 last), or a [batch, seq] bool mask")
        return
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or positions.dim() != 2:
            raise ValueError(f"{what}: a tensor must be a [batch, seq] bool mask, got {positions.dtype} of shape "
                             f"{tuple(positions.shape)}")
        return
    try:
        indices = list(positions)
    except TypeError:
        raise ValueError(f"{what}={positions!r}; use a name ({', '.join(NAMED)}), a list of ints or a mask") from None
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"{what}={positions!r}: give at least one integer token index (0 first, -1 last)")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{what}={positions!r}: an index occurs twice")


def mask(batch: Batch, positions: Any) -> torch.Tensor:
    """``[batch, seq]`` bool: the chosen positions of each row."""
    check(positions)
    device = batch.image_mask.device
    real = batch.inputs["attention_mask"].bool().to(device)
    if isinstance(positions, torch.Tensor):
        if tuple(positions.shape) != (batch.size, batch.seq_len):
            raise ValueError(f"positions mask of shape {tuple(positions.shape)}; this batch needs "
                             f"[{batch.size}, {batch.seq_len}]")
        return positions.to(device) & real
    if positions == "image":
        return batch.image_mask
    if positions == "last":
        return batch.last_token.to(device)
    if positions == "text":
        return batch.text_after_image.to(device)
    if positions == "all":
        return real
    if positions == "question":
        found = batch.extras.get("question")
        if found is None:
            raise ValueError("positions='question': this batch does not know its questions' tokens ("
                             f"{batch.extras.get('question_reason', 'it was not prepared from samples or questions')})"
                             "; prepare it with model.prepare(samples) or model.prepare(questions=..., images=...)")
        return found.to(device)
    lengths = real.sum(-1)
    out = torch.zeros_like(real)
    rows = torch.arange(batch.size, device=device)
    for i in positions:
        if bool((lengths <= i).any()) or bool((lengths < -i).any()):
            raise ValueError(f"positions index {i} is outside a prompt of {int(lengths.min())} tokens (the "
                             f"shortest in this batch); indices run 0..{int(lengths.min()) - 1} or -1..-"
                             f"{int(lengths.min())}")
        column = batch.seq_len + i if i < 0 else batch.seq_len - lengths + i  # left padding
        out[rows, column] = True
    return out


def select(batch: Batch, positions: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, valid)`` ``[batch, P]`` of the chosen positions (see the module docstring);
    ``"image"`` is exactly the batch's image layout."""
    if isinstance(positions, str) and positions == "image":
        return batch.image_index, batch.image_valid
    return image_layout(mask(batch, positions))


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-position values ``[batch, seq, ...]`` -> ``[batch, P, ...]`` at ``index``
    ``[batch, P]``; padded slots (index == seq) read 0."""
    padded = torch.nn.functional.pad(values, (0, 0) * (values.dim() - 2) + (0, 1))
    index = index.to(values.device).view(*index.shape, *([1] * (values.dim() - 2)))
    return padded.gather(1, index.expand(-1, -1, *values.shape[2:]))


def scatter(values: torch.Tensor, index: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``values`` ``[batch, seq, ...]`` with ``new`` ``[batch, P, ...]`` written at ``index``
    ``[batch, P]`` (padded slots, index == seq, write nowhere); a new tensor."""
    padded = torch.nn.functional.pad(values, (0, 0) * (values.dim() - 2) + (0, 1))
    index = index.to(values.device).view(*index.shape, *([1] * (values.dim() - 2)))
    out = padded.scatter(1, index.expand(-1, -1, *values.shape[2:]), new.to(values.dtype))
    return out[:, :values.shape[1]]


def question_mask(tokenizer, prompts, questions, input_ids: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """``([batch, seq] bool, "")``: the tokens of each row's question in the processed
    ``input_ids`` (left-padded, image placeholders expanded), or ``(None, why)``.

    The question is found in its prompt string and mapped to tokens through the fast
    tokenizer's character offsets; the image tokens come before it, so its tokens are
    counted from the end of the row, and the row's tail must be those very tokens.
    """
    if not getattr(tokenizer, "is_fast", False):
        return None, "its tokenizer gives no character offsets (not a fast tokenizer)"
    out = torch.zeros(input_ids.shape, dtype=torch.bool)
    seq = input_ids.shape[1]
    for b, (prompt, question) in enumerate(zip(prompts, questions)):
        start = prompt.rfind(question)
        if not question or start < 0:
            return None, f"row {b}'s question is not in its prompt"
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        inside = [i for i, (a, z) in enumerate(offsets) if a < start + len(question) and z > start and z > a]
        if not inside:
            return None, f"row {b}'s question has no tokens"
        tail = ids[inside[0]:]
        if input_ids[b, seq - len(tail):].tolist() != tail:
            return None, f"row {b}'s tokens after the question differ from the processor's"
        out[b, torch.tensor(inside) - len(ids) + seq] = True
    return out, ""
