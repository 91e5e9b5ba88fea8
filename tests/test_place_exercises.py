"""scripts/place_exercises.py on copies of the chapter notebooks: every exercise placed once,
idempotent, the course guide generated from the same list, clear errors."""

import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import place_exercises as P  # noqa: E402
from student_notebooks import exercise_labels, make_student  # noqa: E402
from teacher.exercises import Exercise, by_chapter  # noqa: E402

CHAPTERS = by_chapter()


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    out = tmp_path_factory.mktemp("placed")
    for stem in CHAPTERS:
        shutil.copy(ROOT / "notebooks" / f"{stem}.ipynb", out / f"{stem}.ipynb")
    assert P.main([str(p) for p in sorted(out.glob("*.ipynb"))]) == 0
    return out


@pytest.mark.parametrize("stem", list(CHAPTERS))
def test_every_exercise_is_placed_once_and_placing_again_changes_nothing(placed, stem):
    path = placed / f"{stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    labels = exercise_labels(nb)
    assert sorted(labels) == sorted(e.label for e in CHAPTERS[stem])
    assert not P.place_file(path, CHAPTERS[stem])  # idempotent
    heads = P.headings(nb)
    for e in CHAPTERS[stem]:  # beside its section, not at the end of the chapter
        first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("casebook", {}).get("exercise") == e.label)
        above = [t for i, _, t in heads if i < first][-1]
        assert any(P.normalise(a) in P.normalise(above) for a in e.anchor) or e.kind != "reading", (e.label, above)
    nb.metadata.setdefault("casebook", {})["chapter"] = stem
    student = make_student(nb)
    assert student.metadata["otter"]["assignment_name"] == stem
    graded = [e.label for e in CHAPTERS[stem] if e.graded]
    assert sorted(student.metadata["casebook"]["graded"]) == sorted(graded)


def test_a_missing_anchor_names_the_exercise_and_the_headings(placed):
    nb = nbformat.read(placed / "01_ioi.ipynb", as_version=4)
    e = Exercise(label="x-lost", title="t", anchor=("No such heading",), kind="reading", difficulty=1,
                 importance=1, minutes=1, goal="g", hint="", stub=None, solution=(("code", "pass"),),
                 chapter="01_ioi")
    with pytest.raises(P.PlacementError) as err:
        P.place(nb, "01_ioi", [*CHAPTERS["01_ioi"], e])
    assert "'x-lost'" in str(err.value) and "No such heading" in str(err.value) and "Setup" in str(err.value)


def test_a_solution_placed_above_what_it_reads_is_an_error(placed):
    nb = nbformat.read(placed / "01_ioi.ipynb", as_version=4)
    e = Exercise(label="x-early", title="t", anchor=("Setup",), kind="reading", difficulty=1,
                 importance=1, minutes=1, goal="g", hint="", stub=None,
                 solution=(("code", "print(undefined_result)"),), chapter="01_ioi")
    with pytest.raises(P.PlacementError, match="x-early.*undefined_result"):
        P.place(nb, "01_ioi", [e])


def test_the_course_guide_lists_exactly_the_placed_exercises(placed):
    text = (ROOT / "book" / "course.md").read_text(encoding="utf-8")
    assert P.course_block(CHAPTERS) in text, "run: python scripts/place_exercises.py"
    import re

    listed = set(re.findall(r"\(`([a-z0-9-]+)`\) \|", text))
    placed_labels = {lab for p in placed.glob("*.ipynb") for lab in exercise_labels(nbformat.read(p, as_version=4))}
    assert listed == placed_labels


def test_the_chapter_notebooks_have_their_exercises_placed():
    """Fails until `python scripts/place_exercises.py` has been run on notebooks/."""
    assert P.main(["--check"]) == 0, "run: python scripts/place_exercises.py"


def test_every_stub_and_solution_is_valid_python():
    """Stubs run in the book too (hidden): a broken one stops the build."""
    import ast

    for exercises in CHAPTERS.values():
        for e in exercises:
            for source in ([e.stub] if e.stub else []) + [s for k, s in e.solution if k == "code"]:
                ast.parse(source)
