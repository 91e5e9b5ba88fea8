"""Write the shared set-up cell (``helpers.project.setup_cell_source``) into every notebook.

Usage: python scripts/sync_setup_cells.py [--check]
With --check, change nothing and exit 1 if a notebook's first cell differs.
"""
import sys
from pathlib import Path

import nbformat

from helpers.project import setup_cell_source

ROOT = Path(__file__).resolve().parents[1]


def main(check: bool) -> int:
    source, stale = setup_cell_source(), []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        if first.cell_type == "code" and first.source == source and "remove-cell" in first.metadata.get("tags", []):
            continue
        stale.append(path.name)
        if not check:
            if first.cell_type == "code" and "remove-cell" in first.metadata.get("tags", []):
                first.source = source
            else:
                nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": ["remove-cell"]}))
            nbformat.write(nb, path)
    if stale:
        print(("stale set-up cell: " if check else "updated: ") + ", ".join(stale))
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
