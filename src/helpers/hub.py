"""Can GPT-2's real weights be had here? (No torch import: the book build asks before it runs.)"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

__all__ = ["hub_available"]

HF_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_flag() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _in_local_cache(hf_id: str) -> bool:
    """True when the repository's config and weights are both in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(hf_id, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin"))


def _hub_reachable(timeout: float = 5.0) -> bool:
    if _offline_flag():
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(_hub_endpoint(), method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # the server answered
    except (urllib.error.URLError, OSError, ValueError):
        return False


def hub_available(model_name: str = "gpt2-small", timeout: float = 5.0) -> bool:
    """Can ``weights="pretrained"`` work here: weights cached, or the hub reachable?

    ``model_name``: a book name (``gpt2-small``) or a hub id (``openai-community/gpt2``).
    """
    hf_id = HF_IDS.get(model_name.strip().lower(), model_name)
    return _in_local_cache(hf_id) or _hub_reachable(timeout)
