"""Checks for the successor-heads chapter's exercises (``notebooks/03_successor_heads.ipynb``).

Small seeded tensors, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from . import CheckResult, run_check

__all__ = ["check_residue_directions", "check_succession_score", "reference_residue_directions",
           "reference_succession_score"]


def reference_succession_score(logits, successor):
    """Share of the rows that have a successor (``successor >= 0``) whose largest logit is at
    the successor's column. ``logits`` ``[n, n]`` (row i: token i read through the head,
    column j: token j of the same task); ``successor`` ``[n]`` column indices, −1 for none."""
    has = successor >= 0
    return (logits[has].argmax(-1) == successor[has]).float().mean()


def _succession_cases():
    g = torch.Generator().manual_seed(8)
    cases = []
    for n, wrap in ((7, True), (12, False)):  # days wrap around; numbers 1..12 here do not
        successor = (torch.arange(n) + 1) % n if wrap else torch.cat([torch.arange(1, n), torch.tensor([-1])])
        logits = torch.randn(n, n, generator=g)
        rows = torch.arange(n)
        good = rows[(successor >= 0) & (torch.rand(n, generator=g) < 0.6)]
        logits[good, successor[good]] += 4.0  # a head that succeeds on about 60% of the rows
        logits[rows[-1], rows[-1]] += 6.0  # the last token copies itself
        cases.append((f"{n} tokens, {'with' if wrap else 'no'} wrap-around", (logits, successor)))
    return cases


def check_succession_score(fn) -> CheckResult:
    """``fn(logits [n, n], successor [n]) -> share`` (a number in [0, 1])."""

    def all_rows(lg, s):
        return (lg.argmax(-1) == s).float().mean()

    def copying(lg, s):
        has = s >= 0
        return (lg[has].argmax(-1) == torch.arange(len(s))[has]).float().mean()

    def columns(lg, s):
        has = s >= 0
        return (lg[:, has].argmax(0) == torch.arange(len(s))[has]).float().mean()

    return run_check(
        "succession score", fn, reference_succession_score, _succession_cases(),
        known_mistakes={
            "you counted the rows without a successor (successor −1) too: leave them out":
                all_rows,
            "you scored copying (each token's own column); the score asks for the successor":
                copying,
            "you took the maximum down the columns; each row is one input token, so take "
            "the argmax along the row (dim -1)": columns,
        },
    )


def reference_residue_directions(x, values):
    """``[10, d]``: for each residue r, the mean of ``x`` ``[n, d]`` over the tokens whose
    value (``values`` ``[n]``) is r mod 10, minus the mean over all tokens."""
    centred = x - x.mean(0)
    return torch.stack([centred[values % 10 == r].mean(0) for r in range(10)])


def _residue_cases():
    g = torch.Generator().manual_seed(9)
    cases = []
    for n, d in ((40, 6), (100, 12)):
        values = torch.arange(1, n + 1)
        x = torch.randn(n, d, generator=g) + 2.0  # an offset shared by every token
        x = x + torch.randn(10, d, generator=g)[values % 10]  # a residue signal
        cases.append((f"numbers 1..{n}, d_model {d}", (x, values)))
    return cases


def check_residue_directions(fn) -> CheckResult:
    """``fn(x [n, d], values [n]) -> [10, d]``."""

    def tens(x, v):
        centred = x - x.mean(0)
        return torch.stack([centred[(v // 10) % 10 == r].mean(0) for r in range(10)])

    def uncentred(x, v):
        return torch.stack([x[v % 10 == r].mean(0) for r in range(10)])

    def shifted(x, v):
        return reference_residue_directions(x, v - 1)

    return run_check(
        "residue directions", fn, reference_residue_directions, _residue_cases(),
        known_mistakes={
            "you grouped by the tens digit (value // 10); the residue is value % 10": tens,
            "you did not subtract the mean over all tokens: every direction then carries "
            "the shared offset": uncentred,
            "off by one: row r must hold the tokens with value % 10 == r (you used value − 1)":
                shifted,
        },
    )
