"""Interventions on attention patterns: set a head's attention row, or block some keys.

:func:`attention_edit_hooks` returns ``hook_pattern`` hooks for ``model.run_with_hooks``. At
one query position per prompt, each chosen head's attention row is either replaced by a
given distribution (Merullo et al.'s repair of the inhibition heads: ½ on each wrong color)
or has some keys blocked (their weight set to 0 and the row renormalised: attention
knockout). Nothing else changes: other heads, other query positions, other layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .circuits import Head, parse_head
from .hooks import hook_name

__all__ = ["attention_edit_hooks"]


def attention_edit_hooks(
    model,
    heads: Iterable[str | Head],
    query: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    block: torch.Tensor | None = None,
) -> list:
    """``hook_pattern`` hooks editing the attention of ``heads`` at one query position per prompt.

    ``query``: ``[n]`` positions. ``rows``: ``[n, seq]`` new attention rows (each must sum to 1
    and put no weight after its query position). ``block``: ``[n, seq]`` bool, keys whose
    weight is set to 0 before the row is renormalised (a row left with no weight raises).
    Exactly one of ``rows`` and ``block`` is given.
    """
    if (rows is None) == (block is None):
        raise ValueError("give exactly one of rows= (new attention rows) or block= (keys to block)")
    query = torch.as_tensor(query, dtype=torch.long).reshape(-1)
    n = query.shape[0]
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[0] != n:
            raise ValueError(f"rows must be [n, seq] with n = {n}, got {tuple(rows.shape)}")
        sums = rows.sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
            i = int((sums - 1).abs().argmax())
            raise ValueError(f"attention row {i} sums to {sums[i].item():.4f}; each row must sum to 1")
        after = torch.arange(rows.shape[1])[None, :] > query[:, None]
        if (rows * after).abs().sum() > 0:
            raise ValueError("a new attention row puts weight after its query position (not causal)")
    if block is not None:
        block = torch.as_tensor(block, dtype=torch.bool)
        if block.ndim != 2 or block.shape[0] != n:
            raise ValueError(f"block must be [n, seq] with n = {n}, got {tuple(block.shape)}")
    by_layer: dict[int, list[int]] = {}
    for head in heads:
        L, h = parse_head(head)
        if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"head {L}.{h} does not exist in a {model.cfg.n_layers}x{model.cfg.n_heads} model")
        by_layer.setdefault(L, []).append(h)

    def make(hs: list[int]):
        def edit(pattern, hook):  # [n, heads, query, key]
            pattern = pattern.clone()
            b = torch.arange(n, device=pattern.device)
            q = query.to(pattern.device)
            seq = pattern.shape[-1]
            for h in hs:
                if rows is not None:
                    pattern[b, h, q] = rows[:, :seq].to(pattern)
                else:
                    row = pattern[b, h, q].masked_fill(block[:, :seq].to(pattern.device), 0.0)
                    total = row.sum(-1, keepdim=True)
                    if (total <= 0).any():
                        raise ValueError("blocking these keys leaves an attention row with no weight")
                    pattern[b, h, q] = row / total
            return pattern

        return edit

    return [(hook_name("pattern", L), make(hs)) for L, hs in sorted(by_layer.items())]
