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
    headings: set[str] = field(default_factory=set)  # section ids of the chapter's headings

    def rows(self, role: str | None = None) -> list[dict]:
        rows = [row for card in self.cards for row in card["rows"]]
        return rows if role is None else [r for r in rows if r.get("role", "graded") == role]

    def status(self, row: dict) -> str:
        """A row's status for the page: graded rows of a stand-in build are never judged."""
        role = row.get("role", "graded")
        if role == "info":
            return "info"
        if role == "graded" and (self.stand_in or any(card["stand_in"] for card in self.cards)):
            return "n/a"
        return row["status"]

    def count(self, role: str, status: str) -> int:
        return sum(self.status(r) == status for r in self.rows(role))

    def failures(self) -> list[dict]:
        return [r for r in self.rows() if self.status(r) == "differs"]

    def link(self, row: dict, card: dict) -> str:
        """The row's section in the chapter when it names one that exists, else its card."""
        target = row.get("section_anchor")
        if not (target and target in self.headings):
            target = card["anchor"]
        return f"../notebooks/{self.name}.html#{target}"

    @property
    def verdict(self) -> str:
        if not self.cards:
            return "no scorecard"
        if self.failures():
            return "differs"
        if self.stand_in:
            return "structure only"
        if self.count("graded", "underpowered") or self.count("graded", "not run"):
            return "incomplete"
        return "reproduces"

    def to_dict(self) -> dict:
        graded = None if self.stand_in else {
            s: self.count("graded", s) for s in ("holds", "differs", "underpowered", "not run")}
        return {
            "chapter": self.name, "title": self.title, "verdict": self.verdict,
            "numbers_reproduced": None if self.stand_in else graded["holds"],
            "numbers_checked": None if self.stand_in else graded["holds"] + graded["differs"],
            "underpowered": None if self.stand_in else graded["underpowered"],
            "not_run": None if self.stand_in else graded["not run"],
            "graded_rows": len(self.rows("graded")),
            "structure_checks_passed": self.count("data", "holds"),
            "structure_checks": len(self.rows("data")) - self.count("data", "not run"),
            "for_comparison": len(self.rows("info")),
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


def notebook_headings(notebook: dict, data) -> set[str]:
    """The section ids Sphinx will give the notebook's Markdown headings."""
    ids = set()
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    ids.add(data.section_anchor(line.lstrip("#").strip()))
    return ids


def collect(executed: list[Path], weights: str) -> list[Chapter]:
    """Every chapter's scorecards, read from the executed notebooks (in book order).

    Refuses (ValueError) a scorecard with a graded row whose criterion accepts its own null:
    such a row cannot fail, and the page would count it as reproduced.
    """
    data = _scorecard_data()
    chapters = []
    for path in executed:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cards = data.extract(notebook)
        for card in cards:
            bad = [q for q in data.null_failures(card)
                   if next(r for r in card["rows"] if r["quantity"] == q).get("null") is not None]
            if bad:
                raise ValueError(f"{path.name}, scorecard {card['title']!r}: rows {bad} accept "
                                 "their own null value and cannot fail; fix their criteria.")
        chapters.append(Chapter(path.stem, notebook_title(notebook, path.stem), weights == "random",
                                cards, notebook_headings(notebook, data)))
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
    "incomplete": '<span class="casebook-status-na" style="color:#9a6700;font-weight:bold">incomplete (underpowered or not run)</span>',
    "structure only": '<span class="casebook-status-na" style="color:#6e7781;font-weight:bold">structure only (stand-in)</span>',
}
_ROW_STATUS = {"holds": "✓ holds", "differs": "✗ differs", "n/a": "n/a (stand-in)",
               "not run": "not run at this size", "underpowered": "underpowered",
               "info": "for comparison"}


def _value(row: dict) -> str:
    text = _fmt(row.get("measured"))
    if row.get("measured") is not None and row.get("se") is not None:
        text += f" ± {row['se']:.2g}"
    return text


def render_page(chapters: list[Chapter], weights: str, date: str) -> str:
    """The status page as MyST Markdown: one summary table, then every row, linked."""
    stand_in = weights == "random"
    lines = ["# Reproduction status", ""]
    if stand_in:
        lines += [
            "```{warning}",
            "This build used the **stand-in model** (GPT-2's architecture with random weights): the "
            "papers' numbers cannot be checked on it, so this page shows **structure checks only** "
            "(data, layers, shapes, circuit sizes). The published book is built with GPT-2's real "
            "weights.",
            "```",
            "",
        ]
    lines += [
        f"Built on {date} with {'the stand-in (random weights)' if stand_in else 'GPT-2’s real weights'}. "
        "Each chapter ends with a scorecard: every claim of its paper the chapter measures, checked "
        "the way the claim is made (within a band, at least / at most, a sign, a top-k membership, "
        "an ordering), with this build's value ± its standard error and a verdict. Only *graded* "
        "rows count as reproduced numbers; data checks are counted apart, and numbers from other "
        "models or secondary summaries are shown for comparison only. This page is generated from "
        f"the scorecards at every build; the same data are in the build's `{DATA}/` folder.",
        "",
        "| chapter | verdict | numbers reproduced | underpowered | not run at this size "
        "| data checks | for comparison | do not reproduce | scorecard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for chapter in chapters:
        d = chapter.to_dict()
        numbers_text = (f"not checked (stand-in): {d['graded_rows']} numbers" if stand_in
                        else f"{d['numbers_reproduced']} of {d['numbers_checked']}")
        failures = "; ".join(
            f"{r['quantity']} (paper {_fmt(r['paper'])}, this build {_value(r)}, "
            f"{r.get('criterion_text', '')})"
            for r in chapter.failures()
        ) or ("—" if chapter.cards else "the chapter shows no scorecard")
        links = ", ".join(
            f'<a href="../notebooks/{chapter.name}.html#{card["anchor"]}">{_cell(card["title"])}</a>'
            for card in chapter.cards
        ) or "—"
        lines.append(
            f"| [{_cell(chapter.title)}](../notebooks/{chapter.name}.ipynb) | {_BADGE[chapter.verdict]} | "
            f"{numbers_text} | {'—' if stand_in else d['underpowered']} | "
            f"{'—' if stand_in else d['not_run']} | "
            f"{d['structure_checks_passed']} of {d['structure_checks']} | {d['for_comparison']} | "
            f"{_cell(failures)} | {links} |"
        )
    lines += [
        "",
        "A number that does not reproduce stays in the book: its chapter's scorecard marks it "
        "✗ differs and it is listed above. *Underpowered*: the row's standard error is too "
        "large for its criterion, so it gets no verdict. *Not run at this size*: a small (smoke) "
        "build skips that experiment; neither counts as reproduced or as failed.",
        "",
        "## Every row",
        "",
    ]
    for chapter in chapters:
        if not chapter.cards:
            continue
        lines += [f"### {chapter.title}", "",
                  "| row | kind | verdict | this build | paper | criterion |", "|---|---|---|---|---|---|"]
        for card in chapter.cards:
            for row in card["rows"]:
                kind = {"graded": "graded", "data": "data check", "info": "for comparison"}[
                    row.get("role", "graded")]
                lines.append(
                    f'| <a href="{chapter.link(row, card)}">{_cell(row["quantity"])}</a> | {kind} | '
                    f"{_ROW_STATUS.get(chapter.status(row), chapter.status(row))} | "
                    f"{_cell(_value(row))} | {_fmt(row.get('paper'))} | "
                    f"{_cell(row.get('criterion_text', ''))} |")
        lines.append("")
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
    bad = [c["chapter"] for c in summary["chapters"]
           if c["verdict"] in ("differs", "no scorecard", "incomplete")]
    if args.fail_on_differ and bad:
        print(f"reproduction fails in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
