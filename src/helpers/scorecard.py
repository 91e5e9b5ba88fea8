"""The scorecard that ends every chapter: each published number beside this run's.

A row holds the paper's value, its source, this run's value, a tolerance and a verdict.
On the stand-in a behavioural row's verdict is "n/a (stand-in)": random weights say nothing
about GPT-2. Rows about the architecture (``structural=True``) are checked either way.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

from . import scorecard_data

__all__ = ["Reference", "Scorecard", "Row"]

HOLDS, DIFFERS, NOT_APPLICABLE, NOT_MEASURED = "✓ holds", "✗ differs", "n/a (stand-in)", "not measured"


@dataclass(frozen=True)
class Reference:
    """A published number: value, where it comes from, and how sure we are of it."""

    value: float
    source: str
    confidence: str = "paper text"  # "paper text" | "official code" | "secondary source"
    note: str = ""


@dataclass
class Row:
    quantity: str
    reference: Reference
    measured: float | None
    tolerance: float
    relative: bool = False
    structural: bool = False

    def verdict(self, stand_in: bool) -> str:
        if stand_in and not self.structural:
            return NOT_APPLICABLE
        if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
            return NOT_MEASURED
        allowed = self.tolerance * abs(self.reference.value) if self.relative else self.tolerance
        return HOLDS if abs(self.measured - self.reference.value) <= allowed else DIFFERS

    def tolerance_text(self) -> str:
        return f"±{self.tolerance:.0%}" if self.relative else f"±{self.tolerance:g}"


@dataclass
class Scorecard:
    """Collects rows; shows as a table in notebooks (``_repr_html_``) and as a DataFrame."""

    title: str
    stand_in: bool
    rows: list[Row] = field(default_factory=list)

    def add(self, quantity: str, reference: Reference, measured, *, tolerance: float,
            relative: bool = False, structural: bool = False) -> "Scorecard":
        """Add one comparison; ``tolerance`` absolute, or a fraction of the paper's value."""
        if tolerance < 0:
            raise ValueError(f"tolerance must be ≥ 0, got {tolerance!r} for {quantity!r}.")
        value = None if measured is None else float(measured)
        self.rows.append(Row(quantity, reference, value, tolerance, relative, structural))
        return self

    def verdicts(self) -> list[str]:
        return [row.verdict(self.stand_in) for row in self.rows]

    @property
    def all_hold(self) -> bool:
        """True when every applicable row holds (nothing differs, nothing unmeasured)."""
        return all(v in (HOLDS, NOT_APPLICABLE) for v in self.verdicts())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "quantity": [r.quantity for r in self.rows],
                "paper": [r.reference.value for r in self.rows],
                "this run": [r.measured for r in self.rows],
                "tolerance": [r.tolerance_text() for r in self.rows],
                "verdict": self.verdicts(),
                "source": [f"{r.reference.source} ({r.reference.confidence})" for r in self.rows],
            }
        )

    def _repr_html_(self) -> str:
        def fmt(x):
            return "—" if x is None else f"{x:.4g}"

        colors = {HOLDS: "#1a7f37", DIFFERS: "#cf222e", NOT_APPLICABLE: "#6e7781", NOT_MEASURED: "#9a6700"}
        body = "".join(
            "<tr>"
            f"<td>{html.escape(r.quantity)}</td><td>{fmt(r.reference.value)}</td>"
            f"<td>{fmt(r.measured)}</td><td>{r.tolerance_text()}</td>"
            f'<td style="color:{colors[v]};font-weight:bold">{v}</td>'
            f"<td>{html.escape(r.reference.source)} <i>({html.escape(r.reference.confidence)})</i></td>"
            "</tr>"
            for r, v in zip(self.rows, self.verdicts())
        )
        caption = html.escape(self.title)
        if self.stand_in:
            caption += (" — computed on the stand-in (random weights): behavioural rows do not "
                        "apply; only architectural rows are checked")
        return (
            f'<table class="casebook-scorecard" id="{scorecard_data.anchor(self.title)}">'
            f"<caption>{caption}</caption><thead><tr>"
            "<th>quantity</th><th>paper</th><th>this run</th><th>tolerance</th>"
            f"<th>verdict</th><th>source</th></tr></thead><tbody>{body}</tbody></table>"
            + scorecard_data.script_tag(self)  # the same numbers as data, for the book build
        )

    def __str__(self) -> str:
        return f"{self.title}\n{self.to_frame().to_string(index=False)}"
