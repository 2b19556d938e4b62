"""What a person using the studies meets: true --help, one option vocabulary, helpers that
refuse to run as studies, one progress view, tables that explain themselves, and a CI
and p-value that never contradict each other.

Studies are found, not listed (`studies.cli.studies`): a study added later is covered.
"""

import argparse
import importlib
import io
import re
import runpy
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from studies import cli

STUDIES = cli.studies()
HELPERS = sorted(p.stem for p in (Path(cli.__file__).parent).glob("*.py")
                 if p.stem not in STUDIES and p.stem not in ("__init__", "report"))


def run_as_main(module: str, argv: list[str]) -> tuple[int, str, str]:
    """``python -m module argv`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = [module, *argv]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def parser_of(study: str) -> argparse.ArgumentParser:
    """The parser a study's ``main`` builds (taken as ``--help`` leaves it)."""
    module = importlib.import_module(f"studies.{study}")
    with redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        module.main(["--help"])
    return cli.CURRENT["parser"]


def test_studies_are_found():
    assert {"review_layer", "layer_masking", "controls", "mask_ratio", "strategies"} <= set(STUDIES)
    assert {"cli", "inputs", "output", "layers", "options", "tables"} <= set(HELPERS)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_prints_its_help(study):
    code, out, err = run_as_main(f"studies.{study}", ["--help"])
    assert code == 0 and f"python -m studies.{study}" in out and "--out" in out, (code, out[:200], err)


@pytest.mark.parametrize("helper", HELPERS)
def test_helper_modules_refuse_to_run_as_studies(helper):
    """Before: ``python -m studies.layers --help`` printed nothing and exited 0."""
    code, out, err = run_as_main(f"studies.{helper}", ["--help"])
    assert code == 2 and not out
    assert f"studies.{helper} is a helper of the studies, not a study" in err
    assert all(f"python -m studies.{s}" in err for s in STUDIES)


DEFAULT = re.compile(r"\(default: ([^()]*(?:\([^()]*\)[^()]*)*)\)")


@pytest.mark.parametrize("study", STUDIES)
def test_help_says_the_defaults_that_run(study):
    """Every "(default: X)" in --help is the value the option takes when not given."""
    parser = parser_of(study)
    parsed = parser.parse_args([])
    formatter = parser._get_formatter()
    checked = 0
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        text = formatter._expand_help(action)
        for said in DEFAULT.findall(text):
            value = getattr(parsed, action.dest)
            if value is None:
                continue  # a default in words ("discovered", "each dataset's own")
            said = said.split(",")[0] if not isinstance(value, str) or "," not in value else said
            assert str(value).startswith(said.split(" ")[0].rstrip(";")), (action.option_strings, said, value)
            checked += 1
    assert checked >= 5


CONTRASTIVE = ("--review", "--post", "--fusion", "--rho", "--lam", "--mask-at", "--candidates", "--heads")


def test_one_option_vocabulary():
    """Every contrastive study takes every contrastive option, each with the same meaning
    (the same help, up to the comma-list note and its default)."""
    helps = {}
    contrastive = []
    for study in STUDIES:
        options = {o: a for a in parser_of(study)._actions for o in a.option_strings}
        if "--rho" not in options:
            continue
        contrastive.append(study)
        for option in CONTRASTIVE:
            assert option in options, f"studies.{study} lacks {option}"
            text = options[option].help.removeprefix("comma-separated: ").split("(default")[0]
            helps.setdefault(option, set()).add(text)
        assert "--reviews" not in [o for a in parser_of(study)._actions if a.help != argparse.SUPPRESS
                                   for o in a.option_strings]
    assert {"review_layer", "controls", "mask_ratio", "pre_layer", "strategies", "baselines"} <= set(contrastive)
    assert all(len(texts) == 1 for texts in helps.values()), helps


def test_grid_options_take_lists_and_others_refuse_them(checkpoint, tmp_path):
    from studies import controls, mask_ratio, review_layer

    with pytest.raises(cli.UsageError, match="--reviews 4,5: the option is --review now"):
        controls.main(["--model", checkpoint, "--out", str(tmp_path), "--reviews", "4,5"])
    with pytest.raises(cli.UsageError, match="--lam 0.1,0: this study takes one value"):
        mask_ratio.main(["--model", checkpoint, "--out", str(tmp_path), "--lam", "0.1,0"])
    with pytest.raises(cli.UsageError, match="--heads sum: use mean or max"):
        review_layer.main(["--model", checkpoint, "--out", str(tmp_path), "--heads", "sum"])
    with pytest.raises(cli.UsageError, match="--markdown /tmp/x.md: give a file name; it is written under --out"):
        controls.main(["--model", checkpoint, "--out", str(tmp_path), "--markdown", "/tmp/x.md"])
    assert not list(tmp_path.rglob("*.nc"))


# -- progress -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run():
    import torch

    import mech

    torch.set_num_threads(1)
    model = mech.load("tiny")
    return model, mech.datasets.shapes(split="test", n=4, seed=0)


def test_one_bar_per_phase_as_plain_lines_off_a_terminal(tiny_run, monkeypatch):
    """Off a terminal a phase is plain lines (no carriage return), named by what runs, not a hash."""
    import mech
    from mech import progress

    model, samples = tiny_run
    monkeypatch.setattr(progress, "EVERY", 0.0)  # a line at every update
    monkeypatch.setattr(progress, "_CHECKED", True)
    err = io.StringIO()
    with redirect_stderr(err), progress.phase("2/4 contrastive runs"):
        progress.expect(len(samples) * 3)
        mech.sweep(model, samples, [None, mech.ContrastiveMask(review=5, select="random", seed=1),
                                    mech.ZeroImage(layer=3)], batch_size=2, max_new_tokens=1)
    text = err.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert all(line.startswith("2/4 contrastive runs: ") for line in lines)
    assert lines[-1] == f"2/4 contrastive runs: done, {3 * len(samples)} run-samples in 0:00" or \
        re.fullmatch(rf"2/4 contrastive runs: done, {3 * len(samples)} run-samples in \d+:\d\d", lines[-1])
    assert re.search(r"\d+/12 run-samples \(\d+%\), \d+:\d\d elapsed", text)  # one total for the phase
    assert "shapes · ContrastiveMask review=5 select=random seed=1" in text
    assert not re.search(r"-[0-9a-f]{8}\b", text)  # no slug hash


def test_no_progress_is_silent_transformers_bars_included(checkpoint, tmp_path, capfd):
    from studies import layer_masking

    layer_masking.main(["--model", checkpoint, "--out", str(tmp_path), "--limit", "2", "--batch-size", "2",
                        "--max-new-tokens", "1", "--datasets", "shapes", "--no-progress"])
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err and "run-samples" not in err, err
    from mech import progress

    progress.set_enabled(True)


def test_a_busy_machine_is_said_once(monkeypatch):
    from mech import progress

    monkeypatch.setattr(progress.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(progress, "_CHECKED", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        reasons = progress.check_machine()
        progress.check_machine()
    assert len(seen) == 1 and issubclass(seen[0].category, progress.MachineWarning)
    assert "the machine is busy: load 9.0" in str(seen[0].message)
    assert any("threads" in r for r in reasons) or progress.machine_load()["threads"] <= 1
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(progress, "_CHECKED", False)
    monkeypatch.setattr(progress, "machine_load", lambda: {"load": 0.0, "cores": 2, "threads": 1, "free": 2})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert progress.check_machine() == [] and not seen


# -- tables -------------------------------------------------------------------------------

ABBREVIATIONS = {"Δ": "Δ:", "95% CI": "95% CI:", "p": "p:", "ρ": "ρ:", "λ": "λ:", "changed": "changed:",
                 "n": "n:", "1/t (1/s)": "1/t:"}


def test_tables_explain_every_abbreviation_and_show_the_unmasked_model():
    """Every abbreviation in a header has its legend line; percentages have one decimal."""
    import xarray as xr

    from studies import controls, layer_masking

    n, settings = 30, ["review5|normed|rho0.2|lam0.1"]
    t = xr.Dataset(
        {"contrastive_accuracy": (("row", "setting"), [[0.8125]]), "baseline_accuracy": (("row", "setting"), [[0.8]]),
         "gain": (("row", "setting"), [[0.0125]]), "gain_ci": (("row", "setting", "bound"), [[[-0.01, 0.04]]]),
         "gain_p_value": (("row", "setting"), [[0.4]]), "changed": (("row", "setting"), [[3]]),
         "n_samples": (("row", "setting"), [[n]]), "control_accuracy": (("row", "setting", "control"), [[[0.79]]]),
         "difference": (("row", "setting", "control"), [[[0.0225]]]),
         "difference_ci": (("row", "setting", "control", "bound"), [[[[0.0, 0.05]]]]),
         "p_value": (("row", "setting", "control"), [[[0.06]]])},
        coords={"row": ["shapes"], "setting": settings, "control": ["random"], "bound": ["low", "high"]})
    table = controls.summary_table(t, seeds=3)
    text = table.text(repeat=True)
    for header in table.headers:
        if header in ABBREVIATIONS:
            assert any(line.startswith(ABBREVIATIONS[header]) for line in text.splitlines()), header
    assert "no intervention" in text and "81.2%" in text and "+1.2" in text and "[+0.0, +5.0]" in text
    assert "random: slots drawn at random, mean over 3 seeds per sample" in text
    assert "| shapes | 5 | normed |" in table.markdown() and "<td class=\"num\">81.2%</td>" in table.html()
    assert "p: two-sided paired bootstrap p from the same resamples as the CI" in text
    # the masking table: the unmasked row first, percentages, not fractions
    layers = np.arange(3)
    ds = xr.Dataset({"accuracy": (("dataset", "layer"), [[0.125, 0.5, 0.75]]),
                     "accuracy_ci": (("dataset", "layer", "bound"), np.zeros((1, 3, 2))),
                     "changed": (("dataset", "layer"), [[5, 2, 0]]),
                     "mean_inverse_time": (("dataset", "layer"), [[1.0, 2.0, 3.0]]),
                     "baseline_accuracy": ("dataset", [0.9]),
                     "baseline_accuracy_ci": (("dataset", "bound"), [[0.8, 0.95]]),
                     "baseline_mean_inverse_time": ("dataset", [0.5]), "inverse_time": ((), 0.0)},
                    coords={"dataset": ["shapes"], "layer": layers, "bound": ["low", "high"]})
    text = layer_masking.format_table(ds)
    rows = [line.split() for line in text.splitlines()[2:5]]
    assert rows[0][:3] == ["shapes", "none", "90.0%"] and rows[1][:2] == ["0", "12.5%"]


def test_a_ci_and_its_p_value_never_contradict():
    """p < 0.05 exactly when the 95% CI excludes 0, on discrete scores with many ties."""
    from mech import stats

    rng = np.random.default_rng(0)
    agree = 0
    for trial in range(80):
        n = int(rng.integers(5, 80))
        a = (rng.random(n) < rng.uniform(0.3, 0.9)).astype(float)
        b = np.where(rng.random(n) < rng.uniform(0.0, 0.3), 1 - a, a)  # a few discordant pairs
        r = stats.paired_bootstrap_diff(a, b, seed=trial)
        excludes = r["low"] > 0 or r["high"] < 0
        assert excludes == (r["p_value"] < 0.05), (trial, r)
        agree += excludes
    assert 5 < agree < 75  # both kinds of case occurred
    same = stats.paired_bootstrap_diff(np.ones(10), np.ones(10))
    assert same == {"mean_diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
