"""Checks for the tour's exercises (``notebooks/00_tour.ipynb``).

Small seeded inputs, stored answers: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from . import CheckResult, run_check, stored_answers

__all__ = ["check_logit_diff", "check_dla"]


def _logit_cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 10, generator=g)
    answer, wrong = torch.tensor([1, 4, 7]), torch.tensor([2, 3, 9])
    end = torch.tensor([5, 3, 4])  # prompts of different lengths: END is not always the last column
    return [("3 prompts of different lengths", (logits, answer, wrong, end)),
            ("the same prompts, answers swapped", (logits, wrong, answer, end))]


def check_logit_diff(fn) -> CheckResult:
    """``fn(logits [batch, seq, vocab], answer [batch], wrong [batch], end [batch]) -> [batch]``."""
    return run_check("logit difference", fn, None, _logit_cases(), answers=stored_answers("logit difference"),
                     names=("logits", "answer", "wrong", "end"),
                     sign_hint="Subtract the wrong token's logit from the answer's, not the other way round.")


def _dla_cases():
    g = torch.Generator().manual_seed(1)
    out = []
    for i, (c, d) in enumerate([(5, 8), (26, 16)]):
        stack = torch.randn(c, d, generator=g) + 0.5  # a non-zero mean, so centring matters
        direction = torch.randn(d, generator=g)
        out.append((f"stack {i + 1} ({c} components, d_model {d})", (stack, 1.7 + i, direction)))
    return out


def check_dla(fn) -> CheckResult:
    """``fn(stack [components, d_model], scale: float, direction [d_model]) -> [components]``."""
    return run_check("direct logit attribution", fn, None, _dla_cases(),
                     answers=stored_answers("direct logit attribution"), names=("stack", "scale", "direction"),
                     sign_hint="The direction is W_U[:, answer] − W_U[:, wrong].")


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
