"""Positional-information interventions: where does a head learn *which* position it is at?

Two ways a token position can reach a head (García-Carrasco et al. 2024, §positional
experiments): through the learned positional embeddings, or through the causal mask, which
makes the share of attention a query position pays to BOS depend on how many tokens it
sees. The hooks below remove one of the two at a time:

* :func:`swap_pos_embed_hooks`: swap the positional embeddings of two positions;
* :func:`swap_bos_attention_hooks`: in chosen heads, swap the attention-to-BOS probability
  of two query positions (each row's other entries rescaled so it still sums to one);
* :func:`bos_swap_sweep`: the metric (or several) with the BOS swap applied to one head
  at a time.

Hooks are ``(name, fn)`` pairs for ``model.run_with_hooks`` / :func:`helpers.capture`.
Positions are columns of the token tensor (the same for every prompt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .circuits import Head
from .hooks import StopForward, as_heads, as_tokens, hook_name, one_position_per_prompt
from .metrics import PositionMetric, metric_scalar

__all__ = ["swap_pos_embed_hooks", "swap_bos_attention_hooks", "bos_swap_sweep"]


def _check_positions(a: int, b: int) -> tuple[int, int]:
    a, b = int(a), int(b)
    if a < 0 or b < 0:
        raise ValueError(f"positions must be non-negative columns, got {a} and {b}")
    return a, b


def swap_pos_embed_hooks(pos_a: int, pos_b: int) -> list:
    """A hook swapping the positional embeddings of columns ``pos_a`` and ``pos_b``."""
    a, b = _check_positions(pos_a, pos_b)

    def swap(pe, hook):
        if max(a, b) >= pe.shape[1]:
            raise IndexError(f"positions {a}, {b} outside a sequence of {pe.shape[1]}")
        out = pe.clone()
        out[:, [a, b]] = pe[:, [b, a]]
        return out

    return [(hook_name("pos_embed"), swap)]


def _swap_bos_rows(pattern: torch.Tensor, heads: list[int], a: int, b: int) -> torch.Tensor:
    """``pattern [batch, head, q, k]`` with the BOS (key 0) share of rows ``a`` and ``b``
    swapped in ``heads``; each row's non-BOS entries rescaled to keep its sum."""
    out = pattern.clone()
    for h in heads:
        bos_a, bos_b = pattern[:, h, a, 0], pattern[:, h, b, 0]
        for row, old, new in ((a, bos_a, bos_b), (b, bos_b, bos_a)):
            rest = (1 - new) / (1 - old).clamp_min(1e-9)
            out[:, h, row] = pattern[:, h, row] * rest[:, None]
            out[:, h, row, 0] = new
    return out


def swap_bos_attention_hooks(model, heads: Iterable[Head], q_a: int, q_b: int) -> list:
    """Hooks swapping attention-to-BOS between query positions ``q_a`` and ``q_b`` in ``heads``."""
    a, b = _check_positions(q_a, q_b)
    by_layer: dict[int, list[int]] = {}
    for L, h in as_heads(list(heads), model):
        by_layer.setdefault(L, []).append(h)
    hooks = []
    for L, hs in sorted(by_layer.items()):

        def swap(pattern, hook, _hs=hs):
            if max(a, b) >= pattern.shape[2]:
                raise IndexError(f"query positions {a}, {b} outside a sequence of {pattern.shape[2]}")
            return _swap_bos_rows(pattern, _hs, a, b)

        hooks.append((hook_name("pattern", L), swap))
    return hooks


@torch.no_grad()
def bos_swap_sweep(
    model,
    tokens,
    metric: Callable | Mapping[Any, Callable],
    q_a: int,
    q_b: int,
    *,
    heads: Iterable[Head] | None = None,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> torch.Tensor | dict[Any, torch.Tensor]:
    """``[n_layers, n_heads]``: the metric with the BOS swap applied to one head at a time.

    ``metric``: one callable on the logits, or ``{key: callable}`` to read several metrics
    (e.g. one per answer position) from the same forward passes; then the result is
    ``{key: [n_layers, n_heads]}``. ``heads``: the heads to try (default all; the rest are
    ``NaN``). Several heads are tried in one forward pass (copies of the batch stacked, up
    to ``batch_tokens`` tokens). When every metric is a :class:`~helpers.PositionMetric`,
    only the positions they read are unembedded.
    """
    tokens = as_tokens(tokens).to(model.cfg.device)
    batch, seq = tokens.shape
    heads = as_heads(heads, model)
    a, b = _check_positions(q_a, q_b)
    metrics = dict(metric) if isinstance(metric, Mapping) else {None: metric}
    if not metrics:
        raise ValueError("metric must be a callable or a non-empty {key: callable} mapping")
    out = {k: torch.full((model.cfg.n_layers, model.cfg.n_heads), math.nan) for k in metrics}
    # PositionMetrics read one position per prompt: skip the full [batch, seq, d_vocab] logits
    at_positions = all(isinstance(fn, PositionMetric) for fn in metrics.values())
    per_pass = max(1, batch_tokens // (batch * seq))
    groups = [heads[i : i + per_pass] for i in range(0, len(heads), per_pass)]
    if progress:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="BOS swap, one head at a time")
    for group in groups:
        k = len(group)
        fwd = []
        for L in sorted({L for L, _ in group}):

            def swap(pattern, hook, _L=L, _group=group):
                view = pattern.view(len(_group), -1, *pattern.shape[1:]).clone()
                for j, (gl, h) in enumerate(_group):
                    if gl == _L:
                        view[j] = _swap_bos_rows(view[j], [h], a, b)
                return view.view(pattern.shape)

            fwd.append((hook_name("pattern", L), swap))
        stacked = tokens.repeat(k, 1)
        if at_positions:  # unembed only the rows the metrics read
            resid = _final_resid(model, stacked, fwd).view(k, batch, seq, -1)
            for key, fn in metrics.items():
                pos = one_position_per_prompt(fn.positions, batch, seq).to(resid.device)
                rows = resid[:, torch.arange(batch, device=resid.device), pos]  # [k, batch, d]
                logits = model.unembed(model.ln_final(rows.reshape(k * batch, 1, -1)))[:, 0]
                logits = logits.view(k, batch, -1)
                for j, (L, h) in enumerate(group):
                    out[key][L, h] = metric_scalar(fn.fn(logits[j]))
            continue
        logits = model.run_with_hooks(stacked, fwd_hooks=fwd)
        logits = logits.view(k, batch, *logits.shape[1:])
        for j, (L, h) in enumerate(group):
            for key, fn in metrics.items():
                out[key][L, h] = metric_scalar(fn(logits[j]))
    return out if isinstance(metric, Mapping) else out[None]


def _final_resid(model, tokens, fwd_hooks) -> torch.Tensor:
    """``[batch, seq, d_model]``: the residual stream entering the final LayerNorm (the
    forward pass stops there, so the full logits are never built)."""
    store: dict[str, torch.Tensor] = {}

    def grab(resid, hook):
        store["resid"] = resid
        raise StopForward

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (hook_name("final_resid"), grab)])
    except StopForward:
        pass
    if "resid" not in store:
        raise RuntimeError("the model has no final-residual hook point")
    return store["resid"]
