"""Checks for the IOI chapter's exercises (``notebooks/01_ioi.ipynb``).

Small seeded tensors, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from ..hooks import folded_layer_norm
from . import CheckResult, run_check

__all__ = ["check_copy_score", "check_mean_ablation"]

_EPS = 1e-5


def reference_copy_score(resid, W_V, W_O, W_U, tokens, k=5):
    """Share of rows whose own token is in the top ``k`` of LN(LN(resid) W_V W_O) W_U."""
    out = folded_layer_norm(resid, _EPS) @ W_V @ W_O
    logits = folded_layer_norm(out, _EPS) @ W_U
    return (logits.topk(k, dim=-1).indices == tokens[:, None]).any(-1).float().mean()


def _copy_cases():
    g = torch.Generator().manual_seed(2)
    cases = []
    for i, (m, d, dh, v) in enumerate([(12, 16, 4, 40), (30, 24, 6, 60)]):
        W_U = torch.randn(d, v, generator=g)
        tokens = torch.randint(0, v, (m,), generator=g)
        # residuals that partly carry their token's unembedding direction, plus an offset
        resid = 0.8 * W_U[:, tokens].T + torch.randn(m, d, generator=g) + 3.0
        W_V = torch.randn(d, dh, generator=g)
        W_O = W_V.T + 0.3 * torch.randn(dh, d, generator=g)  # a roughly copying head
        cases.append((f"head {i + 1} ({m} names, d_model {d})", (resid, W_V, W_O, W_U, tokens)))
    return cases


def check_copy_score(fn) -> CheckResult:
    """``fn(resid [m, d_model], W_V [d_model, d_head], W_O [d_head, d_model],
    W_U [d_model, d_vocab], tokens [m], k=5) -> share`` (a number in [0, 1])."""
    def no_first_ln(r, V, O, U, t, k=5):
        logits = folded_layer_norm(r @ V @ O, _EPS) @ U
        return (logits.topk(k, -1).indices == t[:, None]).any(-1).float().mean()

    def top1(r, V, O, U, t, k=5):
        return reference_copy_score(r, V, O, U, t, k=1)

    return run_check(
        "copy score", fn, reference_copy_score, _copy_cases(),
        known_mistakes={
            "the head reads its input through a LayerNorm: normalise the residual before W_V":
                no_first_ln,
            "you counted only the top-1 token; the copy score asks for the top 5": top1,
        },
    )


def reference_mean_ablation(z, means, head, positions):
    """``z`` with ``head``'s output replaced by its mean at each prompt's ``positions``."""
    out = z.clone()
    rows = torch.arange(z.shape[0])
    out[rows, positions, head] = means[rows, positions, head]
    return out


def _ablation_cases():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, 5, 3, generator=g)
    means = torch.randn(4, 7, 5, 3, generator=g)
    return [("4 prompts, END at different positions", (z, means, 2, torch.tensor([6, 4, 5, 6]))),
            ("the same prompts, head 0 at S2", (z, means, 0, torch.tensor([3, 2, 2, 3])))]


def check_mean_ablation(fn) -> CheckResult:
    """``fn(z [n, seq, heads, d_head], means (same shape), head: int, positions [n]) -> z'``."""
    rows = lambda z: torch.arange(z.shape[0])  # noqa: E731

    def everywhere(z, m, h, p):
        out = z.clone()
        out[:, :, h] = m[:, :, h]
        return out

    def zeros(z, m, h, p):
        out = z.clone()
        out[rows(z), p, h] = 0
        return out

    def next_head(z, m, h, p):
        return reference_mean_ablation(z, m, (h + 1) % z.shape[2], p)

    return run_check(
        "mean ablation", fn, reference_mean_ablation, _ablation_cases(),
        known_mistakes={
            "you ablated the head at every position; the circuit keeps it only at its own "
            "position, so replace it there only": everywhere,
            "you set the output to zero (zero ablation); mean ablation uses the mean": zeros,
            "you ablated the next head (off by one in the head index)": next_head,
        },
    )
