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

    if model_id == "tiny":
        raise ValueError("the embedded tiny model is not served by NDIF; use remote='local' (the "
                         "serialisation dry run) with it, or a served model id such as "
                         "llava-hf/llava-1.5-7b-hf")
    if not nnsight.is_model_running(model_id, revision=revision or "main"):
        raise ValueError(f"NDIF does not serve {model_id!r} right now, or the server is unreachable. "
                         "`print(nnsight.status())` lists the deployed models; check NDIF_HOST / "
                         "NDIF_API_KEY, pick a served model, or run without remote")
