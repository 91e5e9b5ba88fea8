"""Positional-information interventions: where does a head learn *which* position it is at?

Two ways a token position can reach a head (García-Carrasco et al. 2024, §positional
experiments): through the learned positional embeddings, or through the causal mask, which
makes the share of attention a query position pays to BOS depend on how many tokens it
sees. The hooks below remove one of the two at a time:

* :func:`swap_pos_embed_hooks`: swap the positional embeddings of two positions;
* :func:`bos_column_swap_hooks`: **the paper's BOS swap**
  (``positional_experiments.py``): take the attention patterns of a clean run without
  hooks, swap their attention-to-BOS entries between two query positions, and overwrite
  the BOS column (key 0, every query row) of the chosen heads with those values, all heads
  in one run; the other entries of each row are left alone, so the rows no longer sum to
  one;
* :func:`swap_bos_attention_hooks`: a *variant*, not the paper's: in chosen heads, swap the
  attention-to-BOS of two query positions inside the current run and rescale each row's
  other entries so it still sums to one;
* :func:`bos_swap_sweep`: the metric (or several) with the BOS swap applied to one head
  at a time (with one head, the paper's overwrite and an in-run swap without rescaling are
  the same intervention: nothing upstream has changed).

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

__all__ = ["swap_pos_embed_hooks", "bos_column_swap_hooks", "swap_bos_attention_hooks", "bos_swap_sweep"]


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


def _swap_bos_rows(pattern: torch.Tensor, heads: list[int], a: int, b: int, rescale: bool = True) -> torch.Tensor:
    """``pattern [batch, head, q, k]`` with the BOS (key 0) share of rows ``a`` and ``b``
    swapped in ``heads``; with ``rescale``, each row's non-BOS entries rescaled to keep its
    sum (otherwise left alone, as in the paper's code)."""
    out = pattern.clone()
    for h in heads:
        bos_a, bos_b = pattern[:, h, a, 0], pattern[:, h, b, 0]
        for row, old, new in ((a, bos_a, bos_b), (b, bos_b, bos_a)):
            if rescale:
                rest = (1 - new) / (1 - old).clamp_min(1e-9)
                out[:, h, row] = pattern[:, h, row] * rest[:, None]
            out[:, h, row, 0] = new
    return out


def _heads_by_layer(model, heads) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for L, h in as_heads(list(heads), model):
        by_layer.setdefault(L, []).append(h)
    return dict(sorted(by_layer.items()))


@torch.no_grad()
def bos_column_swap_hooks(model, tokens, heads: Iterable[Head], q_a: int, q_b: int) -> list:
    """The paper's BOS swap, as hooks for a run on ``tokens`` (the same batch).

    A clean run of ``tokens`` without hooks gives each head's attention to BOS (key 0) from
    every query row; the entries of rows ``q_a`` and ``q_b`` are exchanged; the hooks then
    overwrite the BOS column of every head in ``heads`` with those clean, swapped values,
    all heads together. Nothing else in the pattern changes (rows are not rescaled), so a
    head downstream of another swapped head keeps the clean run's BOS column while its
    other entries follow the run. Combined with other hooks (e.g.
    :func:`swap_pos_embed_hooks`), the BOS column still comes from the unhooked clean run,
    as in ``positional_experiments.py``.
    """
    from .hooks import capture

    a, b = _check_positions(q_a, q_b)
    tokens = as_tokens(tokens).to(model.cfg.device)
    if max(a, b) >= tokens.shape[1]:
        raise IndexError(f"query positions {a}, {b} outside a sequence of {tokens.shape[1]}")
    by_layer = _heads_by_layer(model, heads)
    names = [hook_name("pattern", L) for L in by_layer]
    _, acts = capture(model, tokens, names) if names else (None, {})
    hooks = []
    for L, hs in by_layer.items():
        column = acts[hook_name("pattern", L)][:, hs, :, 0].clone()  # [batch, len(hs), q]
        column[:, :, [a, b]] = column[:, :, [b, a]]

        def overwrite(pattern, hook, _hs=hs, _col=column):
            if pattern.shape[0] != _col.shape[0] or pattern.shape[2] != _col.shape[2]:
                raise ValueError(
                    f"the BOS swap was built for a batch of {_col.shape[0]} prompts of "
                    f"{_col.shape[2]} tokens, but the run has {pattern.shape[0]} of "
                    f"{pattern.shape[2]}: build the hooks from the tokens you run")
            out = pattern.clone()
            out[:, _hs, :, 0] = _col.to(out.device, out.dtype)
            return out

        hooks.append((hook_name("pattern", L), overwrite))
    return hooks


def swap_bos_attention_hooks(model, heads: Iterable[Head], q_a: int, q_b: int, *,
                             rescale: bool = True) -> list:
    """A variant of the BOS swap (not the paper's, see :func:`bos_column_swap_hooks`): hooks
    swapping attention-to-BOS between query positions ``q_a`` and ``q_b`` in ``heads``
    inside the current run, each swapped row's other entries rescaled so it still sums to
    one (``rescale=False``: left alone)."""
    a, b = _check_positions(q_a, q_b)
    hooks = []
    for L, hs in _heads_by_layer(model, heads).items():

        def swap(pattern, hook, _hs=hs):
            if max(a, b) >= pattern.shape[2]:
                raise IndexError(f"query positions {a}, {b} outside a sequence of {pattern.shape[2]}")
            return _swap_bos_rows(pattern, _hs, a, b, rescale)

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
    rescale: bool = False,
    progress: bool = False,
) -> torch.Tensor | dict[Any, torch.Tensor]:
    """``[n_layers, n_heads]``: the metric with the BOS swap applied to one head at a time.

    By default the paper's swap (the two BOS entries exchanged, rows not rescaled: with one
    head this is :func:`bos_column_swap_hooks`); ``rescale=True`` gives the variant of
    :func:`swap_bos_attention_hooks`.

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
        from .display import tqdm

        groups = tqdm(groups, desc="BOS swap, one head at a time")
    for group in groups:
        k = len(group)
        fwd = []
        for L in sorted({L for L, _ in group}):

            def swap(pattern, hook, _L=L, _group=group):
                view = pattern.view(len(_group), -1, *pattern.shape[1:]).clone()
                for j, (gl, h) in enumerate(_group):
                    if gl == _L:
                        view[j] = _swap_bos_rows(view[j], [h], a, b, rescale)
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
