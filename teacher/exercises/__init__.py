"""Every exercise of the casebook, authored once, with where it goes and its marks.

One module per chapter (``teacher/exercises/<slug>.py``) holds ``CHAPTER`` (the notebook's
stem) and ``EXERCISES``, a list of :class:`Exercise`. ``scripts/place_exercises.py`` turns
each into notebook cells (the sphinx-exercise pattern: an ``{exercise}`` cell with the
marks and a hint, a stub cell hidden in the book, a folded ``{solution-start}`` ...
``{solution-end}`` block whose code executes in the book) and puts them at the end of the
section whose heading matches ``anchor``. Every placed cell carries
``metadata.casebook.exercise = label``, which is how placing again replaces them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["CHAPTER_MODULES", "Exercise", "all_exercises", "by_chapter", "coding"]

#: the chapter modules, in book order
CHAPTER_MODULES = ("tour", "ioi", "acronyms", "successor_heads", "factual_recall", "circuit_reuse",
                   "debugging")

DIFFICULTY = {1: "●○○ easy", 2: "●●○ medium", 3: "●●● hard"}
IMPORTANCE = {1: "optional", 2: "recommended", 3: "essential"}


@dataclass(frozen=True)
class Exercise:
    """One exercise.

    ``anchor``: heading phrases (case-insensitive, numbering ignored), tried in order; the
    exercise goes at the end of the first section whose heading contains one.
    ``kind``: ``"method"`` (the learner builds a technique on the model, checked against the
    toolkit), ``"code"`` (a short tensor function with a check) or ``"reading"`` (a
    question answered from the chapter's results; not graded).
    ``stub``: the learner's starting cell (``None`` for reading exercises); ``solution``:
    ``(cell type, source)`` pairs, executed in the book, cut from the student notebook.
    ``graded``: ``(function name, check's dotted path, check's arguments)`` for the
    autograder, e.g. ``("patch_head_z", "helpers.exercises.ioi.check_patch_head_z",
    ("model", "patch_head_z"))``.
    """

    label: str
    title: str
    anchor: tuple[str, ...]
    kind: str
    difficulty: int
    importance: int
    minutes: int
    goal: str
    hint: str
    stub: str | None
    solution: tuple[tuple[str, str], ...]
    graded: tuple[str, str, tuple[str, ...]] | None = None
    chapter: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in ("method", "code", "reading"):
            raise ValueError(f"exercise {self.label}: kind must be method, code or reading, not {self.kind!r}")
        if self.difficulty not in DIFFICULTY or self.importance not in IMPORTANCE:
            raise ValueError(f"exercise {self.label}: difficulty and importance are 1, 2 or 3")
        if (self.stub is None) != (self.kind == "reading"):
            raise ValueError(f"exercise {self.label}: coding exercises have a stub, reading ones none")
        if (self.graded is None) != (self.kind == "reading"):
            raise ValueError(f"exercise {self.label}: coding exercises are graded, reading ones not")
        if not any(t == "code" for t, _ in self.solution):
            raise ValueError(f"exercise {self.label}: the solution needs a code cell (it executes in the book)")

    @property
    def points(self) -> int:
        """Autograder points: the difficulty (1-3)."""
        return self.difficulty

    @property
    def marks(self) -> str:
        return (f"**Difficulty** {DIFFICULTY[self.difficulty]} · **Importance** "
                f"{IMPORTANCE[self.importance]} · **Time** about {self.minutes} min")


def coding(imports: str, definition: str, check_call: str) -> tuple[str, str]:
    """``(stub, solution)`` cells from a function's imports, full definition and check call:
    the stub keeps the signature and docstring and raises ``NotImplementedError``."""
    lines = definition.strip("\n").splitlines()
    end = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":"))  # a signature may wrap
    head = lines[: end + 1]
    rest = lines[end + 1:]
    if rest and rest[0].strip().startswith('"""'):
        i = 0
        head.append(rest[0])
        if rest[0].strip().count('"""') < 2:
            while not rest[i + 1].strip().endswith('"""'):
                i += 1
                head.append(rest[i])
            head.append(rest[i + 1])
            i += 1
        rest = rest[i + 1:]
    indent = head[0][: len(head[0]) - len(head[0].lstrip())] + "    "
    stub_def = "\n".join(head + [f"{indent}raise NotImplementedError  # your code here"])
    join = lambda body: f"{imports.strip()}\n\n\n{body}\n\n\n{check_call.strip()}"  # noqa: E731
    return join(stub_def), join("\n".join(head + rest))


def by_chapter() -> dict[str, list[Exercise]]:
    """``{notebook stem: [exercises]}`` in book order."""
    out = {}
    for name in CHAPTER_MODULES:
        mod = importlib.import_module(f"teacher.exercises.{name}")
        out[mod.CHAPTER] = [_with_chapter(e, mod.CHAPTER) for e in mod.EXERCISES]
    return out


def _with_chapter(e: Exercise, chapter: str) -> Exercise:
    object.__setattr__(e, "chapter", chapter)
    return e


def all_exercises() -> list[Exercise]:
    return [e for exs in by_chapter().values() for e in exs]
