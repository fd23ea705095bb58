"""Whether the Hugging Face hub can be reached, asked once and quickly, for models and data sets
alike: offline (``HF_HUB_OFFLINE``, or ``HF_DATASETS_OFFLINE`` for data sets) or a hub that does
not answer within a few seconds is told to the user in one line, not after a minute of retries."""

from __future__ import annotations

import os

_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_env(datasets: bool = False) -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when huggingface_hub was
    imported; for data sets ``HF_DATASETS_OFFLINE`` wins when set, as in ``datasets``."""
    from huggingface_hub import constants

    if datasets and os.environ.get("HF_DATASETS_OFFLINE") is not None:
        return os.environ["HF_DATASETS_OFFLINE"].upper() in _TRUE
    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or now.upper() in _TRUE


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub (or the mirror ``HF_ENDPOINT`` names), at most ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def offline_reason(datasets: bool = False) -> str | None:
    """Why the hub cannot be used now (None: it can): the offline variable set, or no answer."""
    if offline_env(datasets):
        return ("HF_DATASETS_OFFLINE is set" if datasets and os.environ.get("HF_DATASETS_OFFLINE")
                else "HF_HUB_OFFLINE is set")
    if not hub_reachable():
        return "the Hugging Face hub cannot be reached"
    return None
