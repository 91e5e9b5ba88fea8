"""The scorecard's kinds of check, the null rule, standard errors and the three tables."""

import numpy as np
import pytest

from helpers import Reference, Scorecard
from helpers import scorecard_data
from helpers.scorecard import (DIFFERS, FOR_COMPARISON, HOLDS, NOT_APPLICABLE, NOT_RUN,
                               UNDERPOWERED, bootstrap_se)

REF = Reference(0.5, "paper, §1")
HEADS = [f"{layer}.{head}" for layer in range(12) for head in range(12)]


def _verdict(card):
    return card.verdicts()[-1]


@pytest.mark.parametrize("measured, expected", [(0.96, HOLDS), (0.95, HOLDS), (0.90, DIFFERS)])
def test_at_least_is_one_sided(measured, expected):
    card = Scorecard("t", stand_in=False).at_least("copy score", REF, measured, 0.95, null=0)
    assert _verdict(card) == expected


def test_at_most_and_relative_band():
    card = Scorecard("t", stand_in=False)
    card.at_most("gap", REF, 0.1, 0.2, null=0.5).at_most("gap", REF, 0.3, 0.2, null=0.5)
    card.band("ld", Reference(3.5, "p"), 3.8, 0.1, relative=True, null=0)
    card.band("ld", Reference(3.5, "p"), 3.0, 0.1, relative=True, null=0)
    assert card.verdicts() == [HOLDS, DIFFERS, HOLDS, DIFFERS]


@pytest.mark.parametrize("kind, build", [
    ("band", lambda c: c.band("swap", Reference(0.14, "p"), 0.2, 0.1, null=0.2)),
    ("at_least", lambda c: c.at_least("acc", REF, 0.9, 0.2, null=0.25)),
    ("at_most", lambda c: c.at_most("acc", REF, 0.1, 0.3, null=0.25)),
    ("sign", lambda c: c.sign("effect", REF, -1.0, -1, null=-0.5)),
])
def test_a_row_that_accepts_its_null_is_refused_with_its_name(kind, build):
    with pytest.raises(ValueError, match="cannot fail") as err:
        build(Scorecard("t", stand_in=False))
    assert "'" in str(err.value) and kind  # names the row


def test_a_graded_row_must_declare_its_null():
    with pytest.raises(ValueError, match="declares no null"):
        Scorecard("t", stand_in=False).band("x", REF, 0.5, 0.1, null=None)


def test_sign_needs_two_standard_errors_else_underpowered():
    card = Scorecard("t", stand_in=False)
    card.sign("a", REF, -0.3, -1, se=0.1)   # 3 SE below 0
    card.sign("b", REF, -0.1, -1, se=0.1)   # right sign, within 2 SE
    card.sign("c", REF, 0.05, -1, se=0.1)   # wrong sign
    card.sign("d", REF, -0.1, -1)           # no SE: the point rule
    assert card.verdicts() == [HOLDS, UNDERPOWERED, DIFFERS, HOLDS]


def test_values_give_mean_and_standard_error_and_underpowered_bands():
    rng = np.random.default_rng(0)
    values = rng.normal(0.5, 0.2, 400)
    card = Scorecard("t", stand_in=False).band("acc", REF, None, 0.05, null=0, values=values)
    row = card.rows[0]
    assert row.n == 400 and row.measured == pytest.approx(values.mean())
    assert row.se == pytest.approx(values.std(ddof=1) / 20)
    assert _verdict(card) == HOLDS
    few = Scorecard("t", stand_in=False).band("acc", REF, None, 0.05, null=0, values=values[:9])
    assert few.rows[0].se > 0.025 and _verdict(few) == UNDERPOWERED


def test_one_sided_power_is_measured_against_the_null():
    card = Scorecard("t", stand_in=False)
    card.at_least("acc", REF, 0.8, 0.6, null=0.25, se=0.1)    # margin 0.35 > 2 × 0.1
    card.at_least("acc", REF, 0.8, 0.3, null=0.25, se=0.1)    # margin 0.05 < 2 × 0.1
    assert card.verdicts() == [HOLDS, UNDERPOWERED]


def test_top_k_counts_members_and_computes_a_random_null():
    card = Scorecard("t", stand_in=False)
    ranking = ["9.1"] + [h for h in HEADS if h != "9.1"]
    card.top_k("9.1 is the top head", Reference(1, "p"), ranking, ["9.1"], k=1)
    card.top_k("movers in top 8", Reference(3, "p"), HEADS, ["9.9", "9.6", "0.1"], k=8)
    card.top_k("2 of 3 movers in top 8", Reference(3, "p"), HEADS, ["9.9", "0.3", "0.1"], k=8,
               need=2)
    assert card.verdicts() == [HOLDS, DIFFERS, HOLDS]
    assert card.rows[0].null == pytest.approx(1 / 144)
    assert card.rows[1].null == pytest.approx(3 * 8 / 144) and card.rows[1].measured == 1
    with pytest.raises(ValueError, match="not in the ranking"):
        card.top_k("x", REF, HEADS, ["12.0"], k=1)
    with pytest.raises(ValueError, match="k=200"):
        card.top_k("x", REF, HEADS, ["1.0"], k=200)


def test_overlap_recall_and_jaccard_with_random_null():
    card = Scorecard("t", stand_in=False)
    card.overlap("recall", REF, {"a", "b", "x"}, {"a", "b", "c"}, universe=144, at_least=0.5)
    card.overlap("jaccard", REF, {"a", "b", "x"}, {"a", "b", "c"}, universe=144,
                 at_least=0.6, metric="jaccard")
    assert card.rows[0].measured == pytest.approx(2 / 3) and card.rows[1].measured == 0.5
    assert card.verdicts() == [HOLDS, DIFFERS]
    assert card.rows[0].null == pytest.approx(3 / 144)


def test_ordering_combines_standard_errors():
    card = Scorecard("t", stand_in=False)
    card.ordering("CO > capitals", REF, greater=("CO", 0.5, 0.03), lesser=("cap", 0.2, 0.04))
    card.ordering("CO > capitals", REF, greater=("CO", 0.5, 0.1), lesser=("cap", 0.45, 0.1))
    card.ordering("CO > capitals", REF, greater=("CO", 0.2, None), lesser=("cap", 0.45, None))
    assert card.rows[0].se == pytest.approx(0.05) and card.rows[0].measured == pytest.approx(0.3)
    assert card.verdicts() == [HOLDS, UNDERPOWERED, DIFFERS]
    assert card.rows[0].criterion_text() == "CO > cap"


def test_stand_in_data_checks_info_and_not_run():
    card = Scorecard("t", stand_in=True)
    card.band("ld", REF, 0.5, 0.1, null=0)
    card.data_check("layers", Reference(12, "arch"), 12)
    card.data_check("heads", Reference(144, "arch"), 143)
    card.info("Pythia coverage", REF, 0.4, note="Pythia-1.4B, not GPT-2")
    card.at_least("medium screen", REF, None, 0.4, null=0)
    assert card.verdicts() == [NOT_APPLICABLE, HOLDS, DIFFERS, FOR_COMPARISON, NOT_APPLICABLE]
    real = Scorecard("t", stand_in=False).at_least("x", REF, None, 0.4, null=0)
    assert real.verdicts() == [NOT_RUN] and real.all_hold
    with pytest.raises(ValueError, match="needs a note"):
        card.info("x", Reference(1, "p"), 1.0)


def test_null_run_fails_every_graded_row_and_keeps_the_others():
    card = Scorecard("t", stand_in=True)
    card.band("ld", Reference(3.5, "p"), 3.4, 0.5, null=0, se=0.01)
    card.at_least("copy", REF, 0.97, 0.95, null=0)
    card.at_most("gap", REF, 0.05, 0.2, null=1)
    card.sign("9.9", REF, -0.2, -1)
    card.top_k("9.1", REF, HEADS, ["0.0"], k=1)
    card.ordering("a > b", REF, greater=("a", 1, 0.1), lesser=("b", 0, 0.1))
    card.overlap("ov", REF, {"0.0"}, {"0.0"}, universe=144, at_least=0.5)
    card.data_check("layers", Reference(12, "arch"), 12)
    card.info("other", REF, 1.0, note="another model")
    nulls = card.null_run()
    assert nulls.verdicts() == [DIFFERS] * 7 + [HOLDS, FOR_COMPARISON]
    assert card.verdicts()[0] == NOT_APPLICABLE  # the original is untouched


def test_bootstrap_se_is_deterministic_and_sensible():
    values = np.random.default_rng(1).normal(0, 1, 200)
    a, b = bootstrap_se(values, np.median), bootstrap_se(values, np.median)
    assert a == b and 0.03 < a < 0.2
    assert bootstrap_se(values) == pytest.approx(values.std() / np.sqrt(200), rel=0.15)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_se([1.0])


def test_tables_show_kinds_apart_with_notes_and_record_round_trips():
    card = Scorecard("Chapter (Someone 2024)", stand_in=False)
    card.at_least("copy", Reference(0.95, "§3", note="> 95%"), 0.97, 0.95, null=0,
                  section="3. Copy scores")
    card.data_check("layers", Reference(12, "arch"), 12)
    card.info("Pythia", REF, 0.4, note="Pythia-1.4B, not GPT-2")
    html = card._repr_html_()
    assert html.index("Reproduced numbers") < html.index("Data and architecture") < html.index(
        "For comparison")
    assert "Pythia-1.4B, not GPT-2" in html and "&gt; 95%" in html
    [record] = scorecard_data.extract({"cells": [{"cell_type": "code",
                                                   "outputs": [{"data": {"text/html": html}}]}]})
    rows = record["rows"]
    assert [r["role"] for r in rows] == ["graded", "data", "info"]
    assert rows[0]["section_anchor"] == "copy-scores" and rows[0]["null"] == 0
    assert [scorecard_data.judge(r) for r in rows] == card.verdicts()
    assert scorecard_data.null_failures(record) == []


def test_section_anchor_follows_docutils():
    assert scorecard_data.section_anchor("3d. Path patching: the S-inhibition heads' keys") == \
        "d-path-patching-the-s-inhibition-heads-keys"
    assert scorecard_data.section_anchor("Scorecard") == "scorecard"


def test_the_old_add_without_a_kind_or_null_is_refused():
    with pytest.raises(TypeError, match="kind and a null"):
        Scorecard("t", stand_in=False).add("x", REF, 0.5, tolerance=0.1)
