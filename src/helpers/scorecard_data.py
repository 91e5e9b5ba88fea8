"""A scorecard as data: the record the book build collects from every executed chapter.

When a ``Scorecard`` is displayed, its HTML carries, next to the table, its record as JSON
in a ``<script type="application/json">`` element (invisible on the page). The build reads
the records back out of each executed notebook (:func:`extract`), so the data always travel
with the outputs they describe: a notebook reused from the execution cache brings its own
scorecard, and a chapter needs no extra code to be counted on the status page.

This module uses the standard library only: the build script loads it by file path, without
importing torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re

__all__ = ["SCHEMA", "MARKER", "record", "script_tag", "extract", "anchor"]

SCHEMA = 1
MARKER = "casebook-scorecard-data"
# Machine-readable verdicts, next to the text the chapter shows.
STATUS = {"✓ holds": "holds", "✗ differs": "differs", "n/a (stand-in)": "n/a", "not measured": "not measured"}

_SCRIPT = re.compile(
    r'<script type="application/json" class="' + MARKER + r'">(.*?)</script>', re.DOTALL
)


def anchor(title: str) -> str:
    """The HTML id of a scorecard's table, from its title (stable across builds)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"scorecard-{slug or 'untitled'}"


def _number(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def record(card) -> dict:
    """Everything the status page needs about one scorecard, JSON-serialisable."""
    rows = []
    for row, verdict in zip(card.rows, card.verdicts()):
        rows.append(
            {
                "quantity": row.quantity,
                "paper": _number(row.reference.value),
                "source": row.reference.source,
                "confidence": row.reference.confidence,
                "note": row.reference.note,
                "measured": _number(row.measured),
                "tolerance": row.tolerance,
                "relative": row.relative,
                "tolerance_text": row.tolerance_text(),
                "structural": row.structural,
                "verdict": verdict,
                "status": STATUS.get(verdict, verdict),
            }
        )
    return {
        "schema": SCHEMA,
        "title": card.title,
        "anchor": anchor(card.title),
        "stand_in": bool(card.stand_in),
        "weights": "random (stand-in)" if card.stand_in else "pretrained",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }


def script_tag(card) -> str:
    """The record inside an invisible ``<script>`` element, for the scorecard's HTML."""
    text = json.dumps(record(card), ensure_ascii=False, allow_nan=False)
    text = text.replace("</", "<\\/")  # cannot close the script element early; still valid JSON
    return f'<script type="application/json" class="{MARKER}">{text}</script>'


def extract(notebook: dict) -> list[dict]:
    """The scorecard records shown in an executed notebook (a parsed ``.ipynb``), in order.

    A scorecard displayed more than once counts once, with its last display.
    """
    found: dict[str, dict] = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            html = output.get("data", {}).get("text/html")
            if not html:
                continue
            html = "".join(html) if isinstance(html, list) else html
            for match in _SCRIPT.finditer(html):
                data = json.loads(match.group(1))
                found.pop(data["title"], None)
                found[data["title"]] = data
    return list(found.values())
