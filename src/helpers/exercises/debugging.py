"""Checks for the debugging chapter's exercises (``notebooks/06_debugging.ipynb``).

Small seeded tensors, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from ..debugger import rank_correlation
from . import CheckResult, run_check

__all__ = ["check_pair_direct_effect", "check_rank_correlation", "reference_pair_direct_effect",
           "reference_rank_correlation"]


def reference_pair_direct_effect(pattern, v, W_O, scale, direction):
    """``[n_heads, n_src]``: the direct effect of each (head, source) pair at the last token.

    ``pattern`` ``[n_heads, n_src]`` (the last token's attention row), ``v`` ``[n_src,
    n_heads, d_head]``, ``W_O`` ``[n_heads, d_head, d_model]``, ``scale`` the final
    LayerNorm's scale at the last token (a number), ``direction`` ``[d_model]``. Each
    pair writes ``pattern · v W_O``; its direct effect is that write divided by the scale,
    dotted with the direction."""
    writes = torch.einsum("hs,shd,hdm->hsm", pattern, v, W_O)
    return writes @ direction / scale


def _pair_cases():
    g = torch.Generator().manual_seed(6)
    cases = []
    for heads, src, d_head, d_model, scale in ((3, 5, 4, 16, 2.5), (2, 7, 8, 24, 0.4)):
        pattern = torch.randn(heads, src, generator=g).softmax(-1)
        v = torch.randn(src, heads, d_head, generator=g)
        W_O = torch.randn(heads, d_head, d_model, generator=g)
        direction = torch.randn(d_model, generator=g)
        cases.append((f"{heads} heads, {src} source tokens, scale {scale}",
                      (pattern, v, W_O, scale, direction)))
    return cases


def check_pair_direct_effect(fn) -> CheckResult:
    """``fn(pattern [heads, src], v [src, heads, d_head], W_O [heads, d_head, d_model],
    scale: float, direction [d_model]) -> [heads, src]``."""
    return run_check(
        "pair direct effect", fn, reference_pair_direct_effect, _pair_cases(),
        known_mistakes={
            "you left out the final LayerNorm's scale: divide the write by it (the logits "
            "see the normalised residual)":
                lambda p, v, O, s, d: reference_pair_direct_effect(p, v, O, 1.0, d),
            "you multiplied by the LayerNorm's scale; the LayerNorm divides by it":
                lambda p, v, O, s, d: reference_pair_direct_effect(p, v, O, 1 / s, d),
            "you left out the attention probability: each pair writes its value times the "
            "attention it gets":
                lambda p, v, O, s, d: reference_pair_direct_effect(torch.ones_like(p), v, O, s, d),
        },
        sign_hint="The direction is W_U[:, target] − W_U[:, distractor], in that order.",
    )


def reference_rank_correlation(x, y):
    """Spearman's rank correlation of two 1-D tensors (a number)."""
    return torch.tensor(rank_correlation(x.tolist(), y.tolist()))


def _pearson(x, y):
    """that is Pearson's correlation of the values; Spearman's correlates their ranks"""
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    return (x * y).sum() / (x.norm() * y.norm())


def _rank_cases():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, generator=g)
    effects = torch.randn(15, generator=g)
    estimates = effects + 0.7 * torch.randn(15, generator=g)
    return [("a monotone but curved relation", (x, x.exp() ** 3)),
            ("noisy estimates of 15 effects", (estimates, effects))]


def _argsort_once(x, y):
    """argsort gives the order of the indices, not the ranks: the ranks are
    x.argsort().argsort()"""
    return _pearson(x.argsort(), y.argsort())


def check_rank_correlation(fn) -> CheckResult:
    """``fn(x [n], y [n]) -> number`` (no ties in the test inputs)."""
    return run_check("rank correlation", fn, reference_rank_correlation, _rank_cases(),
                     known_mistakes=[_pearson, _argsort_once])
