"""Progress of a command: a phase line, one bar per phase, names a person reads.

A study is a few phases (the masking sweep, the Hellinger profile, the contrastive runs),
each many runs over the same samples. Inside a `phase`, every `mech.run` / `mech.sweep`
advances the phase's one bar (runs x samples, with the time left) and names what it is
doing: the dataset and the intervention's short label (`mech.runner.label`), never a
hash. Outside a phase (a `mech.run` from a notebook) a run gets a bar of its own.

    with progress.phase("2/4 Hellinger profile"):
        progress.expect(n_runs * n_samples)    # what the phase will do (`comparisons.compare` says it)
        ...                                    # runs: each a `task` of the phase

Where the output goes decides the form: on a terminal (or in Jupyter) a tqdm bar on
stderr; anywhere else (a file, a pipe, a job log) a plain line every `EVERY` seconds
(``MECH_PROGRESS_EVERY``, default 30) and one when the phase ends, so a log holds lines,
not carriage returns. `set_enabled(False)` (a study's ``--no-progress``) shows nothing,
transformers' and huggingface_hub's own bars ("Loading weights") included.

`check_machine` warns once (`MachineWarning`) when the machine is busy (its load above
its cores) or torch runs more threads than there are free cores: both make every time
figure, and the time left, slower than on an idle machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

__all__ = ["MachineWarning", "phase", "expect", "task", "enabled", "set_enabled", "check_machine",
           "machine_load", "clock"]

EVERY = float(os.environ.get("MECH_PROGRESS_EVERY", "30"))  # seconds between plain lines

_ENABLED = True
_PHASE: "_Phase | None" = None
_CHECKED = False


class MachineWarning(UserWarning):
    """The machine is busy, or torch runs more threads than there are free cores."""


def enabled() -> bool:
    """Whether progress is shown (by this process: among torchrun ranks, rank 0 alone)."""
    from . import parallel

    return _ENABLED and parallel.current().writes_output


def set_enabled(flag: bool) -> None:
    """Show progress or nothing at all: also switches transformers' and huggingface_hub's
    bars (the "Loading weights" bar of ``from_pretrained``), which are kept off as well
    where the output is not a terminal (their carriage returns would fill a log)."""
    global _ENABLED
    _ENABLED = bool(flag)
    flag = _ENABLED and _interactive()
    try:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if flag else hf_logging.disable_progress_bar)()
    except ImportError:
        pass
    try:
        import huggingface_hub.utils as hub_utils

        (hub_utils.enable_progress_bars if flag else hub_utils.disable_progress_bars)()
    except ImportError:
        pass


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _interactive() -> bool:
    if "ipykernel" in sys.modules:  # Jupyter: tqdm.auto draws a widget
        return True
    try:
        # a terminal of width 0 (a pty nobody sized) draws no bar at all: plain lines there
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return False


class _Phase:
    """One bar: a total that runs extend, units done, what is running now."""

    def __init__(self, title: str, total: int | None, unit: str, show: bool):
        self.title, self.unit, self.show = title, unit, show
        self.total, self.claimed, self.done = int(total or 0), int(total or 0), 0
        self.started = self.last_line = time.monotonic()
        self.detail = ""
        self.bar = None
        if show and _interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=title, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5, smoothing=0.1)

    def expect(self, n: int) -> None:
        """``n`` more units will come (counted when they come, not twice)."""
        self.claimed += int(n)
        self._grow(int(n))

    def _grow(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def claim(self, n: int) -> None:
        """A run of ``n`` units starts: part of what was expected, or more."""
        take = min(self.claimed, n)
        self.claimed -= take
        if n > take:
            self._grow(n - take)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.show and self.done < self.total and time.monotonic() - self.last_line >= EVERY:
            self.line()

    def describe(self, detail: str) -> None:
        self.detail = detail
        if self.bar is not None:
            self.bar.set_postfix_str(detail, refresh=False)

    def left(self) -> float | None:
        """Seconds left at the rate so far (None before anything is done)."""
        spent = time.monotonic() - self.started
        if not self.done or self.total <= self.done:
            return None if not self.done else 0.0
        return spent / self.done * (self.total - self.done)

    def line(self, end: bool = False) -> None:
        self.last_line = time.monotonic()
        spent = clock(self.last_line - self.started)
        if end:
            text = f"{self.title}: done, {self.done:,} {self.unit}s in {spent}"
        else:
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            left = self.left()
            text = (f"{self.title}: {self.done:,}/{self.total:,} {self.unit}s{share}, {spent} elapsed"
                    + (f", about {clock(left)} left" if left is not None else "")
                    + (f"; now {self.detail}" if self.detail else ""))
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.close()
        elif self.show:
            self.line(end=True)


@contextlib.contextmanager
def phase(title: str, total: int | None = None, unit: str = "run-sample", show: bool = True):
    """One phase of a command: its title (``"2/4 Hellinger profile"``) on one bar that every
    run inside advances, ``total`` units expected (runs claim more as they start). Phases
    do not nest: an inner one (`mech.sweep`'s own) joins the outer bar, its total left to
    the outer phase's `expect`. ``show=False``: counted, not shown."""
    global _PHASE
    if _PHASE is not None:
        yield _PHASE
        return
    check_machine()
    _PHASE = _Phase(title, total, unit, show and enabled())
    try:
        yield _PHASE
    finally:
        current, _PHASE = _PHASE, None
        current.close()


def expect(n: int) -> None:
    """Tell the running phase (if any) that ``n`` more units are coming, so that its total,
    and the time left, are right from the start."""
    if _PHASE is not None:
        _PHASE.expect(n)


class _Task:
    """What a run advances: ``update(n)``, ``close()`` (the runner's bar)."""

    def __init__(self, owner: _Phase, own: bool):
        self.owner, self.own = owner, own

    def update(self, n: int = 1) -> None:
        self.owner.update(n)

    def close(self) -> None:
        if self.own:
            self.owner.close()


def task(label: str, total: int, *, show: bool = True, unit: str = "run-sample") -> _Task:
    """A run of ``total`` units named ``label``: it advances the running phase, or a bar of
    its own outside one, counted in ``unit`` (``show=False``: nothing is shown outside a phase)."""
    if _PHASE is not None:
        _PHASE.claim(total)
        _PHASE.describe(label)
        return _Task(_PHASE, own=False)
    check_machine()
    return _Task(_Phase(label, total, unit, show and enabled()), own=True)


def machine_load() -> dict:
    """``{"load": 1-minute load average, "cores": usable cores, "threads": torch threads,
    "free": cores not taken by other work}`` (load None where the system does not say)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = 1
    # free: cores the others leave (one runnable task of the load counted as this process)
    free = cores if load is None else max(0, cores - int(round(max(0.0, load - 1))))
    return {"load": load, "cores": cores, "threads": threads, "free": free}


def busy_reasons(state: dict | None = None) -> list[str]:
    """Why timings on this machine would be slower than on an idle one ([] when idle)."""
    s = state or machine_load()
    out = []
    if s["load"] is not None and s["load"] > s["cores"]:
        out.append(f"the machine is busy: load {s['load']:.1f} on {s['cores']} core{'s' * (s['cores'] != 1)}")
    if s["threads"] > max(1, s["free"]):
        out.append(f"torch runs {s['threads']} threads with about {s['free']} of {s['cores']} cores free "
                   f"(OMP_NUM_THREADS={max(1, s['free'])} or torch.set_num_threads({max(1, s['free'])}) avoids "
                   "threads waiting on each other)")
    return out


def check_machine(force: bool = False) -> list[str]:
    """Warn once per process (`MachineWarning`) when the machine is busy or torch threads
    exceed the free cores; returns the reasons."""
    global _CHECKED
    if _CHECKED and not force:
        return []
    _CHECKED = True
    reasons = busy_reasons()
    if reasons:
        warnings.warn("; ".join(reasons) + ": every time here, the time left included, will be slower than "
                      "on an idle machine", MachineWarning, stacklevel=3)
    return reasons
