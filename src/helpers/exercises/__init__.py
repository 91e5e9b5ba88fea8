"""Checks a learner calls after an exercise: their function against the reference.

Each chapter's checks live in ``helpers.exercises.<slug>`` (e.g. ``helpers.exercises.tour.
check_logit_diff``). A check runs the learner's function and the reference on a few small
inputs and prints one line: a pass, "not implemented yet", or what differs (the shape, the
sign, which input, or a known mistake such as reading the wrong position). It returns a
:class:`CheckResult` too, so tests can assert on it; it never raises on a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CheckResult", "random_attention", "run_check"]


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` is ``"pass"``, ``"todo"`` (not implemented yet) or
    ``"fail"``, and ``message`` the line the check printed."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        return self.message


def _as_tensor(value: Any) -> torch.Tensor | None:
    try:
        return torch.as_tensor(value).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4, equal_nan=True)


def _finish(name: str, status: str, message: str, quiet: bool) -> CheckResult:
    result = CheckResult(name, status, message)
    if not quiet:
        print(message)
    return result


def run_check(
    name: str,
    learner: Callable,
    reference: Callable,
    cases: Sequence[tuple[str, tuple]],
    *,
    known_mistakes: Mapping[str, Callable] | Sequence[Callable] | None = None,
    sign_hint: str = "",
    atol: float = 1e-4,
    quiet: bool = False,
) -> CheckResult:
    """Compare ``learner(*args)`` with ``reference(*args)`` for each ``(label, args)`` case.

    ``known_mistakes``: ``{description: wrong implementation}``, or wrong implementations
    whose docstrings are their descriptions; when the learner's output equals one of them
    (and not the reference), the description is the message.
    ``sign_hint``: added when the output is the reference's negative (e.g. "did you swap
    the answer and the wrong token?").
    """
    if known_mistakes is not None and not isinstance(known_mistakes, Mapping):
        known_mistakes = {" ".join(m.__doc__.split()): m for m in known_mistakes}
    for label, args in cases:
        expected = _as_tensor(reference(*args))
        try:
            got_raw = learner(*args)
        except NotImplementedError:
            return _finish(name, "todo", f"… {name}: not implemented yet. Replace `raise "
                           f"NotImplementedError` with your code and run the cell again.", quiet)
        except Exception as err:  # the learner's bug, reported, not raised
            return _finish(name, "fail", f"✗ {name} raised {type(err).__name__} on {label}: {err}", quiet)
        got = _as_tensor(got_raw)
        if got is None:
            return _finish(name, "fail", f"✗ {name} returned a {type(got_raw).__name__} on {label}; "
                           f"expected a tensor of shape {tuple(expected.shape)}.", quiet)
        if got.shape != expected.shape:
            return _finish(name, "fail", f"✗ {name}: shape {tuple(got.shape)} on {label}, expected "
                           f"{tuple(expected.shape)}.", quiet)
        if _close(got, expected, atol):
            continue
        for description, mistake in (known_mistakes or {}).items():
            wrong = _as_tensor(mistake(*args))
            if wrong is not None and _close(got, wrong, atol):
                return _finish(name, "fail", f"✗ {name}: {description} (on {label}).", quiet)
        if _close(got, -expected, atol) and expected.abs().max() > atol:
            hint = f" {sign_hint}" if sign_hint else ""
            return _finish(name, "fail", f"✗ {name}: the sign is flipped on {label}: your values are "
                           f"the reference's negative.{hint}", quiet)
        diff = (got - expected).abs().reshape(-1)
        i = int(diff.argmax())
        where = f" at index {tuple(int(x) for x in torch.unravel_index(torch.tensor(i), got.shape))}" if got.ndim else ""
        return _finish(name, "fail", f"✗ {name}: wrong value on {label}{where}: got "
                       f"{got.reshape(-1)[i].item():.4g}, expected {expected.reshape(-1)[i].item():.4g}.", quiet)
    return _finish(name, "pass", f"✓ {name}: matches the reference on {len(cases)} inputs.", quiet)


def random_attention(n: int, heads: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, heads, seq (query), seq (key)]``: seeded random causal attention patterns (each
    row sums to 1, no weight after its query), a test input for attention exercises."""
    scores = 2 * torch.randn(n, heads, seq, seq, generator=generator)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)
