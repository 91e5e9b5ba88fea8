"""The reproduction-status page: one table for the whole book, from the chapters' scorecards.

The book build calls :func:`write_status` after executing the chapters. It reads each
executed notebook's scorecards (the JSON every displayed ``Scorecard`` carries, see
``helpers/scorecard_data.py``), writes them as data to ``<build>/scorecards/`` (one file per
chapter plus ``summary.json``), and writes the page ``book/status.md`` into the staged book,
replacing the placeholder stored in the repository.

On a stand-in build (random weights) the page says so and shows structure checks only: a
behavioural row never counts as reproduced, whatever its record says.

From the command line, on a finished build (standard library only, for CI):

    python scripts/status_page.py _build                     # print the summary (Markdown)
    python scripts/status_page.py _build --require-weights pretrained --fail-on-differ
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = "book/status.md"  # the page's place in the book (listed in _toc.yml)
DATA = "scorecards"  # folder of the build output holding the records


def _scorecard_data():
    """helpers/scorecard_data.py, loaded by path (stdlib only; no torch in the build process)."""
    spec = importlib.util.spec_from_file_location("casebook_scorecard_data", ROOT / "src" / "helpers" / "scorecard_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Chapter:
    """One chapter's scorecards, judged for the status table."""

    name: str  # notebook stem, e.g. 01_ioi
    title: str
    stand_in: bool  # the build's weights were the stand-in
    cards: list[dict] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [row for card in self.cards for row in card["rows"]]

    def status(self, row: dict) -> str:
        """A row's verdict for the page: behavioural rows of a stand-in build never pass."""
        if not row["structural"] and (self.stand_in or any(card["stand_in"] for card in self.cards)):
            return "n/a"
        return row["status"]

    def tally(self, structural: bool) -> tuple[int, int]:
        """(rows that hold, rows that apply) among structural or behavioural rows."""
        judged = [self.status(r) for r in self.rows() if r["structural"] == structural]
        applicable = [s for s in judged if s != "n/a"]
        return sum(s == "holds" for s in applicable), len(applicable)

    def failures(self) -> list[dict]:
        return [r for r in self.rows() if self.status(r) in ("differs", "not measured")]

    @property
    def verdict(self) -> str:
        if not self.cards:
            return "no scorecard"
        if self.failures():
            return "differs"
        return "structure only" if self.stand_in else "reproduces"

    def to_dict(self) -> dict:
        numbers, structure = self.tally(False), self.tally(True)
        return {
            "chapter": self.name, "title": self.title, "verdict": self.verdict,
            "numbers_reproduced": None if self.stand_in else numbers[0],
            "numbers_checked": None if self.stand_in else numbers[1],
            "structure_checks_passed": structure[0], "structure_checks": structure[1],
            "do_not_reproduce": [r["quantity"] for r in self.failures()],
            "scorecards": [c["title"] for c in self.cards],
        }


def notebook_title(notebook: dict, fallback: str) -> str:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def collect(executed: list[Path], weights: str) -> list[Chapter]:
    """Every chapter's scorecards, read from the executed notebooks (in book order)."""
    data = _scorecard_data()
    chapters = []
    for path in executed:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        chapters.append(Chapter(path.stem, notebook_title(notebook, path.stem), weights == "random",
                                data.extract(notebook)))
    return chapters


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


_BADGE = {
    "reproduces": '<span class="casebook-status-pass" style="color:#1a7f37;font-weight:bold">✓ reproduces</span>',
    "differs": '<span class="casebook-status-fail" style="color:#cf222e;font-weight:bold">✗ differs</span>',
    "no scorecard": '<span class="casebook-status-fail" style="color:#9a6700;font-weight:bold">no scorecard</span>',
    "structure only": '<span class="casebook-status-na" style="color:#6e7781;font-weight:bold">structure only (stand-in)</span>',
}


def render_page(chapters: list[Chapter], weights: str, date: str) -> str:
    """The status page as MyST Markdown (one table; links to each chapter's scorecard)."""
    stand_in = weights == "random"
    lines = ["# Reproduction status", ""]
    if stand_in:
        lines += [
            "```{warning}",
            "This build used the **stand-in model** (GPT-2's architecture with random weights): the "
            "papers' numbers cannot be checked on it, so this page shows **structure checks only** "
            "(layers, shapes, circuit sizes). The published book is built with GPT-2's real weights.",
            "```",
            "",
        ]
    lines += [
        f"Built on {date} with {'the stand-in (random weights)' if stand_in else 'GPT-2’s real weights'}. "
        "Each chapter ends with a scorecard: every number of its paper the chapter measures, the "
        "paper's value and source, this build's value, a tolerance and a verdict. This page is "
        "generated from those scorecards at every build; the same data are in the build's "
        f"`{DATA}/` folder (one JSON file per chapter).",
        "",
        "| chapter | verdict | numbers reproduced | structure checks | do not reproduce | scorecard |",
        "|---|---|---|---|---|---|",
    ]
    for chapter in chapters:
        numbers, structure = chapter.tally(False), chapter.tally(True)
        behavioural = sum(not r["structural"] for r in chapter.rows())
        numbers_text = (f"not checked (stand-in): {behavioural} numbers" if stand_in
                        else f"{numbers[0]} of {numbers[1]}")
        structure_text = f"{structure[0]} of {structure[1]}"
        failures = "; ".join(
            f"{r['quantity']} (paper {_fmt(r['paper'])}, this build {_fmt(r['measured'])}, "
            f"{r['tolerance_text']})"
            for r in chapter.failures()
        ) or ("—" if chapter.cards else "the chapter shows no scorecard")
        links = ", ".join(
            f'<a href="../notebooks/{chapter.name}.html#{card["anchor"]}">{_cell(card["title"])}</a>'
            for card in chapter.cards
        ) or "—"
        lines.append(
            f"| [{_cell(chapter.title)}](../notebooks/{chapter.name}.ipynb) | {_BADGE[chapter.verdict]} | "
            f"{numbers_text} | {structure_text} | {_cell(failures)} | {links} |"
        )
    lines += [
        "",
        "A number that does not reproduce stays in the book: its chapter's scorecard marks it "
        "✗ differs (paper value, this build's value, tolerance) and it is listed above. "
        "\"Not measured\" means the chapter could not compute it and counts as not reproduced.",
        "",
    ]
    return "\n".join(lines)


def write_status(executed: list[Path], weights: str, out: Path, stage: Path | None) -> list[Chapter]:
    """Collect the scorecards, write them as data under ``out/scorecards``, stage the page."""
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    chapters = collect(executed, weights)
    folder = out / DATA
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for chapter in chapters:
        cards = [dict(card, chapter=chapter.name, build_weights=weights) for card in chapter.cards]
        (folder / f"{chapter.name}.json").write_text(json.dumps(
            {"chapter": chapter.name, "title": chapter.title, "weights": weights, "date": date,
             "scorecards": cards}, indent=2, ensure_ascii=False))
    summary = {"weights": weights, "date": date, "chapters": [c.to_dict() for c in chapters]}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    page = render_page(chapters, weights, date)
    (folder / "status.md").write_text(page)
    if stage is not None:
        (stage / PAGE).parent.mkdir(parents=True, exist_ok=True)
        (stage / PAGE).write_text(page)
    return chapters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise a finished build's reproduction status.")
    parser.add_argument("build", type=Path, nargs="?", default=ROOT / "_build", help="the build folder (_build)")
    parser.add_argument("--require-weights", choices=["pretrained", "random"],
                        help="exit 2 if the build used other weights (CI: a real-weights build must not fall back)")
    parser.add_argument("--fail-on-differ", action="store_true",
                        help="exit 1 if any chapter's numbers do not reproduce or it has no scorecard")
    args = parser.parse_args(argv)
    folder = args.build / DATA
    if not (folder / "summary.json").exists():
        print(f"no {DATA}/summary.json in {args.build}: build the book first", file=sys.stderr)
        return 2
    summary = json.loads((folder / "summary.json").read_text())
    print((folder / "status.md").read_text())
    if args.require_weights and summary["weights"] != args.require_weights:
        print(f"this build used weights={summary['weights']!r}, not {args.require_weights!r}", file=sys.stderr)
        return 2
    bad = [c["chapter"] for c in summary["chapters"] if c["verdict"] in ("differs", "no scorecard")]
    if args.fail_on_differ and bad:
        print(f"reproduction fails in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
