"""Sharing a run's chunks among processes: torchrun ranks or independent shards.

Work is cut into the chunk store's chunks, whose boundaries and batches depend only on
the samples, the batch size and the chunk size, never on how many processes run: so a
run started with 8 ranks can be finished with 2, or 1, and gives bitwise the same chunks.
Chunk ``k`` of every run belongs to process ``k % count``.

* **torchrun** (or ``accelerate launch``: the same environment): `init` joins the
  process group (gloo on CPU, NCCL on CUDA). In `mech.run` / `mech.sweep` each rank
  computes its own chunks, waits for the others at a barrier, and reads theirs, so every
  rank ends with the whole result and the next phase of a study can use it; rank 0
  alone prints and writes the datasets. Ranks whose configuration differs are refused.
* **shards** (``--shard I/N``; SLURM arrays, separate machines on a shared filesystem):
  no process group. A shard computes its chunks and, where a run still lacks the
  others', stops with `ShardDone`; rerunning the same command later continues (the next
  phase of a study, once every shard has finished this one), and the plain command
  reuses everything and writes the datasets.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

__all__ = ["Share", "ShardDone", "current", "init", "set_shard", "parse_shard", "rank_of"]


@dataclass(frozen=True)
class Share:
    """This process's part: ``index`` of ``count``; ``group`` when torch.distributed is on."""

    index: int = 0
    count: int = 1
    group: bool = False

    @property
    def main(self) -> bool:
        """Writes the run manifests (one process of the group or of the shards)."""
        return self.index == 0

    @property
    def writes_output(self) -> bool:
        """Prints and shows progress: every shard (its own process), rank 0 of a group."""
        return not self.group or self.index == 0

    @property
    def writes(self) -> bool:
        """Writes a study's datasets and figures: a single process, or rank 0 of a group
        (a shard never does: the plain command writes them once every shard is done)."""
        return self.count == 1 or (self.group and self.index == 0)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{'rank' if self.group else 'shard'} {self.index}/{self.count}"


class ShardDone(Exception):
    """A shard finished its chunks of a run whose other chunks are not all there yet."""


_SHARD: Share | None = None


def current() -> Share:
    """The running process's `Share` (a single process: ``Share(0, 1)``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Share(dist.get_rank(), dist.get_world_size(), True)
    return _SHARD or Share()


def rank_of(chunk: int, share: Share | None = None) -> int:
    """Which rank or shard owns chunk number ``chunk``."""
    return chunk % (share or current()).count


def parse_shard(text: str) -> Share:
    """``"I/N"`` -> ``Share(I, N)``; ValueError naming the valid form otherwise."""
    index, sep, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard {text!r}: give I/N, e.g. 0/4 for the first of four shards") from None
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: give I/N with 0 <= I < N, e.g. 0/4 for the first of four shards")
    return Share(index, count)


def set_shard(share: Share | None) -> None:
    """Make this process one shard of ``share.count`` (None: the whole run)."""
    global _SHARD
    _SHARD = share if share is None or share.count > 1 else None


def init(timeout_hours: float = 24.0) -> Share:
    """Join the torch.distributed group when launched by torchrun (``WORLD_SIZE`` > 1):
    NCCL for CUDA ranks (each on its ``LOCAL_RANK`` GPU), gloo on CPU. The timeout bounds
    how long a rank waits at a barrier for slower ones (a whole phase of a study)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=timeout_hours))
    return current()


def device() -> str | None:
    """The device this rank's model belongs on (``cuda:LOCAL_RANK``), or None for the default."""
    import torch

    if current().group and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def barrier() -> None:
    import torch.distributed as dist

    if current().group:
        dist.barrier()


def agree(digest: str, what: str) -> None:
    """Every rank must hold the same ``digest`` of ``what`` (its configuration): a rank
    running other code or arguments than rank 0 is refused, naming it."""
    import torch.distributed as dist

    share = current()
    if not share.group:
        return
    digests = [None] * share.count
    dist.all_gather_object(digests, digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"rank{'s' * (len(differ) > 1)} {', '.join(map(str, differ))} run{'s' * (len(differ) == 1)} "
                           f"another configuration of {what} than rank 0 (other code, arguments or model "
                           "weights); start every rank with the same command")
