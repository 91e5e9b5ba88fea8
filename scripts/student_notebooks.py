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
(``exercises/NN_slug.ipynb``); nothing is kept by hand.

    python scripts/student_notebooks.py OUT_DIR [NOTEBOOK ...]   # default: every notebook
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
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
    return nb


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
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if not exercise_labels(nb):
            continue
        target = out / path.name
        nbformat.write(make_student(nb), target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    notebooks = [Path(p) for p in argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in write_student_notebooks(notebooks, Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
