"""Where each image token sits in its image: `View`, `ImageGrid`.

Every family turns an image into one or more *views*, each a regular grid of tokens over a
rectangle of the original image: LLaVA-1.5 one (the centre crop), LLaVA-NeXT and
OneVision a ``"base"`` view of the whole image and a finer ``"tiles"`` view (anyres tiles,
the padding cut off, a newline token after each row), Qwen2-VL/2.5-VL one at the image's
own resolution (2 x 2 merged patches), Gemma 3 one of pooled patches, InternVL a
``"tiles"`` view (tile by tile) and a ``"thumbnail"``. The family adapters
(`mech.families`) build the views of each image from the processor's own outputs and
arithmetic; `ImageGrid` expands them into one entry per image token of a batch row, in
sequence order, the order of the batch's image-token layout (`mech.batch`).

Boxes are ``(left, top, right, bottom)`` in the original image's pixels; a view's grid can
extend past the image where the processor padded it, or cover less of it where the
processor cropped (LLaVA-1.5's centre crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["View", "ImageGrid", "resized_box"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class View:
    """One grid of image tokens over a rectangle of one image.

    Attributes:
        name: ``"image"`` (the only view), ``"base"`` (a coarse view of the whole image),
            ``"tiles"`` (the fine view made of the processor's tiles) or ``"thumbnail"``.
        rows, cols: its token grid.
        box: the rectangle the grid covers, in the image's pixels.
        newline: a newline token follows each row (LLaVA-NeXT, OneVision).
        tile_rows, tile_cols: for tokens ordered tile by tile (InternVL), the tokens of one
            tile; 0 for row-major order over the whole grid.
        tiles: boxes of the processor's crops this view reads (image pixels), in
            ``pixel_values`` order, their indices within the image starting at
            ``first_tile``; empty: the view is one crop.
        first_tile: the index of its (first) crop among the image's ``pixel_values``.
        image: which image of the batch row.
    """

    name: str
    rows: int
    cols: int
    box: Box
    newline: bool = False
    tile_rows: int = 0
    tile_cols: int = 0
    tiles: tuple[Box, ...] = ()
    first_tile: int = 0
    image: int = 0

    @property
    def tokens(self) -> int:
        return self.rows * (self.cols + self.newline)

    def order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row, col)`` of each of its tokens in sequence order (col -1: a newline)."""
        if self.tile_rows:
            tr, tc = self.tile_rows, self.tile_cols
            r, c = torch.meshgrid(torch.arange(tr), torch.arange(tc), indexing="ij")
            blocks = [(r + i * tr, c + j * tc) for i in range(self.rows // tr) for j in range(self.cols // tc)]
            return (torch.cat([b[0].flatten() for b in blocks]), torch.cat([b[1].flatten() for b in blocks]))
        width = self.cols + self.newline
        r, c = torch.meshgrid(torch.arange(self.rows), torch.arange(width), indexing="ij")
        c = torch.where(c == self.cols, torch.full_like(c, -1), c)
        return r.flatten(), c.flatten()

    def token_boxes(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """``[n, 4]`` image-pixel boxes of tokens at ``row``/``col`` (NaN for newlines)."""
        left, top, right, bottom = self.box
        w, h = (right - left) / max(self.cols, 1), (bottom - top) / max(self.rows, 1)
        boxes = torch.stack([left + col * w, top + row * h, left + (col + 1) * w, top + (row + 1) * h], -1).double()
        return torch.where((col < 0)[:, None], torch.full_like(boxes, float("nan")), boxes)

    def tile_of(self, boxes: torch.Tensor) -> torch.Tensor:
        """The crop index of each token (the crop that holds its centre; -1 for newlines)."""
        valid = ~torch.isnan(boxes[:, 0])
        if not self.tiles:
            return torch.where(valid, self.first_tile, -1)
        x, y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        tile = torch.full(x.shape, -1, dtype=torch.long)
        for i, (l, t, r, b) in enumerate(self.tiles):
            inside = valid & (x >= l) & (x < r) & (y >= t) & (y < b)
            tile = torch.where(inside & (tile < 0), self.first_tile + i, tile)
        return tile


@dataclass
class ImageGrid:
    """Where each image token of one batch row sits in its image(s).

    Per-token fields are ``[n]`` (``[n, 4]`` for ``box``), ``n`` the row's image-token
    count, in sequence order (slot j of the batch's image layout is token j here):

    * ``view``: index into ``views``; ``image``: which image of the row;
    * ``row``, ``col``: the token's place in its view's grid (``col`` -1 for a newline);
    * ``tile``: which of the processor's crops of the image (its ``pixel_values``) the
      token reads, -1 for a newline;
    * ``newline``: a separator token that reads no patch (LLaVA-NeXT/OneVision row ends);
    * ``box``: the rectangle of the image the token's patch covers, NaN for newlines.
    """

    views: list[View]
    image_sizes: list[tuple[int, int]]
    view: torch.Tensor = field(init=False)
    row: torch.Tensor = field(init=False)
    col: torch.Tensor = field(init=False)
    tile: torch.Tensor = field(init=False)
    box: torch.Tensor = field(init=False)

    def __post_init__(self):
        views, rows, cols, tiles, boxes = [], [], [], [], []
        for i, v in enumerate(self.views):
            r, c = v.order()
            b = v.token_boxes(r, c)
            views.append(torch.full(r.shape, i))
            rows.append(r), cols.append(c), boxes.append(b), tiles.append(v.tile_of(b))
        self.view, self.row, self.col = torch.cat(views), torch.cat(rows), torch.cat(cols)
        self.tile, self.box = torch.cat(tiles), torch.cat(boxes)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def newline(self) -> torch.Tensor:
        return self.col < 0

    @property
    def image(self) -> torch.Tensor:
        return torch.tensor([v.image for v in self.views])[self.view]

    def finest(self, image: int = 0) -> int:
        """Index of the view of ``image`` with the most tokens per pixel (the tiles where there
        are tiles): what `mech.plots.overlay` draws by default."""
        def density(v: View) -> float:
            left, top, right, bottom = v.box
            return v.rows * v.cols / max((right - left) * (bottom - top), 1e-9)
        return max((i for i, v in enumerate(self.views) if v.image == image), key=lambda i: density(self.views[i]))

    def on_view(self, values, view: int) -> torch.Tensor:
        """``[rows, cols]`` float grid of ``view`` holding per-token ``values`` (``[n]``, or
        longer: a padded row of the batch's image layout), NaN where no token."""
        values = torch.as_tensor(values, dtype=torch.float64).flatten()[:len(self)]
        if len(values) < len(self):
            raise ValueError(f"values has {len(values)} entries but the row has {len(self)} image tokens")
        v = self.views[view]
        grid = torch.full((v.rows, v.cols), float("nan"), dtype=torch.float64)
        keep = (self.view == view) & ~self.newline
        grid[self.row[keep], self.col[keep]] = values[keep]
        return grid


def resized_box(offset: tuple[float, float], scale: tuple[float, float], size: tuple[float, float]) -> Box:
    """The image-pixel box of a rectangle of ``size`` (height, width) at ``offset`` (top,
    left) in an image the processor resized by ``scale`` (height, width factors)."""
    (top, left), (sy, sx), (h, w) = offset, scale, size
    return (left / sx, top / sy, (left + w) / sx, (top + h) / sy)


def resized(size, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` an image of ``height x width`` becomes under an image processor's
    ``size`` (a dict or ``SizeDict``), by transformers' own resize arithmetic (the branches
    of its image processors' ``resize``)."""
    import numpy as np
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    if get("shortest_edge") and get("longest_edge"):
        return tuple(get_size_with_aspect_ratio((height, width), get("shortest_edge"), get("longest_edge")))
    if get("shortest_edge"):
        shape = np.broadcast_to(np.zeros((), np.uint8), (3, height, width))  # only its shape is read
        return tuple(get_resize_output_image_size(shape, size=get("shortest_edge"), default_to_square=False,
                                                  input_data_format="channels_first"))
    if get("max_height") and get("max_width"):
        return tuple(get_image_size_for_max_height_width((height, width), get("max_height"), get("max_width")))
    return get("height"), get("width")


def image_size(image) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, or of an array/tensor (channels first or last)."""
    if hasattr(image, "height") and hasattr(image, "width"):
        return int(image.height), int(image.width)
    from transformers.image_utils import get_image_size, infer_channel_dimension_format

    import numpy as np

    array = np.asarray(image)
    return tuple(int(x) for x in get_image_size(array, infer_channel_dimension_format(array)))


def batch_grids(model, inputs: dict, sizes: list[list[tuple[int, int]]], counts: list[int]):
    """One `ImageGrid` per batch row from the family's views of each image, or, where the
    family cannot map this batch, the reason (a string). ``sizes``: each row's images;
    ``counts``: each row's image tokens (``input_ids == image_token_id``), which the grid
    must match token for token."""
    from dataclasses import replace

    grids, index = [], 0
    try:
        for row, (row_sizes, count) in enumerate(zip(sizes, counts)):
            views = []
            for i, size in enumerate(row_sizes):
                views += [replace(v, image=i) for v in
                          model.family.image_views(model, size, inputs, index, row_images=len(row_sizes))]
                index += 1
            grid = ImageGrid(views, list(row_sizes))
            if len(grid) != count:
                return (f"the {model.family.name} image grid of row {row} has {len(grid)} tokens but the processor "
                        f"made {count}: this processor's settings are not mapped (mech.families)")
            grids.append(grid)
    except ValueError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 -- analysis only: preparing the batch must not fail for it
        return f"the {model.family.name} image grid could not be built ({type(error).__name__}: {error})"
    return grids
