"""Checks a learner calls after an exercise: their function against the toolkit's answer.

Each chapter's checks live in ``helpers.exercises.<slug>`` (e.g.
``helpers.exercises.ioi.check_patch_head_z``). There are two kinds:

* **Method checks** (:func:`check_on_model`) run the learner's function on the model the
  notebook loaded (real GPT-2 or the stand-in) and on a few of the chapter's prompts, and
  compare it with the book's own helper on the same model and prompts (``patch_heads``,
  ``path_patch``, ``causal_trace``, ...).
* **Short checks** (:func:`run_check`) run the learner's function on small seeded tensors
  and compare it with stored answers (:mod:`helpers.exercises._answers`, generated from the
  teacher's solutions by ``python scripts/student_notebooks.py --answers``).

Either way the learner's function gets **copies** of its inputs (a change made in place is
reported, not silently absorbed), and the check prints one line: a pass, "not implemented
yet", or what is wrong in one sentence (the shape, the sign, a known mistake such as patching
the wrong direction, or which input and index differ). An answer that is all zeros is never
diagnosed as a known mistake, even where a mistake would also give zeros. The check returns
a :class:`CheckResult` too (tests and the autograder read it); it never raises on a wrong
answer.

The reference solutions are not in this package: they are in the repository's ``teacher/``
folder and in the teacher's materials the build writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CheckResult", "Case", "check_on_model", "passes", "random_attention", "run_check"]


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


@dataclass
class Case:
    """One input of a check: ``args`` for the learner's function, the ``expected`` answer (a
    value or a zero-argument function computing it with the toolkit), and known mistakes
    ``{one-sentence description: value or zero-argument function}``."""

    label: str
    args: tuple
    expected: Any
    mistakes: Mapping[str, Any] = field(default_factory=dict)
    names: Sequence[str] = ()
    #: the value with no effect (e.g. the clean run's metric): when given, answers are
    #: compared to within ``rel`` of the effect ``expected − baseline`` (plus float noise),
    #: so that small effects (the stand-in's) are still told apart from the mistakes
    baseline: Any = None
    rel: float = 0.01
    #: the float noise allowed with a baseline (default 2e-7 × (1 + |expected|))
    floor: float | None = None


def _as_tensor(value: Any) -> torch.Tensor | None:
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().float().cpu()
        return torch.as_tensor(value).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError):
        try:  # a list of tensors / numbers
            return torch.stack([torch.as_tensor(v).detach().float().cpu() for v in value])
        except (TypeError, ValueError, RuntimeError):
            return None


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True)


def _finish(name: str, status: str, message: str, quiet: bool) -> CheckResult:
    result = CheckResult(name, status, message)
    if not quiet:
        print(message)
    return result


def _copy_arg(x: Any) -> Any:
    """A copy the learner may change freely; models and other modules are passed as they are."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, torch.nn.Module) or callable(x):
        return x
    try:
        return copy.deepcopy(x)
    except Exception:  # noqa: BLE001 - objects that cannot be copied are passed as they are
        return x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a.detach().cpu(), b.detach().cpu()) or (a.isnan().any() and torch.allclose(
                a.detach().cpu().float(), b.detach().cpu().float(), equal_nan=True)))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True  # other objects: not compared


def _mutated(original: tuple, given: tuple, names: Sequence[str]) -> str | None:
    for i, (a, b) in enumerate(zip(original, given)):
        if not _same(a, b):
            return names[i] if i < len(names) else f"argument {i + 1}"
    return None


def _value(v: Any) -> Any:
    return v() if callable(v) and not isinstance(v, torch.Tensor) else v


def _judge(name, got_raw, expected_raw, label, mistakes, *, atol, rtol, sign_hint, quiet,
           baseline=None, rel=0.01, floor=None):
    """``None`` if the answer matches, else the failing :class:`CheckResult`."""
    expected = _as_tensor(expected_raw)
    got = _as_tensor(got_raw)
    if baseline is not None and expected is not None:
        effect = (expected - _as_tensor(_value(baseline))).abs().nan_to_num().max().item()
        noise = 2e-7 * (1.0 + expected.abs().nan_to_num().max().item()) if floor is None else float(_value(floor))
        atol, rtol = max(rel * effect, noise), 0.0
    if got is None:
        return _finish(name, "fail", f"✗ {name} returned a {type(got_raw).__name__} on {label}; "
                       f"expected a tensor or number of shape {tuple(expected.shape)}.", quiet)
    if got.shape != expected.shape and got.numel() == expected.numel() == 1:
        got = got.reshape(expected.shape)
    if got.shape != expected.shape:
        return _finish(name, "fail", f"✗ {name}: shape {tuple(got.shape)} on {label}, expected "
                       f"{tuple(expected.shape)}.", quiet)
    if _close(got, expected, atol, rtol):
        return None
    if bool((got == 0).all()):  # an empty answer is never called a known mistake
        return _finish(name, "fail", f"✗ {name}: your answer is all zeros on {label}; the "
                       f"expected values are not (is a line missing, or the result never "
                       f"written?).", quiet)
    for description, mistake in (mistakes or {}).items():
        try:
            wrong = _as_tensor(_value(mistake))
        except Exception:  # noqa: BLE001 - a mistake that cannot be computed here is skipped
            continue
        if wrong is not None and wrong.shape == got.shape and not _close(wrong, expected, atol, rtol) \
                and _close(got, wrong, atol, rtol):
            return _finish(name, "fail", f"✗ {name}: {description} (on {label}).", quiet)
    if _close(got, -expected, atol, rtol) and expected.abs().max() > atol:
        hint = f" {sign_hint}" if sign_hint else ""
        return _finish(name, "fail", f"✗ {name}: the sign is flipped on {label}: your values are "
                       f"the reference's negative.{hint}", quiet)
    diff = (got - expected).abs().nan_to_num(nan=float("inf")).reshape(-1)
    i = int(diff.argmax())
    where = ""
    if got.ndim:
        where = f" at index {tuple(int(x) for x in torch.unravel_index(torch.tensor(i), got.shape))}"
    return _finish(name, "fail", f"✗ {name}: wrong value on {label}{where}: got "
                   f"{got.reshape(-1)[i].item():.4g}, expected {expected.reshape(-1)[i].item():.4g}.", quiet)


def _call(name, learner, args, names, label, quiet):
    """(output, None) or (None, failing result); the learner gets copies of ``args``."""
    given = tuple(_copy_arg(a) for a in args)
    try:
        out = learner(*given)
    except NotImplementedError:
        return None, _finish(name, "todo", f"… {name}: not implemented yet. Replace `raise "
                             f"NotImplementedError` with your code and run the cell again.", quiet)
    except Exception as err:  # the learner's bug, reported, not raised
        return None, _finish(name, "fail", f"✗ {name} raised {type(err).__name__} on {label}: {err}", quiet)
    changed = _mutated(args, given, names)
    if changed is not None:
        return None, _finish(name, "fail", f"✗ {name} changed its input `{changed}` in place on "
                             f"{label}; work on a copy (e.g. `.clone()`), the caller still needs "
                             f"the original.", quiet)
    return out, None


def check_on_model(
    name: str,
    learner: Callable,
    cases: Sequence[Case],
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    sign_hint: str = "",
    quiet: bool = False,
) -> CheckResult:
    """Run ``learner(*case.args)`` (on copies) for each case and compare with ``case.expected``.

    ``case.expected`` and the values of ``case.mistakes`` may be zero-argument functions: they
    are computed only when needed (a mistake only when the answer is wrong), so a check costs
    the learner's run plus the toolkit's reference.
    """
    for case in cases:
        got, failed = _call(name, learner, case.args, case.names, case.label, quiet)
        if failed is not None:
            return failed
        failed = _judge(name, got, _value(case.expected), case.label, case.mistakes,
                        atol=atol, rtol=rtol, sign_hint=sign_hint, quiet=quiet,
                        baseline=case.baseline, rel=case.rel, floor=case.floor)
        if failed is not None:
            return failed
    return _finish(name, "pass", f"✓ {name}: matches the book's helpers on {len(cases)} "
                   f"input{'s' if len(cases) != 1 else ''}.", quiet)


def run_check(
    name: str,
    learner: Callable,
    reference: Callable | None,
    cases: Sequence[tuple[str, tuple]],
    *,
    known_mistakes: Mapping[str, Callable] | Sequence[Callable] | None = None,
    answers: Mapping[str, Any] | None = None,
    names: Sequence[str] = (),
    sign_hint: str = "",
    atol: float = 1e-4,
    quiet: bool = False,
) -> CheckResult:
    """Compare ``learner(*args)`` with the answer for each ``(label, args)`` case.

    The answer is ``answers[label]["expected"]`` when ``answers`` (stored answers, see
    :mod:`helpers.exercises._answers`) is given, else ``reference(*args)``.
    ``known_mistakes``: ``{description: wrong implementation}``, or wrong implementations
    whose docstrings are their descriptions; with stored answers, ``answers[label]
    ["mistakes"]`` (``{description: stored output}``) are used as well. When the learner's
    output equals a mistake's (and not the answer), the description is the message.
    ``sign_hint``: added when the output is the answer's negative.
    """
    if known_mistakes is not None and not isinstance(known_mistakes, Mapping):
        known_mistakes = {" ".join(m.__doc__.split()): m for m in known_mistakes}
    built = []
    for label, args in cases:
        mistakes: dict[str, Any] = {}
        if answers is not None:
            stored = answers[label]
            expected = torch.tensor(stored["expected"])
            mistakes.update({d: torch.tensor(v) for d, v in stored.get("mistakes", {}).items()})
        else:
            expected = (lambda _a=args: reference(*(_copy_arg(x) for x in _a)))
        for description, fn in (known_mistakes or {}).items():
            mistakes[description] = (lambda _f=fn, _a=args: _f(*(_copy_arg(x) for x in _a)))
        built.append(Case(label, args, expected, mistakes, names))
    result = check_on_model(name, learner, built, atol=atol, rtol=1e-4, sign_hint=sign_hint, quiet=True)
    if result.passed:
        result = CheckResult(name, "pass", f"✓ {name}: matches the reference on {len(cases)} inputs.")
    if not quiet:
        print(result.message)
    return result


def passes(check: Callable, *args: Any) -> bool:
    """``check(*args).passed`` without printing: what the autograder's tests call."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return bool(check(*args).passed)


def random_attention(n: int, heads: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, heads, seq (query), seq (key)]``: seeded random causal attention patterns (each
    row sums to 1, no weight after its query), a test input for attention exercises."""
    scores = 2 * torch.randn(n, heads, seq, seq, generator=generator)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _teacher_reference(module: str, name: str):
    """Transitional: ``reference_*`` names of the old layout, resolved from the repository's
    ``teacher/short_checks.py`` when this package runs from a checkout of the repository (the
    chapters' older tests import them). An installed package has no reference solutions."""
    if not name.startswith("reference_"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    import importlib
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    if not (root / "teacher" / "short_checks.py").is_file():
        raise AttributeError(
            f"{module}.{name}: the reference solutions are not part of the learner's package; "
            f"teachers find them in the repository's teacher/ folder and in the teacher's materials")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    short_checks = importlib.import_module("teacher.short_checks")
    try:
        return getattr(short_checks, name[len("reference_"):])
    except AttributeError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None


def stored_answers(check: str) -> Mapping[str, Any]:
    """The stored answers of one short check (``{case label: {"expected", "mistakes"}}``)."""
    from ._answers import ANSWERS

    try:
        return ANSWERS[check]
    except KeyError:
        raise KeyError(f"no stored answers for the check {check!r}; regenerate them with "
                       f"`python scripts/student_notebooks.py --answers`") from None
