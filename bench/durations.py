"""How long the README's commands take here, with the machine's state: the one place the
README's durations come from.

    python -m bench.durations --out bench/durations.json     # the main job, from an empty folder

Each command runs in a fresh process on an empty ``--out`` (nothing reused), timed from
start to exit; beside the seconds it records the machine (cores, the load average before
and after, torch's threads) so that a time measured on a busy machine says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {"review_layer": ["-m", "studies.review_layer", "--no-progress"]}


def measure(name: str, argv: list[str], keep: Path | None = None) -> dict:
    """Run one command on an empty folder (``keep``: that folder, kept; it must be empty)."""
    from mech import progress

    before = progress.machine_load()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) if keep is None else keep / name
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"--keep {keep}: {out} is not empty; the commands are timed from nothing")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv, "--out", str(out)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if keep is not None:
            (out / f"{name}.stdout").write_text(done.stdout)
    if done.returncode:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    after = progress.machine_load()
    return {"command": "python " + " ".join(argv), "seconds": round(seconds, 1), "cores": before["cores"],
            "torch_threads": before["threads"], "load_before": before["load"], "load_after": after["load"],
            "busy": bool(progress.busy_reasons(before)),  # after: the command's own load is in it
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.durations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the durations as JSON here")
    p.add_argument("--only", default=",".join(COMMANDS), help=f"comma-separated: {', '.join(COMMANDS)}")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep each command's outputs (and its printed output) in KEEP/<name> instead of a temporary "
                        "folder")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    found = {}
    for name in [n for n in args.only.split(",") if n]:
        found[name] = measure(name, COMMANDS[name], args.keep)
        r = found[name]
        print(f"{name}: {r['seconds']:.0f} s on {r['cores']} cores, load {r['load_before']:.1f} -> "
              f"{r['load_after']:.1f}, {r['torch_threads']} torch threads")
    if args.out:
        known = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps({**known, **found}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return found


if __name__ == "__main__":
    main()
