"""What `mech.load` is pointed at, checked before anything loads: a model folder's weight
files whole (`check_weights`: an interrupted download or copy is named, not a
``SafetensorError`` from deep inside ``from_pretrained``), and a revision only where
there is a hub repository to pin (`check_revision`, `local_kind`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["check_weights", "check_revision", "local_kind", "RANDOM", "EMBEDDED"]

RANDOM = "random:"  # mech.load("random:qwen2-vl"): a tiny random model of that family
# The models the repository ships, by the name `mech.load` takes: (the `mech.model` global
# holding its folder, read when used so that a changed TINY_PATH counts; what it is; how to
# retrain it).
EMBEDDED = {
    "tiny": ("TINY_PATH", "the embedded tiny model", "python -m mech.zoo.train"),
    "tiny-review": ("TINY_REVIEW_PATH", "the ground-truth tiny model", "python -m mech.zoo.train --preset review"),
}


def check_weights(folder: Path) -> None:
    """Every ``*.safetensors`` file of a model folder is whole: its header parses and its
    tensors end exactly where the file does (an interrupted download or copy is cut short),
    and every shard a ``model.safetensors.index.json`` lists is there. Reads only the
    headers; ValueError naming the file and the fix otherwise."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index}: damaged weight index ({type(error).__name__}: {error}); download or "
                             "copy the model again") from None
        for shard in shards:
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{folder / shard}: listed in {index.name} but missing (an interrupted "
                                        "download?); download or copy the model again")
    for path in sorted(folder.glob("*.safetensors")):
        size, why = path.stat().st_size, None
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little") if size >= 8 else size
            try:
                header = json.loads(f.read(length)) if length <= size - 8 else None
                end = 8 + length + max((int(t["data_offsets"][1]) for k, t in (header or {}).items()
                                        if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
                header, why = {}, f"its header does not parse ({type(error).__name__})"
        if header is None:
            why = f"the file holds {size} bytes, too few for its header"
        elif why is None and end != size:
            why = f"the file holds {size} bytes, its tensors end at byte {end}"
        if why:
            raise ValueError(f"{path}: incomplete or damaged weights ({why}; an interrupted download or copy?); "
                             "download or copy it again")


def local_kind(source) -> str | None:
    """What ``source`` is when it is not a hub id (``"the embedded model"``, ``"a local
    folder"``, ...), None for a hub id."""
    if not isinstance(source, (str, os.PathLike)):
        return "a built module"
    name = str(source)
    return ("the embedded model" if name in EMBEDDED else "a random model" if name.startswith(RANDOM)
            else "a local folder" if Path(name).expanduser().exists() else None)


def check_revision(source, revision) -> None:
    """``revision`` pins a hub repository's commit: a ValueError for any other source."""
    if not isinstance(revision, str) or not revision.strip():
        raise ValueError(f"revision={revision!r}: give a hub branch, tag or commit as a string")
    if local_kind(source):
        shown = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
        raise ValueError(f"revision={revision!r} applies to a hub id only, and {shown} is {local_kind(source)}: "
                         "drop the revision, or give the hub id it pins")
