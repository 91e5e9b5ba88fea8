"""Plotting set-up and the book's standard figures (plotly).

Why a set-up function: since plotly 6.1 an executing kernel stores only the
``application/vnd.plotly.v1+json`` mime type, which Jupyter Book 1.x cannot render (the
figure silently vanishes with a ``mystnb.unknown_mime_type`` warning; and myst-nb warns
even when an HTML copy sits beside it). ``setup_plotting`` picks the renderer explicitly:

* the book build (``scripts/build_book.py`` sets ``CASEBOOK_BUILD=1``): ``casebook_book``
  (``helpers.book_html``), HTML only, as wide as the column; the site loads plotly.js once
  from its own static files (no CDN);
* Google Colab: ``colab``;
* Jupyter, VS Code: ``plotly_mimetype+notebook_connected`` (interactive in every front end).

``PLOTLY_RENDERER`` in the environment overrides all three.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

import plotly.io as pio

from . import book_html
from .circuits import head_label, parse_head

__all__ = [
    "BOOK_RENDERER",
    "in_colab",
    "setup_plotting",
    "head_label",
    "parse_head",
    "heads_heatmap",
    "layer_position_heatmap",
    "bar",
    "line",
    "scatter",
]

BOOK_RENDERER = book_html.BOOK_RENDERER
INTERACTIVE_RENDERER = "plotly_mimetype+notebook_connected"
TEMPLATE = "plotly_white"


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def setup_plotting() -> str:
    """Set plotly's default renderer and template for this environment; returns the renderer."""
    book_html.register_book_renderer()
    if os.environ.get("PLOTLY_RENDERER"):
        renderer = os.environ["PLOTLY_RENDERER"]
    elif in_colab():
        renderer = "colab"
    elif os.environ.get("CASEBOOK_BUILD"):
        renderer = BOOK_RENDERER
    else:
        renderer = INTERACTIVE_RENDERER
    pio.renderers.default = renderer
    pio.templates.default = TEMPLATE
    return renderer


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def heads_heatmap(
    values,
    *,
    title: str,
    colorbar_title: str = "",
    marked: dict[str, Sequence] | Sequence | None = None,
    zmid: float = 0.0,
    height: int | None = None,
) -> go.Figure:
    """Layer × head heatmap (``values``: ``[n_layers, n_heads]``), hover text ``L.H``.

    ``marked``: heads to outline, e.g. the paper's circuit, as ``{"Name Mover": ["9.9",
    "9.6"], ...}`` (one legend entry per class) or a plain list of ``L.H`` labels.
    """
    z = _to_numpy(values)
    n_layers, n_heads = z.shape
    text = [[head_label(l, h) for h in range(n_heads)] for l in range(n_layers)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            text=text,
            colorscale="RdBu",
            zmid=zmid,
            colorbar=dict(title=colorbar_title),
            hovertemplate="head %{text}<br>value %{z:.3f}<extra></extra>",
        )
    )
    if marked:
        groups = marked if isinstance(marked, dict) else {"marked": marked}
        symbols = ["square-open", "circle-open", "diamond-open", "x-thin-open", "star-open",
                   "triangle-up-open", "cross-thin-open", "hexagon-open"]
        for i, (name, heads) in enumerate(groups.items()):
            coords = [parse_head(h) for h in heads]
            fig.add_trace(
                go.Scatter(
                    x=[h for _, h in coords],
                    y=[l for l, _ in coords],
                    mode="markers",
                    name=name,
                    marker=dict(symbol=symbols[i % len(symbols)], size=14, color="black",
                                line=dict(width=2)),
                    hovertemplate=f"{name}: %{{y}}.%{{x}}<extra></extra>",
                )
            )
        fig.update_layout(legend=dict(orientation="h", y=-0.15))
    fig.update_layout(
        title=title,
        # Fixed ranges: the markers' padding must not add a row or column (it does on phones).
        xaxis=dict(title="Head", dtick=1, range=[-0.5, n_heads - 0.5]),
        yaxis=dict(title="Layer", dtick=1, range=[n_layers - 0.5, -0.5]),
        height=height or max(350, 28 * n_layers + 150),  # width: the column's (responsive)
    )
    return fig


def layer_position_heatmap(values, positions: Sequence[str], *, title: str,
                           colorbar_title: str = "", zmid: float = 0.0) -> go.Figure:
    """Layer × position heatmap (``values``: ``[n_layers, seq]``), columns named by
    ``positions`` (e.g. the prompt's tokens or position names)."""
    z = _to_numpy(values)
    if z.ndim != 2 or z.shape[1] != len(positions):
        raise ValueError(f"values must be [n_layers, {len(positions)}], got {z.shape}")
    x = [f"{i}: {p}" for i, p in enumerate(positions)]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=list(range(z.shape[0])), colorscale="RdBu", zmid=zmid,
        colorbar=dict(title=colorbar_title),
        hovertemplate="layer %{y}, %{x}<br>value %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis=dict(title="Position"),
                      yaxis=dict(title="Layer", dtick=1, autorange="reversed"),
                      height=max(350, 28 * z.shape[0] + 150))
    return fig


def bar(values, labels: Sequence[str], *, title: str, xaxis: str, yaxis: str,
        names: Sequence[str] | None = None) -> go.Figure:
    """A titled, labelled bar chart (one bar per label); ``values`` ``[n]``, or
    ``[n_series, n]`` with ``names`` for grouped bars (one legend entry per series)."""
    y = _to_numpy(values)
    if y.ndim == 1:
        fig = go.Figure(go.Bar(x=list(labels), y=y))
    else:
        if names is None or len(names) != y.shape[0]:
            raise ValueError("grouped bars ([n_series, n] values) need one name per series")
        fig = go.Figure([go.Bar(x=list(labels), y=row, name=name) for row, name in zip(y, names)])
        fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.25))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig


def line(values, labels: Sequence[str] | None = None, *, title: str, xaxis: str, yaxis: str,
         names: Sequence[str] | None = None) -> go.Figure:
    """A titled, labelled line chart; ``values`` ``[n]`` or ``[n_lines, n]``."""
    y = _to_numpy(values)
    y = y[None] if y.ndim == 1 else y
    x = list(labels) if labels is not None else list(range(y.shape[1]))
    fig = go.Figure()
    for i, row in enumerate(y):
        fig.add_trace(go.Scatter(x=x, y=row, mode="lines+markers",
                                 name=names[i] if names else None, showlegend=bool(names)))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig


def scatter(x, y, labels: Sequence[str], *, title: str, xaxis: str, yaxis: str,
            diagonal: bool = False, groups: Sequence[str] | None = None) -> go.Figure:
    """A titled, labelled scatter plot with one named point per label.

    ``diagonal=True`` draws the line y = x across the data's range, for plots where a point
    on it means "the two measurements agree" (e.g. completeness: F(C \\ K) against F(M \\ K)).
    ``groups`` (one name per point) draws each group as its own trace, with a legend entry.
    """
    xs, ys = _to_numpy(x), _to_numpy(y)
    labels = list(labels)
    if groups is None:
        fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=labels,
                                   textposition="top center", showlegend=False,
                                   hovertemplate="%{text}<br>x %{x:.3f}<br>y %{y:.3f}<extra></extra>"))
    else:
        groups = list(groups)
        if len(groups) != len(labels):
            raise ValueError(f"groups has {len(groups)} names for {len(labels)} points")
        fig = go.Figure()
        for g in dict.fromkeys(groups):
            idx = [i for i, name in enumerate(groups) if name == g]
            fig.add_trace(go.Scatter(x=xs[idx], y=ys[idx], mode="markers", name=g,
                                     text=[labels[i] for i in idx], marker=dict(size=9),
                                     hovertemplate="%{text}<br>x %{x:.3f}<br>y %{y:.3f}<extra></extra>"))
        fig.update_layout(legend=dict(orientation="h", y=-0.2))
    if diagonal and len(xs):
        lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines",
                                 line=dict(dash="dot", color="grey"), name="y = x", hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig
