"""Write everything generated from the book's home (``helpers.project``) where it belongs.

The one setting is ``pyproject.toml``'s ``[project.urls] Repository`` (and ``version``: the
release tag ``v<version>``). This script writes, from it:

* every notebook's first cell, the shared set-up (``helpers.project.setup_cell_source``);
* every notebook's student-notebook line (``**Work on these exercises:** ...``);
* the ``repository`` section of ``_config.yml`` (launch buttons; the build writes it too);
* README's "Open in Colab" badge (between ``<!-- colab-badge -->`` markers).

Usage:
    python scripts/sync_setup_cells.py            # every notebook, _config.yml, README
    python scripts/sync_setup_cells.py --only 00_tour [...]   # these notebooks (and the rest)
    python scripts/sync_setup_cells.py --check    # change nothing; exit 1 if anything differs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LINKS_PREFIX = "**Work on these exercises:**"
BADGE_START, BADGE_END = "<!-- colab-badge -->", "<!-- /colab-badge -->"


def load_project():
    """``helpers/project.py`` on its own (no torch), as the book build loads it."""
    spec = importlib.util.spec_from_file_location("casebook_project", ROOT / "src" / "helpers" / "project.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synced_notebook(nb, stem: str, project) -> bool:
    """Bring ``nb``'s set-up cell and student-notebook line in step; True if it changed."""
    changed = False
    source = project.setup_cell_source()
    first = nb.cells[0] if nb.cells else None
    hidden_code = first is not None and first.cell_type == "code" and "remove-cell" in first.metadata.get("tags", [])
    if not hidden_code:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": ["remove-cell"]}))
        changed = True
    elif first.source != source:
        first.source = source
        changed = True
    links = project.student_notebook_links(stem)
    for cell in nb.cells:
        if cell.cell_type != "markdown" or LINKS_PREFIX not in cell.source:
            continue
        lines = [links if line.startswith(LINKS_PREFIX) else line for line in cell.source.split("\n")]
        new = "\n".join(lines)
        if new != cell.source:
            cell.source = new
            changed = True
    return changed


def synced_config(text: str, project) -> str:
    """``_config.yml`` with its ``repository`` section from the setting (comments kept)."""
    repo = project.book_repository_config()
    match = re.search(r"^repository:\n((?:[ \t]+.*\n?)*)", text, flags=re.M)
    block = "repository:\n" + "".join(f"  {key}: {value or json.dumps(value)}\n" for key, value in repo.items())
    if match is None:
        return text.rstrip("\n") + "\n\n" + block
    return text[: match.start()] + block + text[match.end():]


def synced_readme(text: str, project) -> str:
    block = f"{BADGE_START}\n{project.readme_badge()}\n{BADGE_END}"
    pattern = re.compile(re.escape(BADGE_START) + r".*?" + re.escape(BADGE_END), flags=re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    title, _, rest = text.partition("\n")  # after the title line
    return f"{title}\n\n{block}\n{rest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--only", nargs="*", help="notebook names (e.g. 00_tour); default: all")
    args = parser.parse_args(argv)
    project = load_project()
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if args.only and path.stem not in set(args.only):
            continue
        nb = nbformat.read(path, as_version=4)
        if synced_notebook(nb, path.stem, project):
            stale.append(path.name)
            if not args.check:
                nbformat.write(nb, path)
    for name, sync in (("_config.yml", synced_config), ("README.md", synced_readme)):
        text = (ROOT / name).read_text(encoding="utf-8")
        new = sync(text, project)
        if new != text:
            stale.append(name)
            if not args.check:
                (ROOT / name).write_text(new, encoding="utf-8")
    if stale:
        print(("stale (run python scripts/sync_setup_cells.py): " if args.check else "updated: ")
              + ", ".join(stale))
    else:
        print(f"in step with {project.REPOSITORY_URL} at {project.RELEASE_TAG}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
