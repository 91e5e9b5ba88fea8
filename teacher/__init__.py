"""The teacher's side of the casebook's exercises: never imported by the ``helpers`` package.

* :mod:`teacher.exercises`: every exercise, authored once (prompt, hint, stub, solution,
  marks, where it goes in its chapter). ``scripts/place_exercises.py`` writes them into the
  notebooks; ``scripts/student_notebooks.py`` cuts the solutions out again for learners.
* :mod:`teacher.short_checks`: the reference solutions and known mistakes of the short
  (tensor) checks, from which ``helpers/exercises/_answers.py`` is generated.
"""
