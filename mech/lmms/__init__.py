"""lmms-eval runs mech: the ``mech`` model of lmms-eval 0.7.3 and two local tasks.

    lmms-eval --model mech --model_args pretrained=tiny,intervention=zero:2 \\
        --tasks mech_shapes --include_path "$(python -m mech.lmms.make_tasks)"

lmms-eval finds plugin models through the Python entry-point group ``lmms_eval.models``;
mech's (``pyproject.toml``) is `manifest`. The model (`mech.lmms.model.Mech`) loads
through `mech.load`, builds prompts with mech's templates and applies mech's
interventions (`mech.lmms.options`: ``--model_args``); lmms-eval batches, passes the
generation arguments and scores with its own task code. `mech.lmms.make_tasks` writes the
local tasks (the shapes test set and easy-vqa, scored by lmms-eval's VQAv2 and GQA rules)
to a folder for ``--include_path``.

Nothing here imports lmms-eval until lmms-eval itself asks for the model.
"""

__all__ = ["manifest", "MODEL_ID"]

MODEL_ID = "mech"


def manifest():
    """The entry-point payload: lmms-eval's manifest of the ``mech`` chat model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path="mech.lmms.model.Mech")
