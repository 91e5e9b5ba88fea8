"""Method exercises: each check on a model (the tiny test GPT-2: 2 layers, 4 heads) passes the
teacher's solution, names each known mistake, and reports in-place changes, all-zero
answers and unwritten functions."""

import ast
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import exercises as ex  # noqa: E402
from teacher.exercises import all_exercises  # noqa: E402

METHODS = [e for e in all_exercises() if e.kind == "method"]


def _check(e):
    module, name = e.graded[1].rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def _definitions(e) -> str:
    """The solution's code without its top-level call of the check (which prints)."""
    out = []
    for kind, source in e.solution:
        if kind != "code":
            continue
        tree = ast.parse(source)
        tree.body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call))
                     and not isinstance(n, (ast.For, ast.Assign))]
        out.append(ast.unparse(tree))
    return "\n\n".join(out)


@pytest.fixture(scope="module")
def solved(tiny_model):
    """Every method exercise's solution function, defined in one namespace (later
    exercises may use earlier ones, as in the notebooks)."""
    ns = {"model": tiny_model}
    for e in METHODS:
        exec(_definitions(e), ns)  # noqa: S102 - the teacher's own solutions
    return ns


def _cases(e, model, fn, monkeypatch):
    """Run the check on ``fn`` and return the cases it built."""
    seen = {}
    module = sys.modules[_check(e).__module__]
    real = module.check_on_model

    def spy(name, learner, cases, **kw):
        seen["cases"], seen["kw"] = cases, kw
        return real(name, learner, cases, **kw)

    monkeypatch.setattr(module, "check_on_model", spy)
    args = [model if a == "model" else fn for a in e.graded[2]]
    result = _check(e)(*args, quiet=True)
    monkeypatch.setattr(module, "check_on_model", real)
    return result, seen["cases"], seen["kw"]


def test_every_chapter_has_two_method_exercises_with_a_check():
    from teacher.exercises import by_chapter

    for stem, exercises in by_chapter().items():
        if stem == "00_tour":
            continue
        methods = [e for e in exercises if e.kind == "method"]
        assert len(methods) >= 2, stem
        for e in methods:
            assert callable(_check(e)) and e.graded[0] in e.stub and "NotImplementedError" in e.stub


@pytest.mark.parametrize("e", METHODS, ids=lambda e: e.label)
def test_method_check_passes_the_solution_and_names_the_mistakes(e, tiny_model, solved, monkeypatch):
    fn = solved[e.graded[0]]
    result, cases, kw = _cases(e, tiny_model, fn, monkeypatch)
    assert result.passed, result.message
    named = 0
    for case in cases:
        expected = ex._as_tensor(ex._value(case.expected))
        for description, value in case.mistakes.items():
            wrong = ex._as_tensor(ex._value(value))
            if wrong is None or wrong.shape != expected.shape or torch.allclose(wrong, expected, atol=1e-6):
                continue  # this mistake gives the right answer on this model and input
            learner = (lambda *a, _w=wrong: _w.clone())
            got = ex.check_on_model("x", learner, [case], **{**kw, "quiet": True})
            assert got.status == "fail", (description, got.message)
            if bool((wrong == 0).all()):
                assert "all zeros" in got.message
            else:  # this mistake or another with the same output is named
                assert any(d in got.message for d in case.mistakes), (description, got.message)
                named += 1


@pytest.mark.parametrize("e", METHODS, ids=lambda e: e.label)
def test_method_check_reports_todo_zeros_and_in_place_changes(e, tiny_model, solved, monkeypatch):
    check = _check(e)
    args = lambda f: [tiny_model if a == "model" else f for a in e.graded[2]]  # noqa: E731
    fn = solved[e.graded[0]]

    def todo(*a):
        raise NotImplementedError

    assert check(*args(todo), quiet=True).status == "todo"
    _, cases, _ = _cases(e, tiny_model, fn, monkeypatch)
    shape = ex._as_tensor(ex._value(cases[0].expected)).shape
    zeros = check(*args(lambda *a: torch.zeros(shape)), quiet=True)
    assert zeros.status == "fail" and "all zeros" in zeros.message

    def mutating(*a):
        out = fn(*a)
        for x in a:
            if isinstance(x, torch.Tensor) and x.is_floating_point() or (
                    isinstance(x, torch.Tensor) and x.dtype in (torch.long, torch.bool) and x.numel()):
                if x.dtype == torch.bool:
                    x[..., 0] = ~x[..., 0]
                else:
                    x.view(-1)[0] += 1
                return out
        pytest.skip("no tensor input to change")

    changed = check(*args(mutating), quiet=True)
    assert changed.status == "fail" and "in place" in changed.message, changed.message
