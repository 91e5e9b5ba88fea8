"""Code that stands in two notebooks, or in a notebook and ``src/``: it belongs in ``helpers``.

Exports every notebook's code cells to plain Python in a temporary folder (the generated
set-up cell and the ``parameters`` cell are left out: they are alike in every chapter on
purpose), then looks for runs of six or more lines that appear in two places, at least one
of them a notebook. Lines are compared with white space folded; blank lines, comments and
import lines are passed over (as the ``duplicates`` tool does).

    python scripts/check_notebook_duplicates.py          # exit 1 and a report if any
    python scripts/check_notebook_duplicates.py --min-lines 8
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_TAGS = {"remove-cell", "parameters"}


def export_notebooks(notebooks: list[Path], folder: Path) -> list[Path]:
    """Write each notebook's code cells (minus set-up and parameters) to ``folder/<stem>.py``."""
    out = []
    for path in notebooks:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        code = [
            "".join(c.get("source", ""))
            for c in cells
            if c.get("cell_type") == "code" and not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))
        ]
        target = folder / f"{path.stem}.py"
        target.write_text("\n\n".join(code) + "\n", encoding="utf-8")
        out.append(target)
    return out


def _significant_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, folded text)`` of the lines that count."""
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = " ".join(line.split())
        if not text or text.startswith("#") or re.match(r"(import|from)\s", text):
            continue
        if re.fullmatch(r"[\[\](){},:]+", text):
            continue
        kept.append((number, text))
    return kept


def shared_blocks(files: dict[str, Path], min_lines: int = 6) -> list[tuple[str, int, str, int, int]]:
    """``(file a, line a, file b, line b, length)`` for runs shared by two files where at
    least one of them is a notebook export (its name starts with ``notebooks/``)."""
    lines = {name: _significant_lines(path) for name, path in files.items()}
    windows: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for name, rows in lines.items():
        for i in range(len(rows) - min_lines + 1):
            key = tuple(text for _, text in rows[i : i + min_lines])
            windows[key].append((name, i))
    found: dict[tuple[str, str], tuple[int, int, int]] = {}
    for places in windows.values():
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (fa, ia), (fb, ib) = places[a], places[b]
                if fa == fb or not (fa.startswith("notebooks/") or fb.startswith("notebooks/")):
                    continue
                pair = (fa, fb)
                if pair not in found:  # report the first shared run of each pair of files
                    found[pair] = (lines[fa][ia][0], lines[fb][ib][0], min_lines)
    return [(fa, la, fb, lb, n) for (fa, fb), (la, lb, n) in sorted(found.items())]


def check(root: Path = ROOT, min_lines: int = 6) -> list[str]:
    """One line per pair of places that share a block (empty when the book is clean)."""
    with tempfile.TemporaryDirectory(prefix="casebook-nb-export-") as tmp:
        exported = export_notebooks(sorted((root / "notebooks").glob("*.ipynb")), Path(tmp))
        files = {f"notebooks/{p.stem}.py": p for p in exported}
        for path in sorted((root / "src").rglob("*.py")):
            files[str(path.relative_to(root))] = path
        return [
            f"{fa}:{la} ~ {fb}:{lb} ({n}+ lines)" for fa, la, fb, lb, n in shared_blocks(files, min_lines)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-lines", type=int, default=6)
    args = parser.parse_args()
    rows = check(min_lines=args.min_lines)
    if rows:
        print("Code shared between notebooks, or a notebook and src/ (move it into helpers):")
        print("\n".join("  " + r for r in rows))
        return 1
    print("no code shared between notebooks, or between a notebook and src/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
