"""No code is copied between notebooks, or from src/ into a notebook (it belongs in helpers)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from check_notebook_duplicates import check, export_notebooks, shared_blocks  # noqa: E402

BLOCK = "\n".join(f"value_{i} = compute(value_{i - 1}, {i})" for i in range(1, 8))


def _notebook(path: Path, *sources: str, tags=()) -> Path:
    cells = [{"cell_type": "code", "metadata": {"tags": list(tags)}, "source": s, "outputs": [],
              "execution_count": None} for s in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_the_books_notebooks_share_no_code():
    rows = check(ROOT)
    assert not rows, "Code shared between notebooks or with src/:\n" + "\n".join(rows)


def test_a_block_copied_into_two_notebooks_is_found(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "src").mkdir()
    _notebook(tmp_path / "notebooks" / "01_a.ipynb", "x = 1", BLOCK)
    _notebook(tmp_path / "notebooks" / "02_b.ipynb", "# another chapter\n" + BLOCK + "\nprint(value_7)")
    rows = check(tmp_path)
    assert len(rows) == 1 and "notebooks/01_a.py" in rows[0] and "notebooks/02_b.py" in rows[0]


def test_a_block_copied_from_src_is_found_and_short_or_skipped_cells_are_not(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.py").write_text("def f():\n" + "\n".join("    " + l for l in BLOCK.splitlines()) + "\n")
    _notebook(tmp_path / "notebooks" / "01_a.ipynb", BLOCK)
    assert check(tmp_path) == [f"notebooks/01_a.py:1 ~ src/lib.py:2 (6+ lines)"]
    # five shared lines are not a block; parameters and set-up cells are left out
    five = "\n".join(BLOCK.splitlines()[:5])
    _notebook(tmp_path / "notebooks" / "01_a.ipynb", five)
    _notebook(tmp_path / "notebooks" / "02_b.ipynb", BLOCK, tags=["parameters"])
    assert check(tmp_path) == []


def test_export_skips_setup_and_parameter_cells(tmp_path):
    nb = _notebook(tmp_path / "x.ipynb", "setup()", tags=["remove-cell"])
    (out,) = export_notebooks([nb], tmp_path)
    assert "setup" not in out.read_text()
    assert shared_blocks({"notebooks/x.py": out}) == []
