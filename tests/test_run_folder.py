"""Every study once into one run folder, then what a person looks at: each study's default
figure (its pixel size within bounds), ``python -m studies.report`` on the folder (one
self-contained page) and that page in a real headless browser (Chromium).

Studies are found (`studies.cli.studies`), so one added later is run and measured too;
`EXTRA` gives a study options of its own where the common small ones are not enough.
"""

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from studies import cli

SMALL = ["--datasets", "shapes", "--limit", "3", "--batch-size", "3", "--max-new-tokens", "1", "--no-progress"]
EXTRA = {  # study -> its own options (layers given where the study allows, so it skips the sweep)
    "controls": ["--review", "3", "--seeds", "1", "--controls", "random,high-ia", "--markdown"],
    "mask_ratio": ["--review", "3", "--fusion", "1,2", "--rho", "0,0.5,1"],
    "pre_layer": ["--review", "3", "--fusion", "1,2"],
    "strategies": ["--review", "3", "--fusion", "1,2"],
    "baselines": ["--review", "3", "--fusion", "1,2"],
}
# a default figure a person can read: not a thin strip, not a poster (pixels at 150 dpi)
WIDTH, HEIGHT, ASPECT = (450, 2400), (300, 2000), 3.6


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-folder")
    import importlib

    for study in cli.studies():
        module = importlib.import_module(f"studies.{study}")
        module.main(["--model", checkpoint, "--out", str(out), *SMALL, *EXTRA.get(study, [])])
    return out


def test_outputs_stay_under_out(folder):
    """Before: --markdown wrote to the current folder; now everything lands under --out."""
    assert (folder / "controls.md").read_text().startswith("| dataset | review | mask at |")
    assert not Path("controls.md").exists()


def figure_of(out: Path, study: str) -> Path:
    return (out / f"{study}.nc").resolve().with_suffix(".png")


def within_bounds(path: Path) -> tuple[int, int]:
    width, height = Image.open(path).size
    assert WIDTH[0] <= width <= WIDTH[1] and HEIGHT[0] <= height <= HEIGHT[1], (path.name, width, height)
    assert max(width / height, height / width) <= ASPECT, (path.name, width, height)
    return width, height


@pytest.mark.parametrize("study", cli.studies())
def test_every_default_figure_is_a_readable_size(folder, study):
    """Before: the controls grid figure was 2159 x 6599 px and review_layer.png a 1.2 in strip."""
    within_bounds(figure_of(folder, study))


def test_many_settings_become_a_heat_map_of_bounded_size(tmp_path):
    """The README's grid (3 reviews x 3 modes x 3 rho x 2 lambda = 54 settings, four sets,
    four controls): one heat map per comparison, not 54 rows of intervals."""
    import itertools

    import matplotlib.pyplot as plt

    from mech import plots

    settings = [f"review{r}|{m}|rho{rho}|lam{lam}" for r, m, rho, lam in
                itertools.product((4, 5, 6), ("input", "normed", "attention"), (0.2, 0.5, 0.8), (0.1, 0))]
    rows, controls = ["shapes", "shapes-dots", "shapes-speckle", "shapes-crowd"], ["random", "high-ia",
                                                                                  "low-attention", "low-pre-attention"]
    rng = np.random.default_rng(0)
    shape = (len(rows), len(settings))
    diff = rng.normal(0, 0.03, (*shape, len(controls)))
    table = xr.Dataset(
        {"gain": (("row", "setting"), rng.normal(0, 0.03, shape)),
         "gain_ci": (("row", "setting", "bound"), np.stack([np.full(shape, -0.02), np.full(shape, 0.03)], -1)),
         "difference": (("row", "setting", "control"), diff),
         "difference_ci": (("row", "setting", "control", "bound"), np.stack([diff - 0.02, diff + 0.02], -1)),
         "n_samples": (("row", "setting"), np.full(shape, 200))},
        coords={"row": rows, "setting": settings, "control": controls, "bound": ["low", "high"]})
    fig = plots.controls(table, {"model": "tiny"})
    assert len(fig.axes) == 1 + len(controls) + 1  # one heat map per comparison and a colour bar
    fig.savefig(tmp_path / "grid.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    within_bounds(tmp_path / "grid.png")


@pytest.fixture(scope="module")
def report(folder):
    from studies import report

    return report.main([str(folder)])


def test_the_report_holds_every_dataset_offline(folder, report):
    page = report.read_text(encoding="utf-8")
    studies = cli.studies()
    for study in studies:
        assert f"<h2>{study} " in page, study
    from studies.report import datasets_in

    assert page.count("<section ") == len(datasets_in(folder)) >= len(studies)
    # self-contained: no request anywhere (no src/href to a file or the network, no script)
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= len(studies)
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "python -m studies.review_layer --model" in page  # the command that made it
    assert "No intervention vs contrastive attention and the controls" in page  # the study's own tables
    assert "no intervention" in page and "%</td>" in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium); .ci/run "
                                               "installs it, so CI loads the report in the browser")
def test_the_report_loads_in_a_headless_browser(report, tmp_path):
    """Chromium renders the page (its DOM has every section and table) and its screenshot
    shows the figures (many colours, not a blank or broken page)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars", "--window-size=1400,3000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([chromium(), *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert dom.count("<section ") >= len(cli.studies()) and dom.count("<table>") >= len(cli.studies())
    shot = tmp_path / "report.png"
    done = subprocess.run([chromium(), *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1400)
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert pixels.std() > 20 and colours > 300, (pixels.std(), colours)  # text, tables and figures drawn
