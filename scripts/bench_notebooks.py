"""Benchmark: how long each chapter takes on the stand-in, against its runtime targets.

The stand-in has GPT-2's exact architecture, so its runtime is the real model's. Each
notebook's metadata carries two targets (``casebook.runtime_budget_seconds`` for the smoke
parameters, ``casebook.full_runtime_budget_seconds`` for its defaults); this script runs the
notebooks with papermill, exactly as the book build does (``scripts/build_book.py``), and
prints, per notebook and size, the wall time, the target, a verdict and the slowest cells.

    .venv/bin/python scripts/bench_notebooks.py                 # smoke size, every chapter
    .venv/bin/python scripts/bench_notebooks.py --full          # smoke and default size
    .venv/bin/python scripts/bench_notebooks.py --only 01_ioi --full
    .venv/bin/python scripts/bench_notebooks.py --report _build/timings.json   # no run

Run it on an idle machine: a second CPU job on a 2-core machine doubles every figure.
``--report FILE`` runs nothing: it prints a finished build's ``timings.json`` against the
targets and always exits 0 (``.ci/run`` prints the test suite's smoke build this way: the
targets are reported, never asserted; ``make test`` fails only on a runaway, 10x a target).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_book  # noqa: E402  (same directory)


def slowest_cells(path: Path, k: int = 4) -> list[tuple[float, str]]:
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        seconds = cell.metadata.get("papermill", {}).get("duration")
        if cell.cell_type == "code" and seconds:
            first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
            cells.append((seconds, first.strip()[:70]))
    return sorted(cells, reverse=True)[:k]


def targets(path: Path) -> dict[str, int]:
    meta = nbformat.read(path, as_version=4).metadata.get("casebook", {})
    return {"smoke": meta.get("runtime_budget_seconds", 60), "default": meta.get("full_runtime_budget_seconds", 600)}


def print_summary(rows: list[tuple[str, str, float, int]], title: str) -> None:
    print(f"\n{title}")
    width = max([len("notebook")] + [len(stem) for stem, *_ in rows]) + 2
    print(f"{'notebook':<{width}}{'size':<9}{'seconds':>9}{'target':>8}  verdict")
    for stem, size, seconds, target in rows:
        verdict = "MET" if seconds <= target else "NOT MET"
        print(f"{stem:<{width}}{size:<9}{seconds:>9.1f}{target:>8}  {verdict}")


def report(timings_file: Path) -> int:
    """Print a finished build's chapter times against their targets; never fails."""
    import json

    if not timings_file.exists():
        print(f"no timings at {timings_file}: nothing to report (did the smoke build run?)")
        return 0
    data = json.loads(timings_file.read_text())
    size = "smoke" if data.get("smoke") else "default"
    rows = []
    for path in build_book.toc_notebooks():
        timing = data["notebooks"].get(path.stem)
        if timing and not timing.get("cached"):
            rows.append((path.stem, size, timing["seconds"], targets(path)[size]))
    harness = ", under the device harness" if data.get("device_harness") else ""
    print_summary(rows, f"RUNTIME vs TARGETS ({timings_file.name}: {data.get('weights')} weights{harness}; "
                        f"reported, not asserted: this machine may be busy)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run each notebook at its default size")
    parser.add_argument("--only", nargs="*", help="notebook names (e.g. 01_ioi)")
    parser.add_argument("--report", type=Path, help="print a build's timings.json against the targets; run nothing")
    args = parser.parse_args(argv)
    if args.report:
        return report(args.report)
    os.environ["CASEBOOK_BUILD"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    notebooks = build_book.toc_notebooks()
    if args.only:
        notebooks = [p for p in notebooks if p.stem in set(args.only)]
    sizes = ["smoke", "default"] if args.full else ["smoke"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="casebook-bench-") as tmp:
        for path in notebooks:
            meta = nbformat.read(path, as_version=4).metadata.get("casebook", {})
            for size in sizes:
                parameters = {"weights": "random"}
                if size == "smoke":
                    parameters.update(meta.get("smoke_parameters", {}))
                    target = meta.get("runtime_budget_seconds", 60)
                else:
                    target = meta.get("full_runtime_budget_seconds", 600)
                out = Path(tmp) / f"{path.stem}-{size}.ipynb"
                print(f"running {path.stem} at {size} size {parameters} ...", flush=True)
                seconds = build_book.execute(path, out, parameters, timeout=3600)
                rows.append((path.stem, size, seconds, target))
                print(f"  {seconds:.1f} s (target {target} s); slowest cells:")
                for cell_seconds, first in slowest_cells(out):
                    print(f"    {cell_seconds:7.1f} s  {first}")
    print_summary(rows, "SUMMARY (each chapter on its model's stand-in, CPU)")
    return 0 if all(seconds <= target for *_, seconds, target in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
