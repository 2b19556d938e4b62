"""Sharing a run's chunks among processes: torchrun ranks or independent shards.

Work is cut into the chunk store's chunks, whose boundaries and batches depend only on
the samples, the batch size and the chunk size, never on how many processes run: so a
run started with 8 ranks can be finished with 2, or 1, and gives bitwise the same chunks.
Chunk ``k`` of every run belongs to process ``k % count``.

* **torchrun** (or ``accelerate launch``: the same environment): `init` checks the
  environment (`launch`), meets the other ranks within a short rendezvous timeout and
  joins the process group (gloo on CPU, NCCL on CUDA). In `mech.run` / `mech.sweep` each
  rank computes its own chunks, waits for the others at a barrier, and reads theirs, so
  every rank ends with the whole result and the next phase of a study can use it; rank 0
  alone prints and writes the datasets. Ranks whose configuration (code included)
  differs are refused. Barriers and that check go through the group's store by polling,
  so Ctrl-C and SIGTERM end a waiting rank at once.
* **shards** (``--shard I/N``; SLURM arrays, separate machines on a shared filesystem):
  no process group. A shard computes its chunks and, where a run still lacks the
  others', stops with `ShardDone`, once it has done every other run and dataset it can
  (`each`); rerunning the same command later continues (the next phase of a study, once
  every shard has finished this one), and the plain command reuses everything and writes
  the datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Share", "ShardDone", "RendezvousError", "Launch", "current", "init", "launch", "set_shard",
           "parse_shard", "rank_of", "each"]


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


# Seconds every rank has to reach the others when the group starts (MECH_RENDEZVOUS_TIMEOUT).
RENDEZVOUS_S = 60.0
_STORE = None  # the group's key-value store, when `init` started it: barriers and agreement go through it
_PREFIX = ""
_COUNTS = {"barrier": 0, "agree": 0}
_TIMEOUT_S = 24 * 3600.0  # how long a barrier waits (init's timeout_hours)


class RendezvousError(RuntimeError):
    """The ranks of a torchrun group did not all meet within the rendezvous timeout."""


@dataclass(frozen=True)
class Launch:
    """What a launcher (torchrun, accelerate launch) put in the environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _whole(env, name: str, low: int, high: int | None, meaning: str) -> int | None:
    text = env.get(name)
    if text is None or not text.strip():
        return None
    bounds = f">= {low}" if high is None else f"in {low}..{high}"
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise ValueError(f"{name}={text!r} in the environment: must be a whole number {bounds} ({meaning})")
    return value


def launch(environ=None) -> Launch | None:
    """The launcher's settings, checked (None: one process). ValueError, naming the
    variable, its value and the fix, for any that is malformed or inconsistent: a
    ``RANK`` outside ``0..WORLD_SIZE-1``, a ``LOCAL_RANK`` outside ``0..LOCAL_WORLD_SIZE-1``,
    a ``WORLD_SIZE`` without ``RANK``/``MASTER_ADDR``/``MASTER_PORT`` (no launcher)."""
    env = os.environ if environ is None else environ
    world = _whole(env, "WORLD_SIZE", 1, None, "the number of ranks; torchrun sets it, unset it to run one process")
    if world is None or world == 1:
        rank = env.get("RANK")
        if rank is not None and rank.strip() not in ("", "0"):
            raise ValueError(f"RANK={rank!r} in the environment but WORLD_SIZE={env.get('WORLD_SIZE', '')!r}: a rank "
                             "needs the number of ranks; start the ranks with torchrun, or unset RANK to run one "
                             "process")
        return None
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not (env.get(name) or "").strip()]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} in the environment but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set: those come from a launcher; start the "
                         f"command with torchrun (torchrun --nproc-per-node {world} -m studies.NAME ...) or "
                         "accelerate launch, or unset WORLD_SIZE to run one process")
    rank = _whole(env, "RANK", 0, world - 1, f"this rank's index among WORLD_SIZE={world}")
    local_world = _whole(env, "LOCAL_WORLD_SIZE", 1, world, f"the ranks on this machine, at most WORLD_SIZE={world}")
    local_rank = _whole(env, "LOCAL_RANK", 0, (local_world or world) - 1,
                        f"this rank's index on its machine, below "
                        f"{'LOCAL_WORLD_SIZE' if local_world else 'WORLD_SIZE'}={local_world or world}")
    port = _whole(env, "MASTER_PORT", 1, 65535, "the port rank 0 listens on")
    return Launch(rank, world, 0 if local_rank is None else local_rank, env["MASTER_ADDR"].strip(), port)


def init(timeout_hours: float = 24.0, rendezvous_s: float | None = None) -> Share:
    """Join the torch.distributed group when launched by torchrun (``WORLD_SIZE`` > 1):
    NCCL for CUDA ranks (each on its ``LOCAL_RANK`` GPU), gloo on CPU.

    The environment is checked first (`launch`). Every rank must then reach the others
    within ``rendezvous_s`` seconds (default `RENDEZVOUS_S`, 60, or
    ``MECH_RENDEZVOUS_TIMEOUT``), else `RendezvousError` says which are missing. The wait
    polls, so Ctrl-C and SIGTERM end it at once. ``timeout_hours`` bounds how long a rank
    waits at a barrier for slower ones (a whole phase of a study)."""
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return current()
    env = launch()
    if env is None:
        return current()
    cuda = torch.cuda.is_available()
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={env.local_rank} in the environment: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); start at most that many ranks per machine")
        torch.cuda.set_device(env.local_rank)
    if rendezvous_s is None:
        rendezvous_s = _whole(os.environ, "MECH_RENDEZVOUS_TIMEOUT", 1, None, "seconds") or RENDEZVOUS_S
    store = _rendezvous(env, float(rendezvous_s))
    # every rank is there and about to join: the group's own handshake gets a minute
    store.set_timeout(datetime.timedelta(seconds=max(float(rendezvous_s), 60.0)))
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore("default_pg", store),
                            rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(hours=timeout_hours))
    store.set_timeout(datetime.timedelta(hours=timeout_hours))
    global _STORE, _TIMEOUT_S
    _STORE, _TIMEOUT_S = store, timeout_hours * 3600
    return current()


def _rendezvous(env: Launch, seconds: float):
    """The group's store, once every rank has joined it; polled, so signals end the wait."""
    import datetime
    import socket
    import time

    import torch.distributed as dist

    global _PREFIX
    deadline = time.monotonic() + seconds
    where = f"MASTER_ADDR={env.master_addr} MASTER_PORT={env.master_port}"
    # torchrun's agent serves the store itself; otherwise rank 0 does
    serves = env.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = None
    while store is None:
        try:
            if not serves:  # is rank 0 (or the agent) listening yet? asked quietly, without the store's retries
                socket.create_connection((env.master_addr, env.master_port), timeout=1).close()
            store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=serves,
                                  timeout=datetime.timedelta(seconds=max(1.0, min(2.0, seconds))),
                                  wait_for_workers=False, multi_tenant=serves)
        except (RuntimeError, OSError, ValueError) as error:
            if serves:
                raise RendezvousError(f"rank 0 cannot listen at {where} ({str(error).splitlines()[0]}); choose a "
                                      "free MASTER_PORT (torchrun picks one with --standalone)") from None
            if time.monotonic() > deadline:
                raise RendezvousError(f"rank {env.rank}: nobody answered at {where} within {seconds:g} s (the "
                                      "rendezvous timeout, MECH_RENDEZVOUS_TIMEOUT): is rank 0 running, and is "
                                      "that its address? Start every rank with the same torchrun command") from None
            time.sleep(0.2)
    _PREFIX = f"mech/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store.set(f"{_PREFIX}/joined/{env.rank}", "1")
    keys = [f"{_PREFIX}/joined/{r}" for r in range(env.world_size)]
    while not store.check(keys):
        if time.monotonic() > deadline:
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
            raise RendezvousError(
                f"rank{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} of WORLD_SIZE={env.world_size} did "
                f"not join at {where} within {seconds:g} s (the rendezvous timeout, MECH_RENDEZVOUS_TIMEOUT): start "
                "every rank (torchrun does), or unset WORLD_SIZE to run one process")
        time.sleep(0.05)
    return store


def _wait(ready, what: str) -> None:
    """Poll ``ready()`` until true (Ctrl-C and SIGTERM are handled between polls)."""
    import time

    deadline, pause = time.monotonic() + _TIMEOUT_S, 0.01
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{current()}: the other ranks did not reach {what} within {_TIMEOUT_S / 3600:g} h")
        time.sleep(pause)
        pause = min(0.5, pause * 1.5)


def device() -> str | None:
    """The device this rank's model belongs on (``cuda:LOCAL_RANK``), or None for the default."""
    import torch

    if current().group and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def barrier() -> None:
    """Wait until every rank is here (through the group's store: interruptible)."""
    import torch.distributed as dist

    share = current()
    if not share.group:
        return
    if _STORE is None:  # a group started by the caller, not by `init`
        dist.barrier()
        return
    _COUNTS["barrier"] += 1
    key = f"{_PREFIX}/barrier/{_COUNTS['barrier']}"
    _STORE.add(key, 1)
    _wait(lambda: _STORE.add(key, 0) >= share.count, "the barrier")


def agree(digest: str, what: str) -> None:
    """Every rank must hold the same ``digest`` of ``what`` (its configuration, code
    included): a rank running other code or arguments than rank 0 is refused, naming it."""
    import torch.distributed as dist

    share = current()
    if not share.group:
        return
    if _STORE is None:
        digests = [None] * share.count
        dist.all_gather_object(digests, digest)
    else:
        _COUNTS["agree"] += 1
        keys = [f"{_PREFIX}/agree/{_COUNTS['agree']}/{r}" for r in range(share.count)]
        _STORE.set(keys[share.index], digest)
        _wait(lambda: _STORE.check(keys), f"the configuration check of {what}")
        digests = [_STORE.get(key).decode() for key in keys]
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"rank{'s' * (len(differ) > 1)} {', '.join(map(str, differ))} run{'s' * (len(differ) == 1)} "
                           f"another configuration of {what} than rank 0 (other code, arguments or model "
                           "weights); start every rank with the same command")


def each(items, work) -> dict:
    """``{key: work(key, value)}`` over a mapping; a shard that lacks other shards' chunks in
    one item (`ShardDone`) goes on with the next, so it finishes every item it can, and
    raises `ShardDone` for them all at the end."""
    done, pending = {}, []
    for key, value in dict(items).items():
        try:
            done[key] = work(key, value)
        except ShardDone as stop:
            pending.append(str(stop))
    if pending:
        raise ShardDone("; ".join(pending))
    return done
