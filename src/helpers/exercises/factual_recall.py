"""Checks for the factual-recall chapter's exercises (``notebooks/04_factual_recall.ipynb``).

Small seeded inputs, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from ..tracing import fit_head_gains
from . import CheckResult, run_check

__all__ = ["check_noise_scale", "check_gain_fit", "reference_noise_scale", "reference_gain_fit"]


def _noise_cases():
    g = torch.Generator().manual_seed(0)
    W_E = torch.randn(50, 8, generator=g) * torch.linspace(0.5, 2.0, 50)[:, None]
    tokens = torch.randint(0, 50, (3, 6), generator=g)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1:3] = mask[1, 2] = mask[2, 0:4] = True
    return [("3 prompts, subjects of 1–4 tokens", (W_E, tokens, mask))]


def reference_noise_scale(W_E, tokens, mask):
    """ROME's noise level: 3 × the std of the subject tokens' embeddings (every coordinate)."""
    return 3 * W_E[tokens[mask]].std()


def check_noise_scale(fn) -> CheckResult:
    """``fn(W_E [vocab, d], tokens [n, L], mask [n, L] bool) -> scalar``."""
    return run_check(
        "noise scale", fn, reference_noise_scale, _noise_cases(),
        known_mistakes={
            "you used the std of the whole vocabulary's embeddings, not the subject tokens'":
                lambda W, t, m: 3 * W.std(),
            "you used every token of the prompts, not only the subject's":
                lambda W, t, m: 3 * W[t].std(),
            "you forgot the factor 3":
                lambda W, t, m: W[t[m]].std(),
        },
    )


def _gain_cases():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, 16, generator=g) + 1.0  # a non-zero mean, so the intercept matters
    y = 0.7 + torch.einsum("k,nkd->nd", torch.tensor([1.5, 0.0, -0.5]), X)
    y = y + 0.1 * torch.randn(40, 16, generator=g)
    return [("40 prompts, 3 heads, d_model 16", (X, y))]


def reference_gain_fit(X, y):
    """``[k]``: one gain per head, shared over dimensions, after centring over prompts."""
    return fit_head_gains(X, y).gains


def _no_centring(X, y):
    A = torch.einsum("njd,nkd->jk", X, X)
    b = torch.einsum("njd,nd->j", X, y)
    return torch.linalg.solve(A, b)


def check_gain_fit(fn) -> CheckResult:
    """``fn(X [n, k, d], y [n, d]) -> gains [k]``."""
    return run_check(
        "head gains", fn, reference_gain_fit, _gain_cases(),
        known_mistakes={
            "you fitted without an intercept: centre X and y over prompts (dimension 0) first":
                _no_centring,
        },
        atol=1e-3,
    )
