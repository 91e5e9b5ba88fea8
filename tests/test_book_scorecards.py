"""Every chapter's scorecard in the smoke build: kinds, nulls, and the status page built from them.

Reads the session's smoke build (``smoke_book`` in conftest.py, shared with test_book.py).
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "src"))
from helpers import scorecard_data  # noqa: E402


def _cards(out: Path, stem: str) -> list[dict]:
    executed = json.loads((out / "stage" / "notebooks" / f"{stem}.ipynb").read_text())
    return scorecard_data.extract(executed)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_graded_row_fails_at_its_null(smoke_book, path):
    """The chapter's scorecard measured at each row's null (no effect) gives ✗ on every graded
    row: each declares a null, and its criterion rejects it."""
    out, _ = smoke_book
    cards = _cards(out, path.stem)
    assert cards, f"{path.stem} shows no scorecard"
    graded = [r for c in cards for r in c["rows"] if r["role"] == "graded"]
    assert graded, f"{path.stem}: a scorecard with no graded row reproduces nothing"
    for card in cards:
        assert scorecard_data.null_failures(card) == [], card["title"]
        for row in card["rows"]:
            if row["role"] == "graded":
                at_null = dict(row, measured=row["null"], se=None)
                assert scorecard_data.judge(at_null) == "✗ differs", row["quantity"]
            if row["role"] == "info":
                assert row["note"], f"{row['quantity']}: a comparison row shows its note"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_stand_in_build_passes_no_graded_row_and_fails_no_data_check(smoke_book, path):
    out, _ = smoke_book
    for card in _cards(out, path.stem):
        assert card["stand_in"]
        for row in card["rows"]:
            assert row["verdict"] == scorecard_data.judge(row, stand_in=True)
            if row["role"] == "graded":
                assert row["status"] == "n/a", row["quantity"]
            if row["role"] == "data":
                assert row["status"] in ("holds", "not run"), (row["quantity"], row["measured"])


def test_status_page_is_generated_from_the_executed_scorecards(smoke_book):
    """The reproduction-status page: one row per chapter, built from the executed notebooks."""
    out, stdout = smoke_book
    assert "executed: " in stdout and "reused from the cache: none" in stdout  # a cold cache
    page = (out / "html" / "book" / "status.html").read_text(encoding="utf-8")
    index = (out / "html" / "book" / "intro.html").read_text(encoding="utf-8")
    assert "status.html" in index  # in the table of contents
    assert "Reproduction status" in page and "structure checks only" in page
    assert "casebook-status-pass" not in page and "✓ reproduces" not in page  # stand-in build
    assert "casebook-status-fail" not in page  # no chapter fails a data check on the stand-in
    summary = json.loads((out / "scorecards" / "summary.json").read_text())
    assert summary["weights"] == "random"
    toc = (ROOT / "_toc.yml").read_text()
    order = sorted(NOTEBOOKS, key=lambda p: toc.index(f"notebooks/{p.stem}"))
    assert [c["chapter"] for c in summary["chapters"]] == [p.stem for p in order]
    for chapter in summary["chapters"]:
        cards = _cards(out, chapter["chapter"])
        assert chapter["scorecards"] == [c["title"] for c in cards]
        data_rows = [r for c in cards for r in c["rows"]
                     if r["role"] == "data" and r["measured"] is not None]
        assert chapter["structure_checks"] == len(data_rows)
        assert chapter["numbers_reproduced"] is None and chapter["verdict"] == "structure only"
        data = json.loads((out / "scorecards" / f"{chapter['chapter']}.json").read_text())
        assert [c["title"] for c in data["scorecards"]] == chapter["scorecards"]
        chapter_page = (out / "html" / "notebooks" / f"{chapter['chapter']}.html").read_text(
            encoding="utf-8")
        for card in cards:
            assert f'id="{card["anchor"]}"' in chapter_page  # the link target exists
            assert f'../notebooks/{chapter["chapter"]}.html#{card["anchor"]}' in page
            for row in card["rows"]:  # a row's section link, when it names one, resolves
                if row.get("section_anchor") and f"#{row['section_anchor']}\"" in page:
                    assert f'id="{row["section_anchor"]}"' in chapter_page, row["quantity"]
