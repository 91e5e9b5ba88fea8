"""Natural text for chapters that score a model on running text (successor heads, debugging).

The usual sample for GPT-2 analyses is the first documents of the Pile 10k sample
(``NeelNanda/pile-10k`` on the Hugging Face hub), loaded with ``datasets``. Offline, each
chapter falls back to a short text shipped with it (written for the book, CC0) and says so.
"""

from __future__ import annotations

PILE_SAMPLE = "NeelNanda/pile-10k"


def pile_documents(n_docs: int, *, max_chars: int = 2000) -> list[str]:
    """The first ``n_docs`` documents of the Pile 10k sample, each cut to ``max_chars``.

    Needs the hub (``datasets.load_dataset``); raises ``RuntimeError`` naming the data set
    and the fix when it cannot be loaded.
    """
    if n_docs < 1:
        raise ValueError(f"n_docs must be at least 1, got {n_docs}")
    try:
        from datasets import load_dataset

        ds = load_dataset(PILE_SAMPLE, split=f"train[:{n_docs}]")
    except Exception as err:
        raise RuntimeError(
            f"The Pile sample {PILE_SAMPLE!r} could not be loaded from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Run with network access (Colab, a laptop), or pass "
            f"use_hub=False to use the text shipped with the chapter."
        ) from err
    return [t[:max_chars] for t in ds["text"]]


def text_sample(shipped: list[str], n_docs: int, *, use_hub: bool, max_chars: int = 2000,
                shipped_name: str = "the book's own text sample (CC0)") -> tuple[list[str], str]:
    """``(documents, source)``: the Pile sample when ``use_hub`` and the hub answers, else the
    first ``n_docs`` of ``shipped`` (printing why when the hub was asked for and failed)."""
    if n_docs < 1:
        raise ValueError(f"n_docs must be at least 1, got {n_docs}")
    if use_hub:
        try:
            return pile_documents(n_docs, max_chars=max_chars), f"the Pile 10k sample ({PILE_SAMPLE})"
        except RuntimeError as err:
            print(f"{err}\nUsing {shipped_name} instead.")
    return [d[:max_chars] for d in shipped[:n_docs]], shipped_name
