import os
import sys

# Tests build their own fixtures; nothing may reach a model or data hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from tiny_models import QUESTIONS, random_images, tiny_llava

torch.set_num_threads(1)  # 2 shared cores: one thread is faster and deterministic here

FAMILIES = ["llava-1.5", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "gemma3", "internvl"]
# Rows differ in image-token count wherever the family allows (anyres tiles, dynamic
# resolution, InternVL's tiles depend on the image size; LLaVA-1.5 and Gemma 3 are fixed).
SIZES = [(40, 50), (30, 90), (64, 40)]


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def models(family):
    """``{attn: mech.Model}`` with identical random weights under SDPA and eager."""
    import mech

    out = {}
    for attn in ("sdpa", "eager"):
        module, processor = tiny_llava(family, attn=attn)
        out[attn] = mech.load(module, processor=processor)
    return out


@pytest.fixture(scope="session")
def model(models):
    return models["sdpa"]


@pytest.fixture(scope="session")
def batch(model):
    return model.prepare(questions=QUESTIONS, images=random_images(3, sizes=SIZES))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A saved 6-layer random LLaVA whose processor knows the shapes words (study tests)."""
    from mech.datasets.shapes import VOCABULARY
    from mech.zoo.random_llava import random_llava

    folder = tmp_path_factory.mktemp("random-llava")
    module, processor = random_llava(layers=6, image_size=64, patch_size=16, words=VOCABULARY)
    module.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


class _NoMech:
    """A meta-path finder that refuses mech, as a server without mech installed would."""

    def find_spec(self, name, path=None, target=None):
        if name == "mech" or name.startswith("mech."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: remote='local' stands for a server "
                                      "without mech)")


@pytest.fixture(scope="session", autouse=True)
def remote_local_without_mech():
    """``remote="local"`` hides local modules while it deserialises a request, but an
    editable install's import hook would still find mech; block it there too, so a trace
    that does not ship all of its mech code fails here as it would on NDIF."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    hide, restore = LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore
    blocker = _NoMech()

    def hide_all(self):
        hidden = hide(self)
        sys.meta_path.insert(0, blocker)
        return hidden

    def restore_all(self, hidden):
        if blocker in sys.meta_path:
            sys.meta_path.remove(blocker)
        restore(self, hidden)

    LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore = hide_all, restore_all
    yield
    LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore = hide, restore
