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

__all__ = ["top_heads", "format_heads", "top_fraction_heads", "attention_between", "copy_score", "ov_logits"]


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
    tokens = as_tokens(tokens).to(model.cfg.device)
    n = tokens.shape[0]
    heads = [parse_head(h) for h in heads]
    q = torch.as_tensor(query).expand(n) if torch.as_tensor(query).ndim == 0 else torch.as_tensor(query)
    kk = torch.as_tensor(key).expand(n) if torch.as_tensor(key).ndim == 0 else torch.as_tensor(key)
    names = sorted({hook_name("pattern", L) for L, _ in heads})
    _, cache = model.run_with_cache(tokens, names_filter=names)
    rows = torch.arange(n)
    return {
        head_label(L, h): cache[hook_name("pattern", L)][rows, h, q, kk].mean().item() for L, h in heads
    }


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
) -> dict[str, float]:
    """``{"L.H": share}``: how often a token is in the top ``k`` of its own OV logits.

    ``resid``: ``[m, d_model]`` residual streams read in context (e.g. ``blocks.0.
    hook_resid_post`` at the name positions of IOI prompts); ``token_ids``: ``[m]`` the token
    each row carries. ``sign=-1`` scores suppression instead (the negative copy score).
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
            logits = sign * ov_logits(model, head, resid[start : start + 256], include_bias=include_bias)
            top = logits.topk(k, dim=-1).indices
            hits += (top == token_ids[start : start + 256, None]).any(-1).float().sum().item()
        out[head_label(*parse_head(head))] = hits / max(1, resid.shape[0])
    return out


def top_fraction_heads(scores: torch.Tensor, fraction: float) -> list[str]:
    """The ``ceil(fraction · n)`` heads with the largest ``|score|`` (``n`` = heads scored;
    ``NaN`` = not scored), as ``"L.H"`` labels: Merullo et al.'s "top 2% per stage"."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores = torch.as_tensor(scores).detach().float().cpu()
    valid = int((~scores.isnan()).sum())
    k = max(1, math.ceil(fraction * valid - 1e-9))
    return [label for label, _ in top_heads(scores.abs(), k)]
