"""Several prepared batches as the rows of one forward: `join`.

Activation patching between two inputs runs both in one forward (nnsight 0.8.1 batches
several ``tracer.invoke`` inputs only when they are text; a vision-language model's pixel
inputs it refuses to batch, so mech joins the prepared batches itself): `mech.Patch`
reads the source rows' activation and writes it into the target rows at the same layer.
Rows do not interact in a forward, so each part computes what it computes alone (up to
the last bits that a different amount of left padding moves).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from .batch import Batch

# Inputs with one value per token ([rows, seq]): left-padded to the joint length.
PER_TOKEN = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


def _left_pad(value: torch.Tensor, seq: int, fill) -> torch.Tensor:
    return torch.nn.functional.pad(value, (seq - value.shape[1], 0), value=fill)


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """Per-image inputs (pixels, grids, sizes) along dim 0; trailing dims padded with 0 to the
    largest (LLaVA-NeXT's tiles per image: the model reads each image's own count)."""
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for v in values:
        pad = [p for d in reversed(range(1, v.dim())) for p in (0, shape[d - 1] - v.shape[d])]
        padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
    return torch.cat(padded)


def join(model, *batches: Batch) -> Batch:
    """One `Batch` holding the rows of ``batches`` in order, left-padded together.

    ``extras["parts"]`` is each part's ``(first row, rows, name)``; the name is also put in
    the part's own ``extras["part"]``, so `mech.Patch(source=part)` finds its rows. Inputs
    equal what ``model.prepare`` gives for all the rows at once.
    """
    if len(batches) < 2:
        raise ValueError(f"join takes two or more batches, got {len(batches)}")
    keys = set(batches[0].inputs)
    for i, b in enumerate(batches[1:], 1):
        if set(b.inputs) != keys:
            raise ValueError(f"join: batch {i} has inputs {sorted(b.inputs)}, batch 0 {sorted(keys)}; join batches "
                             "prepared by the same model")
    seq = max(b.seq_len for b in batches)
    pad_id = model.processor.tokenizer.pad_token_id
    inputs = {}
    for key in sorted(keys - {"position_ids"}):  # positions follow from the joint mask
        values = [b.inputs[key].cpu() for b in batches]
        if key in PER_TOKEN:
            fill = pad_id if key == "input_ids" else PER_TOKEN[key]
            inputs[key] = torch.cat([_left_pad(v, seq, fill) for v in values])
        else:
            inputs[key] = _stack(values)
    joined = Batch.from_inputs(inputs, model.image_token_id, [p for b in batches for p in b.prompts],
                               None if any(b.ids is None for b in batches) else [i for b in batches for i in b.ids],
                               mask_positions="position_ids" in keys)
    if all(b.image_sizes is not None for b in batches):
        joined.image_sizes = [sizes for b in batches for sizes in b.image_sizes]
    grids = [b.grids for b in batches]
    reasons = [g for g in grids if g is None or isinstance(g, str)]
    joined.grids = reasons[0] if reasons else [g for part in grids for g in part]
    starts = torch.tensor([0] + [b.size for b in batches]).cumsum(0).tolist()
    for b in batches:  # a name for each part, so that its rows are found without shipping it
        b.extras.setdefault("part", secrets.token_hex(8))
    joined.extras["parts"] = tuple((start, b.size, b.extras["part"]) for start, b in zip(starts, batches))
    questions = [b.extras.get("question") for b in batches]
    if all(q is not None for q in questions):
        joined.extras["question"] = torch.cat([_left_pad(q.cpu(), seq, False) for q in questions])
    else:
        joined.extras["question_reason"] = "a joined part does not know its questions' tokens"
    return joined.to(model.device)


@dataclass(frozen=True)
class Part:
    """A joined part by its name alone: what a `mech.Patch` ships instead of the batch."""

    key: str


def part_key(part) -> str | None:
    """The name `join` gave ``part`` (a `Batch` or a `Part`), or None."""
    return part.key if isinstance(part, Part) else part.extras.get("part")


def part_rows(batch: Batch, part) -> range | None:
    """The rows ``part`` (a `Batch` or its `Part`) occupies in ``batch`` (a `join` of it), or None."""
    key = part_key(part)
    for start, size, name in batch.extras.get("parts", ()):
        if key is not None and name == key:
            return range(start, start + size)
    return None
