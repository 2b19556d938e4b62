"""A prepared batch: the model inputs plus where the image tokens are.

Image positions always come from ``input_ids == config.image_token_id``; nothing
assumes 576 tokens or a fixed offset, so LLaVA-NeXT rows with different image-token
counts (anyres tiles plus newline tokens) live in one batch.

Values "per image token" (attention A(i), contrastive scores, soft-mask weights) use
one padded layout everywhere: shape ``[batch, n_image]`` where ``n_image`` is the
largest image-token count in the batch, row ``b`` holds its image tokens in sequence
order, and ``image_valid[b, j]`` says whether slot ``j`` is a real token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    """Model inputs (left-padded) and the image-token layout of each row.

    Attributes:
        inputs: keyword inputs of one forward: ``input_ids`` / ``attention_mask``
            ``[batch, seq]``, ``position_ids`` ``[batch, seq]`` (from the mask, as
            ``generate`` computes them; absent for families that compute their own),
            ``pixel_values`` and what else the family's processor returns
            (``image_sizes``, ``image_grid_thw``, ``token_type_ids``, ...).
        image_mask: ``[batch, seq]`` bool, True at image-token positions.
        image_index: ``[batch, n_image]`` long, sequence position of each image token;
            padded slots hold ``seq`` (one past the end).
        image_valid: ``[batch, n_image]`` bool, False on padded slots.
        prompts: the full prompt strings, template applied.
        ids: sample ids, when the batch was built from samples.
        image_sizes: each row's images' original ``(height, width)``, in prompt order.
    """

    inputs: dict[str, torch.Tensor]
    image_mask: torch.Tensor
    image_index: torch.Tensor
    image_valid: torch.Tensor
    prompts: list[str]
    ids: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    image_sizes: list[list[tuple[int, int]]] | None = None
    grids: Any = field(default=None, repr=False, compare=False)  # list[ImageGrid], or why there is none

    @classmethod
    def from_inputs(cls, inputs: dict[str, torch.Tensor], image_token_id: int, prompts, ids=None, *,
                    mask_positions: bool = True):
        """``mask_positions=False`` leaves position ids to the model (its own multimodal
        positions, `mech.families.qwen2_vl`)."""
        image_mask = inputs["input_ids"] == image_token_id
        index, valid = image_layout(image_mask)
        inputs = dict(inputs)
        if mask_positions:
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return cls(inputs, image_mask, index, valid, list(prompts), ids)

    @property
    def size(self) -> int:
        return self.image_mask.shape[0]

    @property
    def seq_len(self) -> int:
        return self.image_mask.shape[1]

    @property
    def image_counts(self) -> torch.Tensor:
        """``[batch]`` number of image tokens in each row."""
        return self.image_valid.sum(-1)

    @property
    def generate_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs for ``generate``, which derives ``position_ids`` itself at every step."""
        return {k: v for k, v in self.inputs.items() if k != "position_ids"}

    @property
    def text_after_image(self) -> torch.Tensor:
        """``[batch, seq]`` bool: non-padding positions after each row's last image token."""
        seq = torch.arange(self.seq_len, device=self.image_mask.device)
        last_image = torch.where(self.image_mask, seq, -1).amax(-1, keepdim=True)
        return (seq > last_image) & self.inputs["attention_mask"].bool()

    @property
    def last_token(self) -> torch.Tensor:
        """``[batch, seq]`` bool: the last prompt token (the query of attention capture)."""
        mask = torch.zeros_like(self.image_mask)
        mask[:, -1] = True  # left padding puts every row's last token at the end
        return mask

    @property
    def image_grid(self) -> list:
        """Per row, where each of its image tokens sits in its image: a `mech.grid.ImageGrid`
        (view, row, column, tile, newline, box in the original image's pixels), built by
        the family adapter from the processor's outputs when the batch was prepared.
        Token j of a row's grid is slot j of the image layout (``image_index[b, j]``)."""
        if isinstance(self.grids, str) or self.grids is None:
            raise ValueError(self.grids or "this batch has no image grid: build it with model.prepare")
        return self.grids

    def __getstate__(self):
        # A trace that names the batch ships it by value: the grids stay here (analysis only).
        return {**self.__dict__, "grids": None}

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch({k: move(v) for k, v in self.inputs.items()}, move(self.image_mask),
                     move(self.image_index), move(self.image_valid), self.prompts, self.ids,
                     self.extras, self.image_sizes, self.grids)


def image_layout(image_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded per-row image-token positions.

    Args:
        image_mask: ``[batch, seq]`` bool.
    Returns:
        ``(index, valid)``, both ``[batch, n_image]``; padded slots of ``index`` hold ``seq``.
    """
    batch, seq = image_mask.shape
    counts = image_mask.sum(-1)
    n_image = int(counts.max()) if batch else 0
    positions = torch.arange(seq, device=image_mask.device).expand(batch, seq)
    # Stable sort puts image positions first, in sequence order.
    keyed = torch.where(image_mask, positions, positions + seq)
    index = keyed.sort(dim=-1, stable=True).values[:, :n_image]
    valid = torch.arange(n_image, device=image_mask.device) < counts[:, None]
    index = torch.where(valid, index, torch.full_like(index, seq))
    return index, valid


def gather_image(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-position values ``[batch, ..., seq]`` -> per-image-token ``[batch, ..., n_image]``.

    ``index`` is ``[batch, n_image]``; padded slots (index == seq) read 0.
    """
    padded = torch.nn.functional.pad(values, (0, 1))
    middle = values.shape[1:-1]
    index = index.view(index.shape[0], *([1] * len(middle)), index.shape[1])
    return padded.gather(-1, index.expand(*values.shape[:-1], index.shape[-1]))


def scatter_image(per_token: torch.Tensor, index: torch.Tensor, seq_len: int, fill: float) -> torch.Tensor:
    """Per-image-token ``[batch, n_image]`` -> per-position ``[batch, seq]``, ``fill`` elsewhere."""
    out = torch.full((per_token.shape[0], seq_len + 1), fill, dtype=per_token.dtype,
                     device=per_token.device)
    out.scatter_(1, index, per_token)
    return out[:, :seq_len]
