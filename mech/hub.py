"""Is the Hugging Face hub there? Asked before a download, so that an offline machine
gets one clear sentence at once instead of a retrying client's traceback 30 s later."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = ["offline", "reachable", "unavailable"]


def offline() -> bool:
    """True when hub access is switched off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


_REACHABLE: dict[tuple, bool] = {}  # asked once per endpoint (a plain dict: functools.cache
# wrappers pickle by reference, and remote traces ship this module by value to a server without mech)


def reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    key = (url.hostname, url.port, url.scheme, timeout)
    if key not in _REACHABLE:
        try:
            with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                          timeout=timeout):
                _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]


def unavailable(what: str, fix: str) -> str | None:
    """Why ``what`` cannot come from the hub now (with ``fix``), or None if it can."""
    if offline():
        return None  # the cache may hold it; the caller tries the cache and words its own error
    if not reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        return f"{what}: the Hugging Face hub ({host}) is unreachable from this machine; {fix}"
    return None
