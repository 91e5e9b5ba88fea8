"""Place every exercise of ``teacher/exercises/`` into its chapter notebook, idempotently.

    python scripts/place_exercises.py            # every chapter
    python scripts/place_exercises.py --check    # exit 1 if a notebook is not up to date
    python scripts/place_exercises.py notebooks/01_ioi.ipynb ...   # some chapters

Each exercise is authored once (:mod:`teacher.exercises`) with an ``anchor``: heading phrases
(case-insensitive; section numbers, quotes and spacing ignored), tried in order. Its cells
go at the **end of the section** that the first matching heading opens (before the next
heading of the same or a higher level), in the order of the chapter's list. Every placed
cell carries ``metadata.casebook.exercise = <label>``; placing again first removes those
cells (and the older hand-written copies of the same exercises, recognised by their
``:label:``), so running it twice changes nothing. A generated index of the chapter's
exercises (marks, links) goes at the end of its "Exercises" section when it has one.

The same command rewrites the exercise tables of the course guide (``book/course.md``,
between ``<!-- exercises:start -->`` and ``<!-- exercises:end -->``) from the same list,
so the guide cannot name an exercise that does not exist.

Errors, before anything is written: an anchor that matches no heading (naming the
exercise, its anchors and the chapter's headings), and a solution that uses a name that
no earlier cell defines (e.g. an exercise placed above the section that computes the
results it reads).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teacher.exercises import Exercise, by_chapter  # noqa: E402

INDEX = "__index__"
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_KIND_ORDER = {"code": 0, "method": 1, "reading": 2}


class PlacementError(ValueError):
    """An exercise cannot be placed (its anchor heading is missing, or its solution would
    run before a name it uses is defined)."""


# ------------------------------------------------------------------------------ headings


def normalise(text: str) -> str:
    """Heading text for matching: lower case, no section number, plain quotes, one space."""
    text = text.strip().lstrip("#").strip().lower()
    text = re.sub(r"^(\(?[0-9]+[a-z]?[.)]|\([a-z]\))\s*", "", text)  # "3b.", "5.", "(a)"
    text = text.replace("“", '"').replace("”", '"').replace("’", "'").replace("‘", "'")
    text = text.replace("->", "→")
    return re.sub(r"\s+", " ", text)


def headings(nb) -> list[tuple[int, int, str]]:
    """``(cell index, level, text)`` of every markdown heading line, in order."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or _managed(cell):
            continue
        fence = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fence = not fence
            m = None if fence else _HEADING.match(line)
            if m:
                out.append((i, len(m.group(1)), m.group(2)))
    return out


def find_section(nb, exercise: Exercise) -> tuple[int, str]:
    """``(index of the cell before which the exercise goes, the matched heading)``."""
    heads = headings(nb)
    for phrase in exercise.anchor:
        want = normalise(phrase)
        for k, (cell, level, text) in enumerate(heads):
            if want and want in normalise(text):
                end = len(nb.cells)
                for cell2, level2, _ in heads[k + 1:]:
                    if level2 <= level and cell2 > cell:
                        end = cell2
                        break
                return end, text
    listed = "; ".join(f"{'#' * lv} {t}" for _, lv, t in heads) or "(none)"
    raise PlacementError(
        f"exercise {exercise.label!r} ({exercise.chapter}): no heading contains any of its "
        f"anchors {list(exercise.anchor)}. The chapter's headings are: {listed}. Either the "
        f"heading was renamed (add the new wording to the exercise's `anchor` in "
        f"teacher/exercises/) or the section is gone (choose another anchor)."
    )


# ------------------------------------------------------------------------------ cells


def _managed(cell) -> str | None:
    return cell.metadata.get("casebook", {}).get("exercise")


def _cell(kind: str, source: str, label: str, k: int, tags=(), meta=None):
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source.strip("\n"))
    cell.id = f"ex-{label}-{k}"[:64]
    cell.metadata = {"casebook": {"exercise": label, **(meta or {})}}
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def exercise_markdown(e: Exercise) -> str:
    hint = ""
    if e.hint.strip():
        hint = f"\n\n```{{hint}}\n:class: dropdown\n{e.hint.strip()}\n```"
    return (f"````{{exercise}} {e.title}\n:label: {e.label}\n\n{e.marks}\n\n{e.goal.strip()}"
            f"{hint}\n````")


def exercise_cells(e: Exercise) -> list:
    """The notebook cells of one exercise (deterministic ids, no outputs)."""
    meta = {"kind": e.kind, "difficulty": e.difficulty, "importance": e.importance,
            "minutes": e.minutes, "title": e.title}
    if e.graded:
        fn, check, args = e.graded
        meta["graded"] = {"function": fn, "check": check, "args": list(args), "points": e.points}
    cells = [_cell("markdown", exercise_markdown(e), e.label, 0, meta=meta)]
    if e.stub is not None:
        cells.append(_cell("code", e.stub, e.label, 1, tags=("exercise-stub", "remove-cell")))
    cells.append(_cell("markdown", f"```{{solution-start}} {e.label}\n:class: dropdown\n```", e.label, 2))
    for k, (kind, source) in enumerate(e.solution, start=3):
        cells.append(_cell(kind, source, e.label, k, tags=("solution",) if kind == "code" else ()))
    cells.append(_cell("markdown", "```{solution-end}\n```", e.label, 99))
    return cells


def index_cell(chapter: str, exercises: list[Exercise]):
    rows = ["| exercise | kind | difficulty | importance | time |", "|---|---|---|---|---|"]
    from teacher.exercises import DIFFICULTY, IMPORTANCE

    for e in exercises:
        rows.append(f"| {{ref}}`{e.label}` | {e.kind} | {DIFFICULTY[e.difficulty]} | "
                    f"{IMPORTANCE[e.importance]} | {e.minutes} min |")
    text = ("The exercises sit beside the sections they practise; here they all are. *Method* "
            "exercises build a technique on the model and are checked against the book's "
            "helpers; *code* exercises are short tensor functions; *reading* exercises ask "
            "about this chapter's results.\n\n" + "\n".join(rows))
    return _cell("markdown", text, INDEX, 0)


def _legacy_blocks(nb, labels: set[str]) -> set[int]:
    """Indices of hand-written exercise cells (before this script) for ``labels``."""
    drop: set[int] = set()
    cells = nb.cells
    i = 0
    while i < len(cells):
        c = cells[i]
        m = re.search(r":label:\s*(\S+)", c.source) if c.cell_type == "markdown" and "{exercise}" in c.source else None
        if m and m.group(1) in labels and not _managed(c):
            j = i
            drop.add(j)
            j += 1
            while j < len(cells) and "exercise-stub" in cells[j].metadata.get("tags", []):
                drop.add(j)
                j += 1
            if j < len(cells) and re.search(r"\{solution-start\}\s*" + re.escape(m.group(1)), cells[j].source):
                while j < len(cells):
                    drop.add(j)
                    if cells[j].cell_type == "markdown" and "{solution-end}" in cells[j].source:
                        break
                    j += 1
            i = j + 1
            continue
        i += 1
    return drop


# ------------------------------------------------------------------------------ names


def _defined(source: str) -> set[str]:
    names: set[str] = set()
    try:
        tree = ast.parse(_strip_magics(source))
    except SyntaxError:
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _used(source: str) -> set[str]:
    try:
        tree = ast.parse(_strip_magics(source))
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _strip_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def check_names(nb, chapter: str) -> None:
    """Every placed exercise's code uses only names defined above it (or built in)."""
    known = set(dir(builtins)) | {"display", "get_ipython"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        label = _managed(cell)
        if label and label != INDEX:
            missing = sorted(_used(cell.source) - known - _defined(cell.source))
            if missing:
                raise PlacementError(
                    f"exercise {label!r} ({chapter}): its code uses {missing}, which no cell "
                    f"above it defines. Anchor it to a later section (teacher/exercises/), "
                    f"after the cells that compute these.")
        known |= _defined(cell.source)


# ------------------------------------------------------------------------------ placing


def place(nb, chapter: str, exercises: list[Exercise]):
    """A new notebook with ``exercises`` placed (``nb`` is unchanged)."""
    nb = copy.deepcopy(nb)
    labels = {e.label for e in exercises}
    legacy = _legacy_blocks(nb, labels)
    nb.cells = [c for i, c in enumerate(nb.cells) if i not in legacy and not _managed(c)]
    slots: dict[int, list[Exercise]] = {}
    for e in exercises:
        end, _ = find_section(nb, e)
        slots.setdefault(end, []).append(e)
    index_at = None
    for _, level, text in headings(nb):
        if normalise(text) in ("exercises", "exercise"):
            index_at = find_section(nb, Exercise(
                label=INDEX, title="", anchor=(text,), kind="reading", difficulty=1, importance=1,
                minutes=1, goal="", hint="", stub=None, solution=(("code", "pass"),), chapter=chapter))[0]
    for end in sorted(set(slots) | ({index_at} if index_at is not None else set()), reverse=True):
        group = sorted(slots.get(end, []), key=lambda e: _KIND_ORDER[e.kind])
        new = [c for e in group for c in exercise_cells(e)]
        if end == index_at:
            new.append(index_cell(chapter, exercises))
        nb.cells[end:end] = new
    check_names(nb, chapter)
    return nb


def place_file(path: Path, exercises: list[Exercise], *, write: bool = True) -> bool:
    """Place a chapter's exercises into ``path``; True if the file changed (or would)."""
    before = path.read_text(encoding="utf-8")
    nb = nbformat.read(path, as_version=4)
    after = nbformat.writes(place(nb, path.stem, exercises)) + "\n"
    changed = after.rstrip("\n") != before.rstrip("\n")
    if changed and write:
        path.write_text(after, encoding="utf-8")
    return changed


# ------------------------------------------------------------------------------ course guide

COURSE = ROOT / "book" / "course.md"
_START, _END = "<!-- exercises:start -->", "<!-- exercises:end -->"
_TITLES = {"00_tour": "A tour of the toolkit", "01_ioi": "Indirect Object Identification",
           "02_acronyms": "Acronyms", "03_successor_heads": "Successor heads",
           "04_factual_recall": "Factual recall", "05_circuit_reuse": "Circuit reuse",
           "06_debugging": "Debugging a prediction"}


def course_block(chapters: dict[str, list[Exercise]]) -> str:
    """The course guide's generated part: every chapter's exercises with their marks."""
    from teacher.exercises import DIFFICULTY, IMPORTANCE

    lines = [
        _START,
        "<!-- generated by scripts/place_exercises.py from teacher/exercises/: do not edit -->",
        "",
        "Each exercise sits beside the section it practises, marked with a difficulty (●○○ to "
        "●●●), an importance (essential, recommended, optional) and an estimated time (our "
        "estimates, not measured with a class). *Method* exercises have the learner build a "
        "technique on the model (a hook, a corruption, activation or path patching, an "
        "ablation, a tracing cell) and check it against the book's own helpers on the same "
        "model and prompts; *code* exercises are short tensor functions with a check; "
        "*reading* exercises ask about the chapter's results. A session's lab is its "
        "chapter's exercises in the chapter's exercise notebook; to fit an hour, keep the "
        "essential ones.",
        "",
        "| chapter | exercise | kind | difficulty | importance | time |",
        "|---|---|---|---|---|---|",
    ]
    for stem, exercises in chapters.items():
        total = sum(e.minutes for e in exercises)
        essential = sum(e.minutes for e in exercises if e.importance == 3)
        for k, e in enumerate(exercises):
            chapter = (f"[{_TITLES.get(stem, stem)}](../notebooks/{stem}.ipynb) ({total} min; "
                       f"essential {essential} min)") if k == 0 else ""
            lines.append(f"| {chapter} | {e.title} (`{e.label}`) | {e.kind} | "
                         f"{DIFFICULTY[e.difficulty]} | {IMPORTANCE[e.importance]} | {e.minutes} min |")
    lines += ["", _END]
    return "\n".join(lines)


def update_course(chapters: dict[str, list[Exercise]], path: Path = COURSE, *, write: bool = True) -> bool:
    """Rewrite the generated block of the course guide; True if it changed (or would)."""
    text = path.read_text(encoding="utf-8")
    if _START not in text or _END not in text:
        raise PlacementError(f"{path} has no {_START} ... {_END} block for the exercise tables")
    head, rest = text.split(_START, 1)
    _, tail = rest.split(_END, 1)
    new = head + course_block(chapters) + tail
    if new != text and write:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter with exercises")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    chapters = by_chapter()
    paths = args.notebooks or [ROOT / "notebooks" / f"{stem}.ipynb" for stem in chapters]
    stale = []
    try:
        for path in paths:
            if path.stem not in chapters:
                raise PlacementError(f"{path}: no exercises are authored for {path.stem!r} "
                                     f"(chapters: {list(chapters)})")
            if place_file(path, chapters[path.stem], write=not args.check):
                stale.append(path)
        if not args.notebooks and update_course(chapters, write=not args.check):
            stale.append(COURSE)
    except PlacementError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "out of date" if args.check else "updated"
    for path in stale:
        print(f"{verb}: {path}")
    if not stale:
        print("every notebook's exercises are in place")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
