"""Exercises: the checks learners call, and the student notebooks generated from the chapters."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from helpers.exercises import run_check
from helpers.exercises.tour import check_dla, check_logit_diff
from helpers.project import student_notebook_links

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from student_notebooks import exercise_labels, make_student, plain_markdown  # noqa: E402
from teacher.short_checks import SHORT_CHECKS, answers_source  # noqa: E402
from teacher.short_checks import dla as reference_dla  # noqa: E402
from teacher.short_checks import logit_diff as reference_logit_diff  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WITH_EXERCISES = [p for p in NOTEBOOKS if exercise_labels(nbformat.read(p, as_version=4))]


def _todo(*args):
    raise NotImplementedError


def _rows(lg):
    return torch.arange(lg.shape[0])


@pytest.mark.parametrize(
    "learner, status, words",
    [
        (reference_logit_diff, "pass", "matches the reference"),
        (_todo, "todo", "not implemented yet"),
        (lambda lg, a, w, e: -reference_logit_diff(lg, a, w, e), "fail", "sign is flipped"),
        (lambda lg, a, w, e: lg[_rows(lg), -1, a] - lg[_rows(lg), -1, w], "fail", "each prompt's own END"),
        (lambda lg, a, w, e: lg[_rows(lg), e - 1, a] - lg[_rows(lg), e - 1, w], "fail", "off by one"),
        (lambda lg, a, w, e: reference_logit_diff(lg, a, w, e).mean(), "fail", "shape ()"),
        (lambda lg, a, w, e: reference_logit_diff(lg, a, w, e) + 0.5, "fail", "wrong value on 3 prompts"),
    ],
)
def test_logit_diff_check_says_what_is_wrong(learner, status, words, capsys):
    result = check_logit_diff(learner)
    assert result.status == status and words in result.message
    assert capsys.readouterr().out.strip() == result.message


@pytest.mark.parametrize(
    "learner, words",
    [
        (lambda s, sc, d: (s / sc) @ d, "forgot to centre"),
        (lambda s, sc, d: (s - s.mean(-1, keepdim=True)) @ d, "scale"),
        (lambda s, sc, d: 1 / 0, "raised ZeroDivisionError"),
        (lambda s, sc, d: "seven", "returned a str"),
    ],
)
def test_dla_check_catches_known_mistakes(learner, words):
    assert check_dla(reference_dla).passed
    result = check_dla(learner)
    assert result.status == "fail" and words in result.message


def test_run_check_names_the_failing_input():
    cases = [("prompt 0", (torch.tensor([1.0, 2.0]),)), ("prompt 1", (torch.tensor([3.0, 4.0]),))]
    result = run_check("double", lambda x: 2 * x if x[0] < 2 else x, lambda x: 2 * x, cases, quiet=True)
    assert result.status == "fail" and "prompt 1" in result.message and "index (1,)" in result.message


def test_plain_markdown_turns_directives_into_headings_and_details():
    text = "````{exercise} Title\n:label: x\n\nDo it.\n\n```{hint}\n:class: dropdown\nLook.\n```\n````"
    out = plain_markdown(text)
    assert out.startswith("### Exercise: Title") and ":label:" not in out and "{hint}" not in out
    assert "<details><summary>Hint</summary>" in out and "Look." in out and "````" not in out


def _solution_code_cells(nb) -> dict[str, int]:
    """Per solution label, the code cells tagged ``solution`` between its start and end markers."""
    counts, label = {}, None
    for cell in nb.cells:
        start = re.search(r"\{solution-start\}\s*(\S+)", cell.source) if cell.cell_type == "markdown" else None
        if start:
            label = start.group(1)
            counts[label] = 0
        elif label and cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            counts[label] += 1
        if cell.cell_type == "markdown" and "{solution-end}" in cell.source:
            label = None
    return counts


def test_solution_code_cells_are_counted_per_label():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    sol = code("x = 1")
    sol.metadata["tags"] = ["solution"]
    nb = nbformat.v4.new_notebook(cells=[
        md("```{solution-start} a\n:class: dropdown\n```"), md("prose only"), md("```{solution-end}\n```"),
        md("```{solution-start} b\n:class: dropdown\n```"), sol, md("```{solution-end}\n```"),
        code("outside any solution")])
    assert _solution_code_cells(nb) == {"a": 0, "b": 1}


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_chapter_exercises_follow_the_pattern(path):
    nb = nbformat.read(path, as_version=4)
    labels = exercise_labels(nb)
    assert len(labels) >= 3, labels
    stubs = [c for c in nb.cells if "exercise-stub" in c.metadata.get("tags", [])]
    assert len(stubs) >= 2  # at least two ask for code
    assert all("remove-cell" in c.metadata["tags"] and "NotImplementedError" in c.source for c in stubs)
    for label in labels:  # every exercise has a folded solution
        assert any(c.cell_type == "markdown" and re.search(r"\{solution-start\}\s*" + re.escape(label), c.source)
                   and ":class: dropdown" in c.source for c in nb.cells), label
    code = _solution_code_cells(nb)  # every solution executes in the book: one code cell or more
    assert [label for label in labels if not code.get(label)] == [], code
    assert any(student_notebook_links(path.stem) in c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_student_copy_has_stubs_and_no_solutions(path):
    nb = nbformat.read(path, as_version=4)
    student = make_student(nb)
    text = json.dumps([c.source for c in student.cells])
    assert "solution-start" not in text and "solution-end" not in text and "{exercise}" not in text
    assert not [c for c in student.cells if "solution" in c.metadata.get("tags", [])]
    stubs = [c for c in student.cells if "exercise" in c.metadata.get("tags", [])]
    assert len(stubs) >= 2 and all("remove-cell" not in c.metadata["tags"] for c in stubs)
    assert len(student.cells) < len(nb.cells)
    assert [c.source for c in nb.cells] == [c.source for c in nbformat.read(path, as_version=4).cells]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_student_notebook_runs_at_smoke_size_with_the_stubs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    student = tmp_path / path.name
    nbformat.write(make_student(nb), student)
    out = tmp_path / f"run-{path.name}"
    params = {"weights": "random", **nb.metadata.get("casebook", {}).get("smoke_parameters", {})}
    args = ["-y", json.dumps(params)]  # YAML (JSON is YAML): list parameters keep their type
    result = subprocess.run(
        [sys.executable, "-m", "papermill", "-k", "python3", "--cwd", str(ROOT / "notebooks"),
         str(student), str(out), *args], capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    executed = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if "exercise" in c.metadata.get("tags", [])
                      for o in c.outputs)
    assert printed.count("not implemented yet") == len([c for c in executed.cells
                                                        if "exercise" in c.metadata.get("tags", [])])


def test_ioi_checks_pass_the_reference_and_name_known_mistakes():
    from helpers import folded_layer_norm
    from helpers.exercises.ioi import check_copy_score, check_mean_ablation
    from teacher.short_checks import copy_score as reference_copy_score
    from teacher.short_checks import mean_ablation as reference_mean_ablation

    assert check_copy_score(reference_copy_score).passed
    no_ln = check_copy_score(lambda r, V, O, U, t, k=5: (
        (folded_layer_norm(r @ V @ O, 1e-5) @ U).topk(k, -1).indices == t[:, None]).any(-1).float().mean())
    assert no_ln.status == "fail" and "before W_V" in no_ln.message
    top1 = check_copy_score(lambda r, V, O, U, t, k=5: reference_copy_score(r, V, O, U, t, k=1))
    assert "top-1" in top1.message
    assert check_mean_ablation(reference_mean_ablation).passed

    def everywhere(z, m, h, p):
        out = z.clone()
        out[:, :, h] = m[:, :, h]
        return out

    assert "every position" in check_mean_ablation(everywhere).message
    off_by_one = check_mean_ablation(lambda z, m, h, p: reference_mean_ablation(z, m, h + 1, p))
    assert "off by one" in off_by_one.message
    assert check_mean_ablation(_todo).status == "todo"


# ------------------------------------------------------------------ short checks: stored answers


def _short_check(name):
    cases = SHORT_CHECKS[name][0]
    module = sys.modules[cases.__module__]
    checks = [getattr(module, f) for f in module.__all__ if f.startswith("check_")]
    for check in checks:  # the check whose inputs are these cases
        if check.__code__.co_argcount == 1 and name in check(lambda *a: "x").message:
            return check
    raise AssertionError(f"no check for {name!r}")


@pytest.mark.parametrize("name", list(SHORT_CHECKS))
def test_short_check_passes_the_teachers_reference_and_names_each_mistake(name, capsys):
    _, reference, mistakes = SHORT_CHECKS[name]
    check = _short_check(name)
    assert check(reference).passed
    for description, mistake in mistakes.items():
        result = check(mistake)
        wrong = [torch.as_tensor(mistake(*a)) for _, a in SHORT_CHECKS[name][0]()]
        if all(bool((w == 0).all()) for w in wrong):  # an all-zero answer is never a mistake
            assert "all zeros" in result.message, (description, result.message)
        else:  # this mistake, or another that gives the same output on the failing input
            named = [d for d in mistakes if d in result.message]
            same = [d for d in named if d == description or any(
                torch.allclose(torch.as_tensor(mistakes[d](*a)).float(), torch.as_tensor(mistake(*a)).float())
                for label, a in SHORT_CHECKS[name][0]() if label in result.message)]
            assert result.status == "fail" and same, (description, result.message)
    assert check(_todo).status == "todo"


def _answers_of(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "_answers.py", "exec"), namespace)  # noqa: S102 (our own file)
    return namespace["ANSWERS"]


def _close(a, b, path="") -> list[str]:
    """Where two JSON-like answers differ beyond float rounding (BLAS order differs by machine)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} and {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return [] if math.isnan(a) and math.isnan(b) else [f"{path}: {a} != {b}"]
        return [] if abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b)) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_stored_answers_are_what_the_teachers_solutions_give():
    stored = (ROOT / "src" / "helpers" / "exercises" / "_answers.py").read_text(encoding="utf-8")
    differences = _close(_answers_of(stored), _answers_of(answers_source()))
    assert not differences, ("run: python scripts/student_notebooks.py --answers\n"
                             + "\n".join(differences[:10]))


def test_checks_report_in_place_changes_and_all_zero_answers():
    def doubles_in_place(x):
        x.mul_(2)
        return x

    cases = [("a vector", (torch.tensor([1.0, 2.0]),))]
    result = run_check("double", doubles_in_place, lambda x: 2 * x, cases, quiet=True)
    assert result.status == "fail" and "changed its input `argument 1` in place" in result.message
    # a known mistake that gives zeros is not named when the answer is all zeros
    zero = run_check("double", lambda x: torch.zeros(2), lambda x: 2 * x, cases, quiet=True,
                     known_mistakes={"you multiplied by zero": lambda x: 0 * x})
    assert "all zeros" in zero.message and "multiplied by zero" not in zero.message
    # the learner's copy is not the caller's: the inputs are unchanged afterwards
    x = torch.tensor([1.0, 2.0])
    run_check("double", lambda v: v.mul_(2), lambda v: 2 * v, [("x", (x,))], quiet=True)
    assert x.tolist() == [1.0, 2.0]


def test_the_installed_package_has_no_reference_solutions(tmp_path):
    """A copy of ``helpers`` outside the repository (as pip installs it) offers no
    ``reference_*`` and defines none of the teacher's solutions."""
    import shutil

    shutil.copytree(ROOT / "src" / "helpers", tmp_path / "site" / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import importlib\n"
        "for m in ['tour', 'ioi', 'acronyms', 'successor_heads', 'factual_recall', 'circuit_reuse',"
        " 'debugging']:\n"
        "    mod = importlib.import_module('helpers.exercises.' + m)\n"
        "    assert not [n for n in dir(mod) if n.startswith('reference')], m\n"
        "    try:\n"
        "        getattr(mod, 'reference_x')\n"
        "    except AttributeError as err:\n"
        "        assert 'not part of the learner' in str(err), err\n"
        "    else:\n"
        "        raise SystemExit('reference found in ' + m)\n"
        "print('clean')\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "helpers" / "exercises").glob("*.py"))
    assert "def reference_" not in source
