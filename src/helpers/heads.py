"""Head-level analyses every chapter uses: rankings, attention between positions, copying.

* :func:`top_heads` / :func:`format_heads`: the k heads with the largest (or smallest) score
  in a ``[n_layers, n_heads]`` map, named ``L.H``.
* :func:`attention_between`: mean attention, per head, from one named position to another
  (e.g. END → IO for the name movers).
* :func:`copy_score`: the share of tokens a head's OV circuit copies (or, with ``sign=-1``,
  suppresses), read from residual streams taken *in context*: push each residual through the
  head's OV circuit and the unembedding and ask whether the token itself is in the top k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from .circuits import Head, head_label, parse_head
from .hooks import as_tokens, folded_layer_norm, hook_name

__all__ = ["top_heads", "format_heads", "top_fraction_heads", "attention_between", "attention_values",
           "copy_score", "copy_logits", "head_value_bias", "ov_logits"]


def top_heads(scores: torch.Tensor, k: int = 5, *, largest: bool = True) -> list[tuple[str, float]]:
    """``[("L.H", score), ...]``: the ``k`` heads with the largest (or smallest) scores.

    ``scores``: ``[n_layers, n_heads]``; ``NaN`` entries (heads not scored) are never picked.
    """
    scores = torch.as_tensor(scores).detach().float().cpu()
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_layers, n_heads], got shape {tuple(scores.shape)}")
    flat = scores.flatten()
    valid = (~flat.isnan()).sum().item()
    fill = float("-inf") if largest else float("inf")
    idx = torch.nan_to_num(flat, nan=fill).topk(min(k, int(valid)), largest=largest).indices
    n_heads = scores.shape[1]
    return [(head_label(i // n_heads, i % n_heads), flat[i].item()) for i in idx.tolist()]


def format_heads(ranked: Iterable[tuple[str, float]], fmt: str = "+.2f") -> str:
    """``"9.9 (+1.23), 9.6 (+0.98)"`` from :func:`top_heads`' output."""
    return ", ".join(f"{label} ({value:{fmt}})" for label, value in ranked)


@torch.no_grad()
def attention_between(
    model,
    tokens,
    heads: Iterable[str | Head],
    query: torch.Tensor | int,
    key: torch.Tensor | int,
) -> dict[str, float]:
    """``{"L.H": mean attention}`` from position ``query`` to position ``key``, per head.

    ``tokens``: ``[n, seq]``; ``query``, ``key``: ``[n]`` positions (one per prompt) or ints.
    Only the patterns of the heads' layers are kept.
    """
    heads = [parse_head(h) for h in heads]
    values = attention_values(model, tokens, heads, query, key)  # [n, len(heads)]
    return {head_label(L, h): values[:, i].mean().item() for i, (L, h) in enumerate(heads)}


@torch.no_grad()
def ov_logits(model, head: str | Head, resid: torch.Tensor, *, include_bias: bool = True) -> torch.Tensor:
    """``[m, d_vocab]``: residuals ``resid [m, d_model]`` through one head's OV circuit and
    the unembedding, with the (folded) LayerNorms in front of the head and the unembedding.

    ``include_bias`` adds the head's value bias ``b_V`` (the paper's code does).
    """
    L, h = parse_head(head)
    eps = model.cfg.eps
    v = folded_layer_norm(resid, eps) @ model.W_V[L, h]
    if include_bias:
        v = v + model.b_V[L, h]
    out = v @ model.W_O[L, h]  # [m, d_model]
    return folded_layer_norm(out, eps) @ model.W_U


def head_value_bias(model, head: str | Head) -> torch.Tensor:
    """``[d_head]``: one head's own value bias, LayerNorm folded in, as the papers' code had it.

    Compatibility mode folds every value bias into the layer's ``b_O`` (``model.b_V`` is 0
    there), so :func:`helpers.models.finish_model` records them per head beforehand
    (``model.casebook_value_bias``); a model not loaded through it cannot say.
    """
    L, h = parse_head(head)
    recorded = getattr(model, "casebook_value_bias", None)
    if recorded is None:
        raise ValueError(
            "This model carries no record of its per-head value biases (compatibility mode "
            "folds them into b_O, so model.b_V is 0). Load it with helpers.load_model (or "
            "helpers.models.finish_model), which records them as model.casebook_value_bias, "
            "or pass include_bias=False to leave the value bias out.")
    return recorded[L, h].to(model.W_V.device)


@torch.no_grad()
def copy_logits(model, head: str | Head, resid: torch.Tensor, *, sign: int = 1,
                include_bias: bool = True, unembed_bias: bool = True) -> torch.Tensor:
    """``[m, d_vocab]``: the copy score's logits, as Wang et al.'s code computes them.

    ``resid [m, d_model]`` through the (folded) LayerNorm in front of the head, the head's
    ``W_V`` plus its own value bias :func:`head_value_bias` (``include_bias``), its ``W_O``,
    times ``sign``, then the final (folded) LayerNorm and the unembedding with its bias
    ``b_U`` (``unembed_bias``; not multiplied by ``sign``: the authors flip the head's output,
    not the unembedding). Compatibility mode's folded ``b_U`` is the final LayerNorm's bias
    through ``W_U`` (centred over the vocabulary, which moves no token's rank).
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (copying) or -1 (suppression), got {sign!r}")
    L, h = parse_head(head)
    eps = model.cfg.eps
    v = folded_layer_norm(resid, eps) @ model.W_V[L, h]
    if include_bias:
        v = v + head_value_bias(model, (L, h))
    logits = folded_layer_norm(sign * (v @ model.W_O[L, h]), eps) @ model.W_U
    return logits + model.b_U if unembed_bias else logits


@torch.no_grad()
def copy_score(
    model,
    heads: Iterable[str | Head],
    resid: torch.Tensor,
    token_ids: torch.Tensor | Sequence[int],
    *,
    k: int = 5,
    sign: int = 1,
    include_bias: bool = True,
    unembed_bias: bool = True,
) -> dict[str, float]:
    """``{"L.H": share}``: how often a token is in the top ``k`` of its own copy logits.

    ``resid``: ``[m, d_model]`` residual streams read in context (e.g. ``blocks.0.
    hook_resid_post`` at the name positions of IOI prompts); ``token_ids``: ``[m]`` the token
    each row carries. ``sign=-1`` scores suppression instead (the negative copy score).
    The logits are :func:`copy_logits`: the head's own value bias (``include_bias``) and the
    unembedding bias (``unembed_bias``) included, as in Wang et al.'s code.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (copying) or -1 (suppression), got {sign!r}")
    token_ids = torch.as_tensor(token_ids, device=resid.device).reshape(-1)
    if resid.ndim != 2 or resid.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"resid must be [m, d_model] with one row per token id ({token_ids.shape[0]}), "
            f"got {tuple(resid.shape)}"
        )
    out = {}
    for head in heads:
        hits = 0.0
        for start in range(0, resid.shape[0], 256):  # 256 rows of d_vocab logits at a time
            logits = copy_logits(model, head, resid[start : start + 256], sign=sign,
                                 include_bias=include_bias, unembed_bias=unembed_bias)
            top = logits.topk(k, dim=-1).indices
            hits += (top == token_ids[start : start + 256, None]).any(-1).float().sum().item()
        out[head_label(*parse_head(head))] = hits / max(1, resid.shape[0])
    return out


def attention_values(model, tokens, heads: Iterable[str | Head], query, key) -> torch.Tensor:
    """``[n, len(heads)]``: each prompt's attention from ``query`` to ``key`` per head (the
    per-prompt values behind :func:`attention_between`, for standard errors)."""
    tokens = as_tokens(tokens).to(model.cfg.device)
    n = tokens.shape[0]
    heads = [parse_head(h) for h in heads]
    q = torch.as_tensor(query).expand(n) if torch.as_tensor(query).ndim == 0 else torch.as_tensor(query)
    kk = torch.as_tensor(key).expand(n) if torch.as_tensor(key).ndim == 0 else torch.as_tensor(key)
    names = sorted({hook_name("pattern", L) for L, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out = []
    for L, h in heads:
        pattern = cache[hook_name("pattern", L)]
        dev = pattern.device
        rows = torch.arange(n, device=dev)
        out.append(pattern[rows, h, q.to(dev), kk.to(dev)].float().cpu())
    return torch.stack(out, dim=1)


def top_fraction_heads(scores: torch.Tensor, fraction: float) -> list[str]:
    """The ``ceil(fraction · n)`` heads with the largest ``|score|`` (``n`` = heads scored;
    ``NaN`` = not scored), as ``"L.H"`` labels: Merullo et al.'s "top 2% per stage"."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores = torch.as_tensor(scores).detach().float().cpu()
    valid = int((~scores.isnan()).sum())
    k = max(1, math.ceil(fraction * valid - 1e-9))
    return [label for label, _ in top_heads(scores.abs(), k)]
