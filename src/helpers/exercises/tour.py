"""Checks for the tour's exercises (``notebooks/00_tour.ipynb``).

Small seeded inputs, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from . import CheckResult, run_check

__all__ = ["check_logit_diff", "check_dla"]


def _logit_cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 10, generator=g)
    answer, wrong = torch.tensor([1, 4, 7]), torch.tensor([2, 3, 9])
    end = torch.tensor([5, 3, 4])  # prompts of different lengths: END is not always the last column
    return [("3 prompts of different lengths", (logits, answer, wrong, end)),
            ("the same prompts, answers swapped", (logits, wrong, answer, end))]


def reference_logit_diff(logits, answer, wrong, end):
    """``[batch]``: logit(answer) − logit(wrong) at each prompt's END position."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, end, answer] - logits[rows, end, wrong]


def check_logit_diff(fn) -> CheckResult:
    """``fn(logits [batch, seq, vocab], answer [batch], wrong [batch], end [batch]) -> [batch]``."""
    rows = lambda lg: torch.arange(lg.shape[0])  # noqa: E731
    return run_check(
        "logit difference", fn, reference_logit_diff, _logit_cases(),
        known_mistakes={
            "you read the last column for every prompt; read each prompt's own END position":
                lambda lg, a, w, e: lg[rows(lg), -1, a] - lg[rows(lg), -1, w],
            "you compared with the wrong token at the previous position (off by one)":
                lambda lg, a, w, e: lg[rows(lg), e - 1, a] - lg[rows(lg), e - 1, w],
        },
        sign_hint="Subtract the wrong token's logit from the answer's, not the other way round.",
    )


def _dla_cases():
    g = torch.Generator().manual_seed(1)
    out = []
    for i, (c, d) in enumerate([(5, 8), (26, 16)]):
        stack = torch.randn(c, d, generator=g) + 0.5  # a non-zero mean, so centring matters
        direction = torch.randn(d, generator=g)
        out.append((f"stack {i + 1} ({c} components, d_model {d})", (stack, 1.7 + i, direction)))
    return out


def reference_dla(stack, scale, direction):
    """``[components]``: each component's share of the logit difference (centre, scale, project)."""
    centred = stack - stack.mean(-1, keepdim=True)
    return (centred / scale) @ direction


def check_dla(fn) -> CheckResult:
    """``fn(stack [components, d_model], scale: float, direction [d_model]) -> [components]``."""
    return run_check(
        "direct logit attribution", fn, reference_dla, _dla_cases(),
        known_mistakes={
            "you forgot to centre each component (the folded LayerNorm subtracts its mean first)":
                lambda s, sc, d: (s / sc) @ d,
            "you forgot to divide by the final LayerNorm's scale":
                lambda s, sc, d: (s - s.mean(-1, keepdim=True)) @ d,
        },
        sign_hint="The direction is W_U[:, answer] − W_U[:, wrong].",
    )
