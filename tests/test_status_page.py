"""The reproduction-status page and the scorecard data it is built from (no kernels, no model).

The notebooks here are executed notebooks in miniature: a code cell whose output is what a
displayed ``Scorecard`` puts in a notebook (its ``_repr_html_``). The end-to-end check, on
the real chapters, is in ``tests/test_book.py``.
"""

import json
import math
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import Reference, Scorecard
from helpers import scorecard_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import status_page  # noqa: E402


def _card(stand_in: bool, *, logit_diff: float = 3.5, title: str = "Test chapter (Someone 2024)") -> Scorecard:
    card = Scorecard(title, stand_in=stand_in)
    card.data_check("layers", Reference(12, "paper, Table 1"), 12)
    card.band("logit difference", Reference(3.56, "paper, §3"), logit_diff, 0.5, null=0,
              section="A chapter")
    card.at_least("accuracy", Reference(0.99, "paper, §3"), 0.98, 0.95, null=0.5)
    return card


def _executed(tmp_path: Path, name: str, *cards: Scorecard, heading: str = "A chapter") -> Path:
    cells = [nbformat.v4.new_markdown_cell(f"# {heading}\n\nText.")]
    for card in cards:
        cell = nbformat.v4.new_code_cell("card")
        cell.outputs = [nbformat.v4.new_output("execute_result", {"text/html": card._repr_html_(),
                                                                   "text/plain": repr(card)}, execution_count=1)]
        cells.append(cell)
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_record_round_trips_through_the_html():
    card = _card(stand_in=False)
    card.band("unmeasured", Reference(1.0, "paper"), float("nan"), 0.1, null=0)
    card.band("a </script> in a name", Reference(1.0, "paper"), 1.0, 0, null=0)
    html = card._repr_html_()
    assert f'id="{scorecard_data.anchor(card.title)}"' in html
    [record] = scorecard_data.extract({"cells": [{"cell_type": "code", "outputs": [{"data": {"text/html": html}}]}]})
    assert record["title"] == card.title and record["weights"] == "pretrained" and record["date"]
    statuses = {r["quantity"]: r["status"] for r in record["rows"]}
    assert statuses == {"layers": "holds", "logit difference": "holds", "accuracy": "holds",
                        "unmeasured": "not run", "a </script> in a name": "holds"}
    row = record["rows"][1]
    assert (row["paper"], row["measured"], row["criterion"]["tol"], row["source"]) == (3.56, 3.5, 0.5, "paper, §3")
    assert row["null"] == 0 and row["role"] == "graded" and row["criterion_text"] == "within ±0.5 of 3.56"
    assert record["rows"][3]["measured"] is None  # NaN is not JSON: null
    assert not any(isinstance(v, float) and math.isnan(v) for r in record["rows"] for v in r.values())


def test_a_card_shown_twice_counts_once():
    html = _card(stand_in=False)._repr_html_()
    cell = {"cell_type": "code", "outputs": [{"data": {"text/html": html}}]}
    assert len(scorecard_data.extract({"cells": [cell, cell]})) == 1


def test_page_is_generated_from_the_executed_notebooks(tmp_path):
    good = _executed(tmp_path, "01_good", _card(stand_in=False), heading="Good chapter")
    bad = _executed(tmp_path, "02_bad", _card(stand_in=False, logit_diff=1.0, title="Bad chapter card"),
                    heading="Bad chapter")
    empty = _executed(tmp_path, "03_empty", heading="Chapter without a scorecard")
    out, stage = tmp_path / "build", tmp_path / "stage"
    chapters = status_page.write_status([good, bad, empty], "pretrained", out, stage)
    assert [c.verdict for c in chapters] == ["reproduces", "differs", "no scorecard"]

    page = (stage / "book" / "status.md").read_text()
    assert page == (out / "scorecards" / "status.md").read_text()
    lines = {line.split("](")[0].strip("| ["): line for line in page.splitlines() if line.startswith("| [")}
    assert set(lines) == {"Good chapter", "Bad chapter", "Chapter without a scorecard"}
    assert "✓ reproduces" in lines["Good chapter"] and "2 of 2" in lines["Good chapter"]
    # A failing verdict shows as failing, with the number that does not reproduce.
    assert "✗ differs" in lines["Bad chapter"] and "✓" not in lines["Bad chapter"]
    assert "1 of 2" in lines["Bad chapter"] and "logit difference (paper 3.56, this build 1" in lines["Bad chapter"]
    assert 'href="../notebooks/02_bad.html#scorecard-bad-chapter-card"' in lines["Bad chapter"]
    assert "no scorecard" in lines["Chapter without a scorecard"]
    assert "stand-in" not in page.lower()

    summary = json.loads((out / "scorecards" / "summary.json").read_text())
    assert [c["verdict"] for c in summary["chapters"]] == ["reproduces", "differs", "no scorecard"]
    assert summary["chapters"][1]["do_not_reproduce"] == ["logit difference"]
    data = json.loads((out / "scorecards" / "02_bad.json").read_text())
    assert data["chapter"] == "02_bad" and data["weights"] == "pretrained"
    row = data["scorecards"][0]["rows"][1]
    assert {"quantity", "paper", "source", "measured", "criterion", "null", "se", "verdict", "status"} <= set(row)
    assert row["status"] == "differs" and data["scorecards"][0]["date"]

    assert status_page.main([str(out)]) == 0
    assert status_page.main([str(out), "--fail-on-differ"]) == 1
    assert status_page.main([str(out), "--require-weights", "random"]) == 2


@pytest.mark.parametrize("card_says_stand_in", [True, False])
def test_a_stand_in_build_never_shows_a_numerical_verdict_as_passed(tmp_path, card_says_stand_in):
    # Numbers that would hold on real weights; the second case is a card that wrongly claims
    # real weights inside a stand-in build: the page still does not count its numbers.
    path = _executed(tmp_path, "01_chapter", _card(stand_in=card_says_stand_in), heading="Chapter")
    out, stage = tmp_path / "build", tmp_path / "stage"
    [chapter] = status_page.write_status([path], "random", out, stage)
    page = (stage / "book" / "status.md").read_text()
    [line] = [line for line in page.splitlines() if line.startswith("| [Chapter]")]
    assert "stand-in" in page and "structure checks only" in page
    assert "not checked (stand-in)" in line and "1 of 1" in line  # only `layers` is checked
    assert "reproduces" not in line and "✓" not in line
    assert chapter.verdict == "structure only"
    summary = json.loads((out / "scorecards" / "summary.json").read_text())["chapters"][0]
    assert summary["numbers_reproduced"] is None and summary["verdict"] == "structure only"
    assert status_page.main([str(out), "--require-weights", "pretrained"]) == 2


def test_a_broken_structure_check_fails_a_stand_in_build_too(tmp_path):
    card = Scorecard("Wrong shape", stand_in=True)
    card.data_check("layers", Reference(12, "paper"), 6)
    path = _executed(tmp_path, "01_chapter", card, heading="Chapter")
    [chapter] = status_page.write_status([path], "random", tmp_path / "build", None)
    assert chapter.verdict == "differs"
    assert "✗ differs" in status_page.render_page([chapter], "random", "today")


def test_the_status_page_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    assert f"file: {status_page.PAGE.removesuffix('.md')}" in toc
    assert (ROOT / status_page.PAGE).exists()  # the placeholder the build replaces


def test_rows_are_listed_and_linked_to_their_section(tmp_path):
    good = _executed(tmp_path, "01_good", _card(stand_in=False), heading="A chapter")
    [chapter] = status_page.write_status([good], "pretrained", tmp_path / "build", None)
    page = status_page.render_page([chapter], "pretrained", "today")
    # The row naming an existing section links there; the others link to the scorecard.
    assert '<a href="../notebooks/01_good.html#a-chapter">logit difference</a>' in page
    assert '<a href="../notebooks/01_good.html#scorecard-test-chapter-someone-2024">accuracy</a>' in page


def test_underpowered_not_run_and_info_rows_are_not_failures(tmp_path):
    card = Scorecard("Chapter card", stand_in=False)
    card.band("ld", Reference(3.56, "p"), 3.5, 0.5, null=0, se=0.4)          # underpowered
    card.at_least("medium", Reference(0.9, "p"), None, 0.8, null=0)         # not run
    card.info("Pythia", Reference(0.7, "p"), 0.1, note="another model")
    card.at_least("acc", Reference(0.99, "p"), 0.98, 0.95, null=0.5)
    path = _executed(tmp_path, "01_chapter", card, heading="Chapter")
    [chapter] = status_page.write_status([path], "pretrained", tmp_path / "build", None)
    d = chapter.to_dict()
    assert chapter.verdict == "incomplete" and not chapter.failures()
    assert (d["numbers_reproduced"], d["numbers_checked"], d["underpowered"], d["not_run"],
            d["for_comparison"]) == (1, 1, 1, 1, 1)
    page = status_page.render_page([chapter], "pretrained", "today")
    assert "underpowered" in page and "not run at this size" in page and "for comparison" in page


def test_a_record_whose_row_accepts_its_null_stops_the_build(tmp_path):
    card = _card(stand_in=False)
    card.rows[1].null = 3.5  # tampered: the band around 3.56 accepts it
    path = _executed(tmp_path, "01_chapter", card, heading="Chapter")
    with pytest.raises(ValueError, match="logit difference"):
        status_page.write_status([path], "pretrained", tmp_path / "build", None)
