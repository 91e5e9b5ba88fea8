"""The scorecard that ends every chapter: each published number beside this run's.

A row is one claim of the paper, checked in the way the claim is made:

* **graded rows** ("reproduced numbers"): :meth:`Scorecard.band` (within a tolerance),
  :meth:`~Scorecard.at_least` / :meth:`~Scorecard.at_most` (one-sided claims such as
  "> 95%"), :meth:`~Scorecard.sign` ("negative"), :meth:`~Scorecard.top_k` ("9.1 is the
  top head", "the name movers are in the top 8"), :meth:`~Scorecard.ordering` ("A > B") and
  :meth:`~Scorecard.overlap` (recall or Jaccard of the paper's heads);
* **data checks** (:meth:`~Scorecard.data_check`): facts about the data or the architecture,
  checked on the stand-in too, shown apart and never counted as reproduced numbers;
* **for comparison** (:meth:`~Scorecard.info`): another model's number, another dataset's or a
  secondary summary's; shown with its note, never with ✓ or ✗.

**Every graded row can fail.** Each declares ``null``, the value a run with no effect would
give (0 for an effect, the unswapped value for a swap, chance for an accuracy; ``top_k`` and
``overlap`` compute a random head set's); a row whose criterion accepts its own null is
refused with an error naming it. :meth:`Scorecard.null_run` is the card with every graded row
measured at its null: all ✗.

**Uncertainty.** A row takes per-prompt ``values`` (value = their mean, SE = std/√n) or an
``se`` (:func:`bootstrap_se` for statistics that are not means). A row whose SE is too large
for its criterion shows "underpowered" instead of a verdict (rules in
``helpers/scorecard_data.py``). ``measured=None`` means "not run at this size" (a smoke build
that skips an experiment), which is not a failure.

On the stand-in a graded row's verdict is "n/a (stand-in)": random weights say nothing
about GPT-2. Verdict rules live in :mod:`helpers.scorecard_data` (standard library only), so
the status page re-judges the records with the same code.
"""

from __future__ import annotations

import copy
import html
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import scorecard_data
from .scorecard_data import (DIFFERS, FOR_COMPARISON, HOLDS, NOT_APPLICABLE, NOT_RUN,
                             UNDERPOWERED)

__all__ = ["Reference", "Scorecard", "Row", "bootstrap_se", "HOLDS", "DIFFERS",
           "NOT_APPLICABLE", "NOT_RUN", "UNDERPOWERED", "FOR_COMPARISON"]

NOT_MEASURED = NOT_RUN  # old name


@dataclass(frozen=True)
class Reference:
    """A published number: value, where it comes from, and how sure we are of it."""

    value: float
    source: str
    confidence: str = "paper text"  # "paper text" | "official code" | "secondary source"
    note: str = ""


@dataclass
class Row:
    """One row: the claim's criterion, this run's value ± SE, and its null."""

    quantity: str
    reference: Reference
    role: str  # "graded" | "data" | "info"
    criterion: dict | None
    measured: float | None
    se: float | None = None
    n: int | None = None
    null: float | None = None
    section: str | None = None
    note: str = ""

    def record(self) -> dict:
        return {"role": self.role, "criterion": self.criterion, "measured": self.measured,
                "se": self.se, "null": self.null}

    def verdict(self, stand_in: bool) -> str:
        return scorecard_data.judge(self.record(), stand_in)

    def criterion_text(self) -> str:
        return "—" if self.criterion is None else scorecard_data.criterion_text(self.criterion)


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float).reshape(-1)


def bootstrap_se(values, statistic=np.mean, *, n_boot: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of ``statistic`` over ``values`` (resampled with replacement).

    ``values``: per-prompt numbers, shape ``(n,)`` (or ``(n, ...)``: rows are resampled);
    ``statistic`` maps such an array to a number. Deterministic for a given ``seed``.
    """
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        raise ValueError(f"bootstrap_se needs at least 2 values, got {len(arr)}: run more prompts.")
    rng = np.random.default_rng(seed)
    stats = [statistic(arr[rng.integers(0, len(arr), len(arr))]) for _ in range(n_boot)]
    return float(np.std(stats, ddof=1))


def _number(x) -> float | None:
    if x is None:
        return None
    if hasattr(x, "item"):
        x = x.item()
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class Scorecard:
    """Collects rows; shows as tables in notebooks (``_repr_html_``) and as a DataFrame."""

    title: str
    stand_in: bool
    rows: list[Row] = field(default_factory=list)

    # --- graded rows ------------------------------------------------------------------------

    def _graded(self, quantity, reference, criterion, measured, *, null, se, values, section,
                note="") -> "Scorecard":
        if not isinstance(reference, Reference):
            raise TypeError(f"row {quantity!r}: reference must be a Reference, got {reference!r}.")
        if null is None:
            raise ValueError(
                f"row {quantity!r} declares no null: give null=, the value a run with no effect "
                "would give (0 for an effect, chance for an accuracy, the unswapped value for a "
                "swap), so the scorecard can check that the row is able to fail.")
        null = float(null)
        if scorecard_data.passes(criterion, null):
            raise ValueError(
                f"row {quantity!r} cannot fail: its criterion "
                f"({scorecard_data.criterion_text(criterion)}) accepts its null value {null:g}, "
                "the value a run with no effect would give. Tighten the criterion (a one-sided "
                "bound, a sign, a narrower band) or correct the null.")
        measured, se, n = self._value(quantity, measured, se, values)
        self.rows.append(Row(quantity, reference, "graded", criterion, measured, se, n, null,
                             section, note or reference.note))
        return self

    @staticmethod
    def _value(quantity, measured, se, values):
        n = None
        if values is not None:
            arr = _as_array(values)
            arr = arr[~np.isnan(arr)]
            n = len(arr)
            if n == 0:
                return None, None, 0
            if measured is None:
                measured = float(arr.mean())
            if se is None and n > 1:
                se = float(arr.std(ddof=1) / math.sqrt(n))
        if se is not None and _number(se) is not None and _number(se) < 0:
            raise ValueError(f"row {quantity!r}: a standard error cannot be negative ({se}).")
        return _number(measured), _number(se), n

    def band(self, quantity: str, reference: Reference, measured, tol: float, *,
             relative: bool = False, null, se=None, values=None, section=None, note="",
             center: float | None = None):
        """The paper's value is reproduced within ``tol`` (absolute, or a fraction if relative)."""
        if tol < 0:
            raise ValueError(f"tolerance must be ≥ 0, got {tol!r} for {quantity!r}.")
        crit = {"kind": "band", "center": float(reference.value if center is None else center),
                "tol": float(tol), "relative": bool(relative)}
        return self._graded(quantity, reference, crit, measured, null=null, se=se,
                            values=values, section=section, note=note)

    def at_least(self, quantity: str, reference: Reference, measured, bound: float, *, null,
                 se=None, values=None, section=None, note=""):
        """A one-sided claim: this run's value is at least ``bound`` ("> 95%")."""
        return self._graded(quantity, reference, {"kind": "at_least", "bound": float(bound)},
                            measured, null=null, se=se, values=values, section=section,
                            note=note)

    def at_most(self, quantity: str, reference: Reference, measured, bound: float, *, null,
                se=None, values=None, section=None, note=""):
        """A one-sided claim: this run's value is at most ``bound``."""
        return self._graded(quantity, reference, {"kind": "at_most", "bound": float(bound)},
                            measured, null=null, se=se, values=values, section=section,
                            note=note)

    def sign(self, quantity: str, reference: Reference, measured, sign: int = -1, *,
             null: float = 0.0, se=None, values=None, section=None, note=""):
        """The effect has the paper's sign (``sign=-1``: negative), beyond 2 SE when known."""
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or +1, got {sign!r} for {quantity!r}.")
        return self._graded(quantity, reference, {"kind": "sign", "sign": sign}, measured,
                            null=null, se=se, values=values, section=section, note=note)

    def ordering(self, quantity: str, reference: Reference, *, greater: tuple, lesser: tuple,
                 section=None, note=""):
        """Two measured quantities are ordered as the paper says: ``greater > lesser``.

        ``greater`` and ``lesser`` are ``(label, value, se)`` (``se`` may be None); the row's
        value is their difference, its null 0 (no difference), its SE √(se₁² + se₂²).
        """
        (g_label, g_value, g_se), (l_label, l_value, l_se) = greater, lesser
        if _number(g_value) is None or _number(l_value) is None:
            diff, se = None, None
        else:
            diff = _number(g_value) - _number(l_value)
            parts = [_number(s) for s in (g_se, l_se) if _number(s) is not None]
            se = math.sqrt(sum(s * s for s in parts)) if parts else None
        crit = {"kind": "ordering", "greater": str(g_label), "lesser": str(l_label), "sign": 1}
        return self._graded(quantity, reference, crit, diff, null=0.0, se=se, values=None,
                            section=section, note=note)

    def top_k(self, quantity: str, reference: Reference, ranking: Sequence | None,
              members: Iterable, k: int, *, need: int | None = None, se=None, section=None,
              note=""):
        """Discovery: how many of the paper's ``members`` are in this run's top ``k``.

        ``ranking``: this run's labels, best first (all candidates, e.g. all 144 heads), or
        None when not run at this size. The null is a random ranking's expected count,
        ``len(members) · k / len(ranking)``; ``need`` defaults to all members.
        """
        members = list(members)
        if not members:
            raise ValueError(f"row {quantity!r}: top_k needs at least one member.")
        need = len(members) if need is None else need
        if not 1 <= need <= len(members):
            raise ValueError(f"row {quantity!r}: need={need} must be between 1 and "
                             f"{len(members)} (the number of members).")
        if ranking is None:
            measured, universe = None, None
        else:
            ranking = list(ranking)
            universe = len(ranking)
            if not 1 <= k <= universe:
                raise ValueError(f"row {quantity!r}: k={k} must be between 1 and the ranking's "
                                 f"length {universe}.")
            missing = [m for m in members if m not in ranking]
            if missing:
                raise ValueError(f"row {quantity!r}: {missing} are not in the ranking; rank "
                                 "every candidate (e.g. all heads), labelled as the members are.")
            top = set(ranking[:k])
            measured = sum(m in top for m in members)
        null = len(members) * k / universe if universe else 0.0
        crit = {"kind": "top_k", "k": int(k), "need": int(need), "of": len(members)}
        return self._graded(quantity, reference, crit, measured, null=null, se=se, values=None,
                            section=section, note=note)

    def overlap(self, quantity: str, reference: Reference, found: Iterable | None,
                paper: Iterable, *, universe: int, at_least: float, metric: str = "recall",
                se=None, section=None, note=""):
        """Set overlap of this run's components with the paper's (recall or Jaccard).

        The null is the expected overlap of a random set of ``len(found)`` components drawn
        from ``universe`` candidates.
        """
        paper = set(paper)
        if metric not in ("recall", "jaccard"):
            raise ValueError(f"row {quantity!r}: metric must be 'recall' or 'jaccard', got "
                             f"{metric!r}.")
        if found is None:
            measured, size = None, len(paper)
        else:
            found = set(found)
            size = len(found)
            inter = len(found & paper)
            measured = (inter / len(paper) if metric == "recall"
                        else inter / max(len(found | paper), 1))
        expected = size * len(paper) / universe
        null = (expected / len(paper) if metric == "recall"
                else expected / max(size + len(paper) - expected, 1e-9))
        crit = {"kind": "overlap", "metric": metric, "bound": float(at_least)}
        return self._graded(quantity, reference, crit, measured, null=null, se=se, values=None,
                            section=section, note=note)

    # --- rows that are not graded -----------------------------------------------------------

    def data_check(self, quantity: str, reference: Reference, measured, tol: float = 0, *,
                   section=None, note=""):
        """A fact about the data or the architecture (checked on the stand-in too)."""
        if tol < 0:
            raise ValueError(f"tolerance must be ≥ 0, got {tol!r} for {quantity!r}.")
        crit = {"kind": "band", "center": float(reference.value), "tol": float(tol),
                "relative": False}
        measured, se, n = self._value(quantity, measured, None, None)
        self.rows.append(Row(quantity, reference, "data", crit, measured, None, n, None,
                             section, note or reference.note))
        return self

    def info(self, quantity: str, reference: Reference, measured, *, note: str = "", se=None,
             values=None, section=None):
        """For comparison only (another model, dataset or a secondary summary): no verdict."""
        note = note or reference.note
        if not note:
            raise ValueError(f"row {quantity!r}: an informational row needs a note saying why "
                             "it cannot be compared like for like (another model, dataset …).")
        measured, se, n = self._value(quantity, measured, se, values)
        self.rows.append(Row(quantity, reference, "info", None, measured, se, n, None, section,
                             note))
        return self

    def add(self, quantity, *args, **kwargs):
        """Removed: every row now has a kind and a null (see the module docstring)."""
        raise TypeError(
            f"Scorecard.add({quantity!r}) is gone: every row needs a kind and a null. Use "
            "card.band(..., null=...), card.at_least / at_most / sign / top_k / ordering / "
            "overlap for graded rows, card.data_check for data and architecture checks, "
            "card.info for numbers that cannot be compared like for like.")

    # --- verdicts and views -----------------------------------------------------------------

    def verdicts(self) -> list[str]:
        return [row.verdict(self.stand_in) for row in self.rows]

    @property
    def all_hold(self) -> bool:
        """True when no row differs (underpowered, not-run and n/a rows do not count)."""
        return not any(v == DIFFERS for v in self.verdicts())

    def null_run(self) -> "Scorecard":
        """This card on real weights with every graded row measured at its null (all ✗)."""
        card = Scorecard(self.title, stand_in=False)
        for row in self.rows:
            row = copy.copy(row)
            if row.role == "graded":
                row.measured, row.se = row.null, None
            card.rows.append(row)
        return card

    @staticmethod
    def _value_text(row: Row) -> str:
        if row.measured is None:
            return "—"
        text = f"{row.measured:.4g}"
        if row.se is not None:
            text += f" ± {row.se:.2g}"
        if row.n:
            text += f" (n={row.n})"
        return text

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "quantity": [r.quantity for r in self.rows],
                "kind": [r.role for r in self.rows],
                "paper": [r.reference.value for r in self.rows],
                "this run": [self._value_text(r) for r in self.rows],
                "criterion": [r.criterion_text() for r in self.rows],
                "null": [r.null for r in self.rows],
                "verdict": self.verdicts(),
                "source": [f"{r.reference.source} ({r.reference.confidence})" for r in self.rows],
                "note": [r.note for r in self.rows],
            }
        )

    _COLORS = {HOLDS: "#1a7f37", DIFFERS: "#cf222e", NOT_APPLICABLE: "#6e7781",
               NOT_RUN: "#6e7781", UNDERPOWERED: "#9a6700", FOR_COMPARISON: "#6e7781"}

    def _table(self, rows, verdicts, heading: str, *, with_null: bool) -> str:
        if not rows:
            return ""
        esc = html.escape
        head = ("<th>quantity</th><th>paper</th><th>this run (± SE)</th><th>criterion</th>"
                + ("<th>null</th>" if with_null else "")
                + "<th>verdict</th><th>source</th><th>note</th>")
        body = "".join(
            "<tr>"
            f"<td>{esc(r.quantity)}</td><td>{r.reference.value:.4g}</td>"
            f"<td>{esc(self._value_text(r))}</td><td>{esc(r.criterion_text())}</td>"
            + (f"<td>{'—' if r.null is None else format(r.null, '.3g')}</td>" if with_null else "")
            + f'<td style="color:{self._COLORS[v]};font-weight:bold">{esc(v)}</td>'
            f"<td>{esc(r.reference.source)} <i>({esc(r.reference.confidence)})</i></td>"
            f"<td>{esc(r.note)}</td></tr>"
            for r, v in zip(rows, verdicts)
        )
        return (f'<table class="casebook-scorecard-part"><caption>{esc(heading)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def _repr_html_(self) -> str:
        verdicts = self.verdicts()
        parts = {role: ([r for r in self.rows if r.role == role],
                        [v for r, v in zip(self.rows, verdicts) if r.role == role])
                 for role in ("graded", "data", "info")}
        caption = html.escape(self.title)
        if self.stand_in:
            caption += (" — computed on the stand-in (random weights): the paper's numbers do "
                        "not apply, so graded rows show n/a; data checks are checked")
        tables = (
            self._table(*parts["graded"], "Reproduced numbers (graded)", with_null=True)
            + self._table(*parts["data"], "Data and architecture checks (not reproductions)",
                          with_null=False)
            + self._table(*parts["info"], "For comparison (another model, dataset or a "
                          "secondary source: not graded)", with_null=False)
        )
        return (
            f'<div class="casebook-scorecard" id="{scorecard_data.anchor(self.title)}">'
            f"<p><b>{caption}</b></p>{tables}</div>"
            + scorecard_data.script_tag(self)  # the same numbers as data, for the book build
        )

    def __str__(self) -> str:
        return f"{self.title}\n{self.to_frame().to_string(index=False)}"
