"""Execution cache of the book build: re-run a chapter only when what it depends on changed.

A chapter's key is a SHA-256 over everything that can change its executed notebook:

- the stored notebook (its bytes: code, prose, metadata, the default parameters);
- the parameters the build injects (the weights, the smoke sizes) and the weights mode;
- every file of the ``helpers`` package (``src/helpers``, assets included);
- ``requirements.txt`` (the pinned libraries), the Python version, and the environment
  variables that change outputs (``CASEBOOK_CV_MODE``, ``PLOTLY_RENDERER``, ...);
- :data:`CACHE_VERSION`, bumped when the build changes how it executes notebooks.

Entries live in ``<cache>/<weights>/<chapter>-<key>.ipynb`` with a sidecar ``.json`` that
repeats the key, the weights and the parameters. Stand-in and real-weights entries sit in
different folders, the weights are part of the key, and a restored entry is checked against
both the sidecar and papermill's own record of the injected parameters, so a stand-in output
can never stand in for a real-weights one (or the reverse). Writes are atomic (temporary
file, then rename): an interrupted build leaves no half entry. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_VERSION = 1
# Environment variables the notebooks read that change their outputs.
OUTPUT_ENV = ("CASEBOOK_BUILD", "CASEBOOK_CV_MODE", "PLOTLY_RENDERER", "TQDM_DISABLE")
KEEP_PER_CHAPTER = 3  # entries kept per chapter and weights (e.g. smoke and default size)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(folder: Path) -> str:
    """One hash over every file below ``folder`` (relative paths and contents; no bytecode)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo"):
            continue
        h.update(relative.as_posix().encode() + b"\0" + _sha(path.read_bytes()).encode() + b"\n")
    return h.hexdigest()


def shared_digest(root: Path) -> str:
    """What every chapter depends on: ``helpers``, the pins, Python, the environment.

    Computed once at the start of a build, so that every chapter of one build gets the same.
    """
    requirements = root / "requirements.txt"
    parts = {
        "cache_version": CACHE_VERSION,
        "helpers": tree_digest(root / "src" / "helpers"),
        "requirements": _sha(requirements.read_bytes()) if requirements.exists() else None,
        "python": sys.version.split()[0],
        "environment": {name: os.environ.get(name) for name in OUTPUT_ENV},
    }
    return _sha(json.dumps(parts, sort_keys=True).encode())


def chapter_key(notebook: Path, parameters: dict, weights: str, root: Path, shared: str | None = None) -> str:
    """The content hash that decides whether ``notebook`` must be executed again."""
    parts = {
        "notebook": _sha(notebook.read_bytes()),
        "parameters": parameters,
        "weights": weights,
        "shared": shared or shared_digest(root),
    }
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode())


@dataclass
class Entry:
    """What the cache knows about one stored execution."""

    key: str
    weights: str
    parameters: dict
    seconds: float
    executed_at: str


class ExecutionCache:
    """Executed notebooks by chapter and key, one folder per weights mode."""

    def __init__(self, directory: Path, weights: str):
        if weights not in ("pretrained", "random"):
            raise ValueError(f"weights must be 'pretrained' or 'random', not {weights!r}")
        self.weights = weights
        self.folder = Path(directory) / weights

    def _paths(self, chapter: str, key: str) -> tuple[Path, Path]:
        stem = f"{chapter}-{key[:24]}"
        return self.folder / f"{stem}.ipynb", self.folder / f"{stem}.json"

    def lookup(self, chapter: str, key: str) -> Entry | None:
        """The entry for this chapter and key, if it is complete and of this build's weights."""
        notebook, sidecar = self._paths(chapter, key)
        if not (notebook.exists() and sidecar.exists()):
            return None
        try:
            meta = json.loads(sidecar.read_text())
            injected = json.loads(notebook.read_text(encoding="utf-8"))["metadata"]["papermill"]["parameters"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta.get("key") != key or meta.get("weights") != self.weights:
            return None
        if injected.get("weights") != self.weights:  # papermill's own record of the run
            return None
        return Entry(key, meta["weights"], meta.get("parameters", {}), meta.get("seconds", 0.0),
                     meta.get("executed_at", ""))

    def restore(self, chapter: str, key: str, destination: Path) -> Entry | None:
        """Copy the cached execution to ``destination``; None (and nothing copied) on a miss."""
        entry = self.lookup(chapter, key)
        if entry is not None:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._paths(chapter, key)[0], destination)
        return entry

    def store(self, chapter: str, key: str, executed: Path, *, parameters: dict, seconds: float,
              executed_at: str) -> None:
        """Keep an executed notebook under its key (atomically), and prune older entries."""
        if parameters.get("weights") != self.weights:
            raise ValueError(f"refusing to store a {parameters.get('weights')!r} run in the {self.weights!r} cache")
        self.folder.mkdir(parents=True, exist_ok=True)
        notebook, sidecar = self._paths(chapter, key)
        meta = {"key": key, "chapter": chapter, "weights": self.weights, "parameters": parameters,
                "seconds": round(seconds, 2), "executed_at": executed_at}
        self._atomic_copy(executed, notebook)
        self._atomic_write(sidecar, json.dumps(meta, indent=2))
        self._prune(chapter)

    def _atomic_copy(self, source: Path, target: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def _atomic_write(self, target: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, target)

    def _prune(self, chapter: str) -> None:
        sidecars = sorted(self.folder.glob(f"{chapter}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in sidecars[KEEP_PER_CHAPTER:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".ipynb").unlink(missing_ok=True)
