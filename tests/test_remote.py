"""Every primitive through nnsight's remote path (``remote="local"``: the request is
serialised, deserialised with local modules hidden, then run) equals the local run."""

import pytest
import torch

import mech

PRIMITIVES = {
    "zero": lambda: [mech.ZeroImage(layer=1)],
    "scale-output": lambda: [mech.ScaleImage(layer=2, weights=0.3, at="output")],
    "knockout": lambda: [mech.Knockout(layers=[0, 3], query="text")],
    "capture": lambda: [mech.CaptureImageAttention(layers=[0, 2], heads="max")],
    "contrastive": lambda: [mech.ContrastiveMask(review=3, candidates=[0, 1])],
    "composed": lambda: [mech.ContrastiveMask(review=3), mech.ZeroImage(layer=0, at="output")],
}


def run(model, batch, interventions, remote):
    kwargs = {"remote": "local"} if remote else {}
    with torch.no_grad():
        with model.trace(batch, **kwargs):
            results = mech.apply(model, batch, *interventions)
            logits = model.logits.save()
        with model.generate(batch, max_new_tokens=3, **kwargs) as tr:
            mech.apply(model, batch, *interventions)
            ids = tr.result.save()
    return results, logits, ids


def flat(results):
    results = results if isinstance(results, tuple) else (results,)
    return [(k, v) for r in results for k, v in sorted(r.items())]


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_remote_local_equals_local(model, batch, name):
    local = run(model, batch, PRIMITIVES[name](), remote=False)
    remote = run(model, batch, PRIMITIVES[name](), remote=True)
    assert torch.equal(local[1], remote[1])
    assert torch.equal(local[2], remote[2])
    for (k1, v1), (k2, v2) in zip(flat(local[0]), flat(remote[0]), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


BLOCK_MECH = """
import sys, pickle
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "mech" or name.startswith("mech."):
            raise ModuleNotFoundError("mech is not installed on this server")
sys.meta_path.insert(0, Block())
import torch
hellinger, intervention = pickle.loads(sys.stdin.buffer.read())
p = torch.tensor([0.5, 0.5]); q = torch.tensor([1.0, 0.0])
print(round(float(hellinger(p, q)), 6), type(intervention).__name__, intervention.rho)
"""


def test_mech_code_ships_by_value_to_a_server_without_mech():
    """What a trace references from mech must unpickle where mech cannot be imported,
    even when mech is pip-installed here (then nnsight does not auto-register it)."""
    import subprocess
    import sys

    import cloudpickle

    payload = cloudpickle.dumps((mech.contrastive.hellinger, mech.ContrastiveMask(review=3, rho=0.3)))
    done = subprocess.run([sys.executable, "-c", BLOCK_MECH], input=payload, capture_output=True,
                          cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["0.541196", "ContrastiveMask", "0.3"]


def test_remote_trace_works_with_every_mech_module_imported():
    """Shipping mech must not depend on which of its modules happen to be imported
    (the CLI and training code once made the pickle fail)."""
    import subprocess
    import sys

    script = """
import importlib, pkgutil, torch, mech
for info in pkgutil.walk_packages(mech.__path__, "mech."):
    importlib.import_module(info.name)
from mech.zoo.random_llava import random_llava, random_images
module, processor = random_llava()
model = mech.load(module, processor=processor)
batch = model.prepare(questions=["what color is the circle?", "is red?"], images=random_images(2))
with torch.no_grad(), model.trace(batch, remote="local"):
    got = mech.apply(model, batch, mech.CaptureImageAttention(layers=[1]))
print("shipped", tuple(got[1].shape))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shipped (2, 16)" in done.stdout


def test_every_mech_class_and_function_ships_by_value():
    """nnsight pickles mech code by value for remote runs; every class and function mech
    defines must round-trip through cloudpickle (a typing.NamedTuple, for one, does not in
    cloudpickle 2.1). In a subprocess: unpickling a class by value in the process that
    defined it resets its dataclass fields (cloudpickle 2.1), which would spoil later tests."""
    import subprocess
    import sys

    script = """
import importlib, inspect, pickle, pkgutil, cloudpickle, mech
for info in pkgutil.walk_packages(mech.__path__, "mech."):
    if info.name == "mech.demo" or info.name.startswith("mech.zoo"):
        continue  # command-line and training code: never inside a trace
    module = importlib.import_module(info.name)
    for name, value in vars(module).items():
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == info.name:
            pickle.loads(cloudpickle.dumps(value))
print("all shipped")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all shipped" in done.stdout
