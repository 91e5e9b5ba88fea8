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


def top_activating_snippets(model, text: str, nodes, *, sae=None, k: int = 3,
                            chunk: int = 128, context: int = 8):
    """Dataset examples: each node's ``k`` highest activations over ``text``, with the
    ``context`` tokens before it and the max token in ⟦brackets⟧.

    ``text`` is cut in ``chunk``-token contexts that each start with the BOS token (``chunk −
    1`` text tokens), as GPT-2 SAEs such as ``gpt2-small-res-jb`` were trained and as their
    dataset examples are collected; the BOS position itself is never an example. ``nodes``:
    neuron labels ``"N<layer>.<neuron>"`` or, with ``sae``, latent labels
    ``"L<layer>.<latent>"`` (any ``@position`` suffix is ignored) or ``Node``s.
    """
    from functools import partial

    import pandas as pd
    import torch

    from .debugger.nodes import DebuggerInputError, parse_node, sae_layer
    from .hooks import StopForward, hook_name

    if chunk < 2:
        raise DebuggerInputError(f"chunk must be at least 2 (BOS + one token), got {chunk}.")
    ids = model.to_tokens(text, prepend_bos=False)[0].cpu()
    if ids.numel() < 1:
        raise DebuggerInputError("The text sample is empty.")
    bos = model.tokenizer.bos_token_id
    pieces = [ids[i:i + chunk - 1] for i in range(0, ids.numel(), chunk - 1)]
    parsed = []
    for spec in nodes:
        node = parse_node(spec.split("@")[0] if isinstance(spec, str) else spec, model,
                          10**9, sae=sae)
        if node.kind not in ("neuron", "latent"):
            raise DebuggerInputError(
                f"top_activating_snippets takes neurons or latents, got {node.label!r}.")
        parsed.append(node)
    names = {}
    for node in parsed:
        if node.kind == "neuron":
            names[(node.kind, node.layer)] = hook_name("post", node.layer)
        else:
            names[(node.kind, node.layer)] = hook_name("resid_pre", sae_layer(sae))
    wanted = set(names.values())
    acts = {key: [] for key in names}
    with torch.no_grad():
        for piece in pieces:
            store = {}

            def save(t, hook, name):
                store[name] = t.detach()[0, 1:].float()
                if len(store) == len(wanted):
                    raise StopForward  # the layers above are not needed

            tokens = torch.cat([torch.tensor([bos]), piece])[None].to(model.cfg.device)
            try:
                model.run_with_hooks(tokens, fwd_hooks=[(n, partial(save, name=n)) for n in wanted])
            except StopForward:
                pass
            for (kind, layer), name in names.items():
                a = store[name]
                if kind == "latent":
                    a = sae.encode(a.to(sae.W_enc.device))
                acts[(kind, layer)].append(a.cpu())
    all_ids = torch.cat(pieces).tolist()
    rows = []
    for node in parsed:
        a = torch.cat(acts[(node.kind, node.layer)])[:, node.index]
        for rank, i in enumerate(a.topk(min(k, a.numel())).indices.tolist(), 1):
            start = max(0, i - context, (i // (chunk - 1)) * (chunk - 1))  # within its chunk
            before = model.to_string(all_ids[start:i])
            rows.append({"node": node.label, "rank": rank, "activation": float(a[i]),
                         "snippet": f"{before}⟦{model.to_string([all_ids[i]])}⟧"})
    return pd.DataFrame(rows)
