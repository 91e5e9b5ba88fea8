"""Student notebooks: each chapter without its solutions, generated from the chapter itself.

In a chapter, an exercise is written as

* a markdown cell with a ``{exercise}`` directive (goal, hint),
* a code cell tagged ``exercise-stub`` and ``remove-cell``: the learner's starting point
  (a function that raises ``NotImplementedError`` and the call to its check); hidden in the
  book, kept in the student notebook,
* a markdown cell ``{solution-start}``, the solution's code cells tagged ``solution``, and a
  markdown cell ``{solution-end}`` (sphinx-exercise: the solution executes in the book and
  shows folded).

The student copy drops the solution cells and their two markdown markers, un-hides the
stubs, and turns the MyST exercise directive into plain markdown that Jupyter and Colab
render. There is one source: ``make book`` writes the copies into the site
(``exercises/NN_slug.ipynb``); nothing is kept by hand. The exercises themselves are
authored in ``teacher/exercises/`` and placed into the chapters by
``scripts/place_exercises.py``.

**Autograding (otter-grader).** Each graded exercise (its ``{exercise}`` cell's
``metadata.casebook.graded``: the learner's function, the check, its points) becomes an
otter test, ``passes(check, model, function)``, which re-runs the book's check on the
learner's function. The student notebook's metadata names the otter assignment
(``metadata.otter.assignment_name``) and lists the graded exercises with their points
(``metadata.casebook.graded``); with ``--teacher DIR`` the tests go into one otter
autograder per chapter (``DIR/autograder/NN_slug.zip``: ``otter run -a
NN_slug.zip submission.ipynb`` grades one submission without Docker). ``--teacher`` also
writes the reference solutions (``DIR/solutions/NN_slug.py``, every exercise's solution
code) and a README: the teacher's materials, kept out of the package learners import.

    python scripts/student_notebooks.py OUT_DIR [NOTEBOOK ...]   # default: every notebook
    python scripts/student_notebooks.py --teacher DIR [NOTEBOOK ...]
    python scripts/student_notebooks.py --answers   # regenerate the short checks' answers
"""

from __future__ import annotations

import copy
import json
import re
import sys
import zipfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
#: the otter-grader version the autograders are written for (pinned in requirements.txt)
OTTER_VERSION = "7.0.0"
_DIRECTIVE = re.compile(r"^(`{3,}|:{3,})\{(exercise|hint|note|admonition)\}[ \t]*(.*)$")
_OPTION = re.compile(r"^:[\w-]+:.*$")


def _is_marker(cell, name: str) -> bool:
    pattern = r"^\s*(`{3,}|:{3,})\{" + name + r"\}"
    return cell.cell_type == "markdown" and re.search(pattern, cell.source, flags=re.M) is not None


def plain_markdown(source: str) -> str:
    """MyST ``{exercise}``/``{hint}`` directives → headings and ``<details>`` blocks."""
    out: list[str] = []
    closers: list[tuple[str, str]] = []
    for line in source.splitlines():
        m = _DIRECTIVE.match(line.strip())
        if m:
            fence, kind, title = m.groups()
            if kind == "exercise":
                out.append(f"### Exercise: {title}".rstrip(": ") if title else "### Exercise")
                closers.append((fence, ""))
            else:
                out.append(f"<details><summary>{title or kind.capitalize()}</summary>\n")
                closers.append((fence, "\n</details>"))
            continue
        if closers and line.strip() == closers[-1][0]:
            out.append(closers.pop()[1])
            continue
        if closers and _OPTION.match(line.strip()):
            continue  # :label:, :class: ...
        out.append(line)
    return "\n".join(out).strip() + "\n"


def make_student(nb):
    """The student copy of a chapter notebook (a new notebook; ``nb`` is unchanged)."""
    nb = copy.deepcopy(nb)
    cells, in_solution = [], False
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if _is_marker(cell, "solution-start"):
            in_solution = True
            continue
        if _is_marker(cell, "solution-end"):
            in_solution = False
            continue
        if in_solution or "solution" in tags:
            continue
        if "exercise-stub" in tags:
            cell.metadata["tags"] = sorted(tags - {"remove-cell", "exercise-stub"} | {"exercise"})
        if cell.cell_type == "markdown" and "{exercise}" in cell.source:
            cell.source = plain_markdown(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    if in_solution:
        raise ValueError("a {solution-start} has no matching {solution-end}")
    nb.cells = cells
    nb.metadata.setdefault("casebook", {})["student_copy"] = True
    tests = otter_tests(nb)
    if tests:
        # otter reads the assignment's name from here; the tests themselves go into the
        # autograder (--teacher), where learners do not see them
        nb.metadata["otter"] = {"assignment_name": _assignment(nb)}
        nb.metadata["casebook"]["graded"] = {k: t["points"] for k, t in tests.items()}
    return nb


def _assignment(nb) -> str:
    return nb.metadata.get("casebook", {}).get("chapter") or "casebook"


def graded_exercises(nb) -> list[dict]:
    """``[{"label", "function", "check", "args", "points", "stub"}]`` of a notebook's graded
    exercises, in order (``stub``: the index of the exercise's code cell, or None)."""
    out = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("casebook", {})
        if cell.cell_type == "markdown" and "graded" in meta:
            stub = next((j for j in range(i + 1, min(i + 3, len(nb.cells)))
                         if nb.cells[j].cell_type == "code"
                         and nb.cells[j].metadata.get("casebook", {}).get("exercise") == meta["exercise"]), None)
            out.append({"label": meta["exercise"], **meta["graded"], "stub": stub})
    return out


def otter_test(item: dict) -> dict:
    """One otter (OK-format) test: the book's check passes on the learner's function."""
    module, check = item["check"].rsplit(".", 1)
    code = (f">>> from helpers.exercises import passes\n>>> from {module} import {check}\n"
            f">>> passes({check}, {', '.join(item['args'])})\nTrue")
    return {"name": item["label"], "points": item["points"], "suites": [{
        "cases": [{"code": code, "hidden": False, "locked": False,
                   "failure_message": f"{check} does not pass yet: run the exercise's cell to see why"}],
        "scored": True, "setup": "", "teardown": "", "type": "doctest"}]}


def otter_tests(nb) -> dict:
    return {item["label"]: otter_test(item) for item in graded_exercises(nb)}


def write_autograder(nb, path: Path) -> Path:
    """An otter autograder zip for one student notebook (tests, config, requirements)."""
    tests = otter_tests(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tests/", "")  # otter expects the folder's own entry
        for label, test in tests.items():
            z.writestr(f"tests/{label}.py", f"OK_FORMAT = True\n\ntest = {test!r}\n")
        z.writestr("otter_config.json", json.dumps({"lang": "python", "logo": False,
                                                    "assignment_name": _assignment(nb)}))
        z.writestr("requirements.txt", f"otter-grader=={OTTER_VERSION}\n")
    return path


def solutions_script(nb, stem: str) -> str:
    """Every exercise's solution code of a chapter, in order, as one Python file."""
    parts = [f'"""Reference solutions of the exercises of {stem} (teacher\'s materials)."""']
    label, in_solution = None, False
    for cell in nb.cells:
        start = re.search(r"\{solution-start\}\s*(\S+)", cell.source) if cell.cell_type == "markdown" else None
        if start:
            label, in_solution = start.group(1), True
            parts.append(f"# %% {label}")
            continue
        if _is_marker(cell, "solution-end"):
            in_solution = False
            continue
        if in_solution and cell.cell_type == "code":
            parts.append(cell.source.strip())
    return "\n\n".join(parts) + "\n"


def _with_exercises(notebooks: list[Path]):
    """``(path, notebook)`` of each chapter with exercises, its metadata naming the chapter."""
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if exercise_labels(nb):
            nb.metadata.setdefault("casebook", {})["chapter"] = path.stem
            yield path, nb


def write_teacher_kit(notebooks: list[Path], out: Path) -> list[Path]:
    """Solutions, autograders and a README for the chapters with exercises."""
    written = []
    for path, nb in _with_exercises(notebooks):
        sol = out / "solutions" / f"{path.stem}.py"
        sol.parent.mkdir(parents=True, exist_ok=True)
        sol.write_text(solutions_script(nb, path.stem), encoding="utf-8")
        written += [sol, write_autograder(make_student(nb), out / "autograder" / f"{path.stem}.zip")]
    readme = out / "README.md"
    readme.write_text(TEACHER_README, encoding="utf-8")
    return [*written, readme]


TEACHER_README = """# Teacher's materials (generated by scripts/student_notebooks.py --teacher)

- `solutions/NN_slug.py`: every exercise's reference solution, per chapter.
- `autograder/NN_slug.zip`: an otter-grader autograder per chapter. Collect the learners'
  notebooks, then `otter run -a autograder/01_ioi.zip submission.ipynb` (pip install
  otter-grader==%s; no Docker needed) prints the score and writes `results.json`; `otter
  grade` grades a folder of submissions in Docker. Each graded exercise is worth its
  difficulty (1-3 points) and passes when the book's check passes on the learner's function,
  re-run on the grading machine's model (the stand-in when GPT-2's weights cannot be
  downloaded: the checks compare against the book's helpers on the same model, so both work).
  Grading runs the whole notebook: set the parameters cell to the chapter's smoke sizes
  (`metadata.casebook.smoke_parameters`) to grade quickly.
- Reading exercises (questions about a chapter's results) are not autograded.
""" % OTTER_VERSION


def exercise_labels(nb) -> list[str]:
    """The labels of a notebook's exercises, in order."""
    labels = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{exercise}" in cell.source:
            labels += re.findall(r"^:label:\s*(\S+)", cell.source, flags=re.M)
    return labels


def write_student_notebooks(notebooks: list[Path], out: Path) -> list[Path]:
    """Write the student copy of every notebook that has exercises into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in _with_exercises(notebooks):
        target = out / path.name
        nbformat.write(make_student(nb), target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    if argv[0] == "--answers":
        sys.path.insert(0, str(ROOT))
        from teacher.short_checks import build_answers

        print(build_answers())
        return 0
    teacher = argv[0] == "--teacher"
    if teacher:
        argv = argv[1:]
    notebooks = [Path(p) for p in argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    write = write_teacher_kit if teacher else write_student_notebooks
    for path in write(notebooks, Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
