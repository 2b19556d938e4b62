"""Every Python block of the README runs, and the README's times come from the files that
measured them.

The blocks run top to bottom in one fresh Python process, in one namespace, the way a
reader pastes them (a later block may use the ``model``, ``samples`` and ``batch`` of the
first), in a temporary folder (so ``out="runs/..."`` lands there). A block that cannot run
here (it needs a model hub, NDIF or a GPU) is marked by an HTML comment on the line right
before its opening fence, with the reason, and is skipped::

    <!-- readme-test: skip (needs NDIF, an API key and the hub) -->
    ```python
    ...

Nothing else is skipped: an unmarked block that fails fails this test, naming its line.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\(([^)]*)\)\s*-->\s*$")


def blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, source, skip reason or None)`` of every Python block."""
    out = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append((line, match.group(1), skip.group(1) if skip else None))
    return out


RUNNER = """
import json, linecache, sys, traceback
import matplotlib
matplotlib.use("Agg")
import torch
torch.set_num_threads(1)
namespace = {"__name__": "__readme__"}
for line, source in json.load(open(sys.argv[1])):
    name = f"README.md:{line}"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)  # nnsight reads a trace's source
    try:
        exec(compile(source, name, "exec"), namespace)
    except Exception:
        print(f"README block at line {line} failed:\\n" + traceback.format_exc(), file=sys.stderr)
        sys.exit(1)
print("ran", len(json.load(open(sys.argv[1]))))
"""


def test_the_marking_is_found():
    text = "x\n<!-- readme-test: skip (needs the hub) -->\n```python\na = 1\n```\n\n```python\nb = 2\n```\n"
    assert blocks(text) == [(3, "a = 1\n", "needs the hub"), (7, "b = 2\n", None)]


def test_every_python_block_of_the_readme_runs(tmp_path):
    found = blocks(README.read_text())
    run = [(line, source) for line, source, skip in found if skip is None]
    skipped = {line: skip for line, _, skip in found if skip is not None}
    assert len(run) >= 6 and all(reason.strip() for reason in skipped.values())
    (tmp_path / "blocks.json").write_text(json.dumps(run))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"ran {len(run)}" in done.stdout


def test_the_readme_times_come_from_the_files_that_measured_them():
    """Before: the bench's duration was "a few minutes" (--help), "about 11 minutes" (README)
    and 16.7 min (its results); now README and --help both read bench/results.json's."""
    text = README.read_text()
    result = json.loads((ROOT / "bench" / "results.json").read_text())
    minutes = f"{result['seconds'] / 60:.1f}"
    assert f"python -m bench --out bench/results.json    # {minutes} min in its last full run" in text
    assert f"{minutes} min in all" in text  # the table's line, from bench.table
    assert "about 11 minutes" not in text
    from bench.__main__ import last_run

    assert last_run() == f"the last full run took {minutes} min (bench/results.json)"
    durations = json.loads((ROOT / "bench" / "durations.json").read_text())
    top = text.split("## Two commands", 1)[1].split("## Use", 1)[0]
    for name, job in durations.items():
        assert job["command"].startswith("python -m studies.review_layer")
        assert f"{job['seconds']:.0f} s" in top and f"load {job['load_before']:.1f}" in top, name
    assert "~35 s" not in text
