"""Running on NDIF: which models the server serves, and a clear error when it does not.

Every primitive and the runner take nnsight's ``remote=``: ``True`` sends the trace to
the NDIF server configured in nnsight (``NDIF_HOST``, ``NDIF_API_KEY`` or
``nnsight.CONFIG``); ``"local"`` is nnsight's dry run, which serialises the request,
deserialises it with local modules hidden and runs it here. Only values saved in the
trace come back (``mech.apply`` saves its results; ``tr.result`` holds generated ids).
"""

from __future__ import annotations


def require_served(model_id: str, revision: str | None = None) -> None:
    """Raise ``ValueError`` unless NDIF is reachable and runs ``model_id`` now."""
    import nnsight

    from .model_files import EMBEDDED

    if model_id in EMBEDDED:
        raise ValueError(f"the embedded tiny model {model_id!r} is not served by NDIF; use remote='local' (the "
                         "serialisation dry run) with it, or a served model id such as "
                         "llava-hf/llava-1.5-7b-hf")
    if not nnsight.is_model_running(model_id, revision=revision or "main"):
        raise ValueError(f"NDIF does not serve {model_id!r} right now, or the server is unreachable. "
                         "`print(nnsight.status())` lists the deployed models; check NDIF_HOST / "
                         "NDIF_API_KEY, pick a served model, or run without remote")


def ship_by_value(package: str = "mech") -> None:
    """Make remote traces carry mech's code (NDIF has no mech installed).

    ``nnsight.register`` marks the package for pickling by value. A trace body that
    mentions ``mech`` then ships the package module itself, whose ``__dict__`` holds every
    mech submodule imported so far: command-line and training code (``mech.demo``,
    ``mech.zoo``) has nothing to do on the server and can make the pickle fail (too deep,
    or objects cloudpickle only pickles by reference). So the package ships with its
    public API (``__all__``) only; submodules a trace uses directly still ship by value.
    """
    import types

    import nnsight
    from cloudpickle import cloudpickle as cp
    from cloudpickle import cloudpickle_fast as cpf

    nnsight.register(package)
    table = cpf.CloudPickler._dispatch_table
    default = table[types.ModuleType]
    if getattr(default, "ships_public_api_of", None) == package:
        return

    def reduce_module(module):
        if module.__name__ == package and not cp._should_pickle_by_reference(module):
            keep = {*getattr(module, "__all__", ()), "__name__", "__doc__", "__package__", "__path__", "__all__"}
            return cp.dynamic_subimport, (module.__name__, {k: v for k, v in vars(module).items() if k in keep})
        return default(module)

    reduce_module.ships_public_api_of = package
    table[types.ModuleType] = reduce_module
