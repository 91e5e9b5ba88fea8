"""The model table, and whether GPT-2's real weights can be had here.

No torch import: the book build loads this file on its own to ask before it runs.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["ModelSpec", "SUPPORTED_MODELS", "hub_available"]

@dataclass(frozen=True)
class ModelSpec:
    """One GPT-2 size: the book's name, the hub repository, and the architecture."""

    name: str
    hf_id: str
    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int = 1024
    d_vocab: int = 50257

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


SUPPORTED_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("gpt2-small", "openai-community/gpt2", 12, 12, 768),
        ModelSpec("gpt2-medium", "openai-community/gpt2-medium", 24, 16, 1024),
        ModelSpec("gpt2-large", "openai-community/gpt2-large", 36, 20, 1280),
        ModelSpec("gpt2-xl", "openai-community/gpt2-xl", 48, 25, 1600),
    )
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
    key = model_name.strip().lower()
    spec = SUPPORTED_MODELS.get("gpt2-small" if key == "gpt2" else key)
    hf_id = spec.hf_id if spec else model_name
    return _in_local_cache(hf_id) or _hub_reachable(timeout)
