"""The house's shape (ARCHITECTURE.md): no import circles, arrows point down the layers only,
no module past ~400 lines without a stated reason, and stored chunks stay findable."""

import dataclasses

import pytest

import mech
from tools import architecture as arch


@pytest.fixture(scope="module")
def edges():
    return arch.graph()


def test_the_tool_sees_a_circle_and_an_upward_arrow(tmp_path):
    # A tree with a known circle and a known upward arrow: the checks below are not vacuous.
    pkg = tmp_path / "mech"
    (pkg / "runner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stats.py").write_text("from .runner import job\n")
    (pkg / "runner" / "__init__.py").write_text("")
    (pkg / "runner" / "job.py").write_text("def f():\n    from ..stats import x\n")
    found = arch.graph(tmp_path, ("mech",))
    assert arch.circles(found) == [["mech.runner.job", "mech.stats"]]
    assert arch.upward(found) == [("mech.stats", "mech.runner.job")]


def test_no_import_circles(edges):
    assert arch.circles(edges) == []


def test_no_arrow_points_up_a_layer(edges):
    assert arch.upward(edges) == []


def test_every_mech_module_has_a_layer(edges):
    assert arch.unlayered(edges) == []


def test_long_modules_say_why_they_are_one_piece():
    assert arch.long_without_reason() == []


def test_fingerprinted_types_keep_their_public_names():
    # A type's name is part of every chunk fingerprint: where the class is defined may
    # move, the name chunks were stored under may not.
    public = {"mech.interventions": ["ZeroImage", "ScaleImage", "Knockout", "CaptureImageAttention",
                                     "ContrastiveMask"],
              "mech.dola": ["DoLa"], "mech.vicrop": ["ViCrop"]}
    for module, names in public.items():
        for name in names:
            cls = getattr(mech, name)
            assert dataclasses.is_dataclass(cls)
            fields = {f.name: 0 for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING}
            assert mech.store.canonical(cls(**fields))["type"] == f"{module}.{name}"
