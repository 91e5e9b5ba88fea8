"""A graded run (otter-grader) of student notebooks: the teacher's solutions score full marks,
known mistakes score less. Kept small: the IOI and debugging chapters' graded exercises, on
the tiny test GPT-2, in one notebook graded by otter without Docker."""

import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import place_exercises as P  # noqa: E402
from student_notebooks import graded_exercises, make_student, write_autograder  # noqa: E402
from teacher.exercises import by_chapter  # noqa: E402

otter = pytest.importorskip("otter.api", reason="otter-grader is pinned in requirements.txt")

SETUP = """\
from helpers.models import ModelSpec, build_stand_in, finish_model

TINY = ModelSpec("tiny-gpt2", "openai-community/gpt2", n_layers=2, n_heads=4, d_model=64)
model = finish_model(build_stand_in(TINY, seed=1), TINY, stand_in=True, seed=1)
"""
CHAPTERS = ("01_ioi", "06_debugging")
#: exercise -> (text in its solution, replacement): a known mistake
MISTAKES = {
    "ioi-patch-z": ("z[:, :, head] = store", "z[:, :, (head + 1) % z.shape[2]] = store"),
    "dbg-zero-ablation": ("return logit_diff() - after", "return after"),
}


def _submission(tmp_path, mistakes=()):
    """One notebook: the setup cell, then each chapter's graded cells from its student copy,
    filled with the teacher's solution (with ``mistakes`` applied)."""
    chapters = by_chapter()
    tmp_path.mkdir(parents=True, exist_ok=True)
    cells = [nbformat.v4.new_code_cell(SETUP)]
    tests = {}
    for stem in CHAPTERS:
        copy = tmp_path / f"{stem}.ipynb"
        shutil.copy(ROOT / "notebooks" / f"{stem}.ipynb", copy)
        P.place_file(copy, chapters[stem])
        nb = nbformat.read(copy, as_version=4)
        nb.metadata.setdefault("casebook", {})["chapter"] = stem
        student = make_student(nb)
        tests.update(student.metadata["casebook"]["graded"])
        solutions = {e.label: e for e in chapters[stem]}
        for item in graded_exercises(student):
            e = solutions[item["label"]]
            code = "\n\n".join(src for kind, src in e.solution if kind == "code")
            if item["label"] in mistakes:
                old, new = MISTAKES[item["label"]]
                assert old in code
                code = code.replace(old, new)
            cell = student.cells[item["stub"]]
            assert "NotImplementedError" in cell.source
            cells.append(nbformat.v4.new_code_cell(code))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["otter"] = {"assignment_name": "casebook"}
    nb.metadata["casebook"] = {"graded": tests}
    path = tmp_path / ("mistakes.ipynb" if mistakes else "solutions.ipynb")
    nbformat.write(nb, path)
    return path, nb


def _with_chapter(path, name):
    nb = nbformat.read(path, as_version=4)
    nb.metadata.setdefault("casebook", {})["chapter"] = name
    return nb


def _merge(zips, out):
    import zipfile

    with zipfile.ZipFile(out, "w") as z:
        seen = set()
        for path in zips:
            with zipfile.ZipFile(path) as src:
                for name in src.namelist():
                    if name not in seen:
                        z.writestr(name, src.read(name))
                        seen.add(name)
    return out


def test_solutions_score_full_marks_and_known_mistakes_score_less(tmp_path):
    good, _ = _submission(tmp_path / "good")
    for stem in CHAPTERS:  # the autograder of each chapter's student notebook, merged
        student = make_student(_with_chapter(tmp_path / "good" / f"{stem}.ipynb", "casebook"))
        write_autograder(student, tmp_path / f"{stem}.zip")
    ag = _merge([tmp_path / f"{stem}.zip" for stem in CHAPTERS], tmp_path / "autograder.zip")
    full = otter.grade_submission(str(good), str(ag), quiet=True)
    assert full.total == full.possible > 0, full.to_dict()
    bad, _ = _submission(tmp_path / "bad", mistakes=tuple(MISTAKES))
    less = otter.grade_submission(str(bad), str(ag), quiet=True)
    lost = {k for k, v in less.to_dict().items() if v["score"] < v["possible"]}
    assert lost == set(MISTAKES), less.to_dict()
    assert less.total < full.total
