"""A scorecard as data: the verdict rules and the record the book build collects.

Standard library only: the build script and the status page load this module by file path,
without importing torch, and re-judge rows from their records with the same rules as the
notebook (:func:`judge`), so a row's verdict can be checked anywhere, e.g. at its null.

**Criteria.** A graded row's criterion is a dict with a ``kind``:

=============  ==================================================  =====================
kind           passes when (m = the row's measured value)          margin (for power)
=============  ==================================================  =====================
``band``       ``|m - center| <= tol`` (``tol × |center|`` if      ``tol``
               ``relative``)
``at_least``   ``m >= bound``                                      ``|bound - null|``
``at_most``    ``m <= bound``                                      ``|bound - null|``
``top_k``      ``m >= need`` (m: members found in the top k)       ``|need - null|``
``overlap``    ``m >= bound`` (m: recall or Jaccard)               ``|bound - null|``
``sign``       ``sign × m > 0``, and ``> 2·SE`` when an SE is known  (significance)
``ordering``   ``m > 0``, m = greater − lesser (same SE rule)        (significance)
=============  ==================================================  =====================

A row is **underpowered** when its standard error is above half its margin (the sample
cannot tell the criterion's edge from a run with no effect, or cannot resolve the band), or,
for ``sign`` / ``ordering``, when the value has the claimed sign but lies within 2 SE of 0.

When a displayed ``Scorecard`` renders, its HTML carries its record as JSON in a
``<script type="application/json">`` element; the build reads the records back out of each
executed notebook (:func:`extract`), so the data travel with the outputs they describe.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import unicodedata

__all__ = ["SCHEMA", "MARKER", "record", "script_tag", "extract", "anchor", "section_anchor",
           "passes", "judge", "margin", "criterion_text", "null_failures", "STATUS"]

SCHEMA = 2
MARKER = "casebook-scorecard-data"

HOLDS, DIFFERS = "✓ holds", "✗ differs"
NOT_APPLICABLE, NOT_RUN = "n/a (stand-in)", "not run at this size"
UNDERPOWERED, FOR_COMPARISON = "underpowered", "for comparison"
# Machine-readable statuses, next to the text the chapter shows.
STATUS = {HOLDS: "holds", DIFFERS: "differs", NOT_APPLICABLE: "n/a", NOT_RUN: "not run",
          UNDERPOWERED: "underpowered", FOR_COMPARISON: "info"}
ROLES = ("graded", "data", "info")

_SCRIPT = re.compile(
    r'<script type="application/json" class="' + MARKER + r'">(.*?)</script>', re.DOTALL
)


def anchor(title: str) -> str:
    """The HTML id of a scorecard, from its title (stable across builds)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"scorecard-{slug or 'untitled'}"


def section_anchor(heading: str) -> str:
    """The id Sphinx gives a section with this heading text (docutils' ``make_id`` rule)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"^[^a-z]+", "", text).strip("-")


def _number(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


# --- verdict rules --------------------------------------------------------------------------

def passes(criterion: dict, value: float, se: float | None = None) -> bool:
    """Does ``value`` meet the criterion (the point rule, ignoring power)?"""
    kind = criterion["kind"]
    if kind == "band":
        allowed = criterion["tol"] * (abs(criterion["center"]) if criterion.get("relative") else 1)
        return abs(value - criterion["center"]) <= allowed + 1e-12
    if kind in ("at_least", "overlap"):
        return value >= criterion["bound"] - 1e-12
    if kind == "at_most":
        return value <= criterion["bound"] + 1e-12
    if kind == "top_k":
        return value >= criterion["need"] - 1e-12
    if kind in ("sign", "ordering"):
        signed = value * criterion.get("sign", 1)
        return signed > (2 * se if se else 0.0)
    raise ValueError(f"unknown criterion kind {kind!r}")


def margin(criterion: dict, null: float | None) -> float | None:
    """The distance a row's SE is measured against (None: the significance rule applies)."""
    kind = criterion["kind"]
    if kind == "band":
        return criterion["tol"] * (abs(criterion["center"]) if criterion.get("relative") else 1)
    if kind in ("sign", "ordering") or null is None:
        return None
    edge = criterion["need"] if kind == "top_k" else criterion["bound"]
    return abs(edge - null)


def judge(row: dict, stand_in: bool = False) -> str:
    """The verdict text of one row record (keys: role, criterion, measured, se, null)."""
    role = row.get("role", "graded")
    if role == "info":
        return FOR_COMPARISON
    if role == "graded" and stand_in:
        return NOT_APPLICABLE
    value = _number(row.get("measured"))
    if value is None:
        return NOT_RUN
    criterion, se = row["criterion"], _number(row.get("se"))
    if role == "graded" and se:
        if criterion["kind"] in ("sign", "ordering"):
            signed = value * criterion.get("sign", 1)
            if 0 < signed <= 2 * se:
                return UNDERPOWERED
        else:
            room = margin(criterion, _number(row.get("null")))
            if room is not None and se > room / 2:
                return UNDERPOWERED
    return HOLDS if passes(criterion, value, se) else DIFFERS


def criterion_text(criterion: dict) -> str:
    """The criterion as a reader sees it in the table."""
    kind = criterion["kind"]
    if kind == "band":
        tol = criterion["tol"]
        if tol == 0:
            return f"= {criterion['center']:.4g}"
        if criterion.get("relative"):
            return f"within ±{tol:.0%} of {criterion['center']:.4g}"
        return f"within ±{tol:g} of {criterion['center']:.4g}"
    if kind == "at_least":
        return f"≥ {criterion['bound']:.4g}"
    if kind == "at_most":
        return f"≤ {criterion['bound']:.4g}"
    if kind == "top_k":
        return f"≥ {criterion['need']:g} of {criterion['of']:g} in the top {criterion['k']:g}"
    if kind == "overlap":
        return f"{criterion['metric']} ≥ {criterion['bound']:.4g}"
    if kind == "sign":
        return "< 0" if criterion["sign"] < 0 else "> 0"
    if kind == "ordering":
        return f"{criterion['greater']} > {criterion['lesser']}"
    raise ValueError(f"unknown criterion kind {kind!r}")


def null_failures(card_record: dict) -> list[str]:
    """Graded rows whose criterion accepts their own null value (must be empty)."""
    bad = []
    for row in card_record["rows"]:
        if row.get("role", "graded") != "graded":
            continue
        if row.get("null") is None or passes(row["criterion"], row["null"]):
            bad.append(row["quantity"])
    return bad


# --- records ---------------------------------------------------------------------------------

def record(card) -> dict:
    """Everything the status page needs about one scorecard, JSON-serialisable."""
    rows = []
    for row, verdict in zip(card.rows, card.verdicts()):
        rows.append(
            {
                "quantity": row.quantity,
                "role": row.role,
                "paper": _number(row.reference.value),
                "source": row.reference.source,
                "confidence": row.reference.confidence,
                "note": row.note,
                "measured": _number(row.measured),
                "se": _number(row.se),
                "n": row.n,
                "null": _number(row.null),
                "criterion": row.criterion,
                "criterion_text": row.criterion_text(),
                "section": row.section,
                "section_anchor": section_anchor(row.section) if row.section else None,
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
