"""The notebooks run top to bottom on the embedded model; a broken cell fails the build."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(autouse=True)
def kernel_imports_this_checkout(monkeypatch):
    """The kernel runs in a temporary folder; it must import the code under test."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def execute(notebook, cwd):
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def test_there_are_four_notebooks_with_stripped_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_layer_masking.ipynb",
                                           "03_contrastive_attention.ipynb", "04_analysis.ipynb"]
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    notebook = execute(nbformat.read(path, as_version=4), tmp_path)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure"


def test_a_broken_cell_fails(tmp_path):
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    notebook.cells.insert(2, nbformat.v4.new_code_cell("model.no_such_method()"))
    with pytest.raises(CellExecutionError, match="no_such_method"):
        execute(notebook, tmp_path)
