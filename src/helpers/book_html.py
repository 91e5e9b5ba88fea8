"""How figures and attention views are written into the book's pages: no library, no CDN.

The built site ships plotly.js and the circuitsvis browser bundle once, in
``_static/casebook/`` (``scripts/book_assets.py`` copies them from the installed packages and
adds a ``<script>`` tag for each to the pages that need it). So an output in the book build
(``CASEBOOK_BUILD=1``) carries only its data and one call:

* a plotly figure: ``<div class="plotly-graph-div">`` + ``Plotly.newPlot(...)``, as wide as the
  text column (``responsive``), without plotly.js and without MathJax;
* a circuitsvis view: ``<div id="circuits-vis-…"></div>`` + ``CircuitsVis.render(...)``.

Outside the book (Jupyter, Colab) the usual renderers apply (``helpers.plotting``,
``helpers.display``); this module is only for the static site.
"""

from __future__ import annotations

import re

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

__all__ = ["BOOK_RENDERER", "PLOTLY_CONFIG", "register_book_renderer", "circuitsvis_book_html"]

BOOK_RENDERER = "casebook_book"
# responsive: the figure follows its column's width (desktop and phone); no plotly logo link.
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False}


# Plotly does not wrap titles: a long one runs off a phone-wide figure. After drawing, and
# after every resize, this breaks the figure's title and axis titles into lines that fit.
_FIT_TITLE_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.layout) return;
  var labels = [['title.text', '.gtitle'], ['xaxis.title.text', '.xtitle'], ['yaxis.title.text', '.ytitle']];
  function get(path) {
    return path.split('.').reduce(function (o, k) { return o && o[k]; }, gd.layout);
  }
  labels = labels.map(function (l) { return {path: l[0], selector: l[1], full: get(l[0]), charWidth: null}; })
    .filter(function (l) { return typeof l.full === 'string' && l.full && l.full.indexOf('<br>') < 0; });
  if (!labels.length) return;
  function wrap(text, max) {
    var lines = [], line = '';
    text.split(' ').forEach(function (word) {
      if (line && (line + ' ' + word).length > max) { lines.push(line); line = word; }
      else { line = line ? line + ' ' + word : word; }
    });
    lines.push(line);
    return lines.join('<br>');
  }
  function fit() {
    if (!gd._fullLayout) return;
    var update = {};
    labels.forEach(function (l) {
      var el = gd.querySelector(l.selector);
      if (!el) return;
      if (l.charWidth === null) l.charWidth = el.getBBox().width / Math.max(1, el.textContent.length);
      var full = gd._fullLayout, room;
      if (l.path === 'title.text') {  // left-aligned at title.x
        room = full.width * (1 - (full.title.x || 0)) - 16;
      } else if (l.path[0] === 'x') {  // centred under the plot area, within the figure
        var centre = full.xaxis._offset + full.xaxis._length / 2;
        room = 2 * Math.min(centre, full.width - centre) - 16;
      } else {  // rotated, up the plot area: longer, it meets the x title or the figure's title
        room = full.yaxis._length + 16;
      }
      var wanted = wrap(l.full, Math.max(12, Math.floor(room / Math.max(1, l.charWidth))));
      if (wanted !== get(l.path)) update[l.path] = wanted;
    });
    if (Object.keys(update).length) Plotly.relayout(gd, update);
  }
  fit();
  gd.on('plotly_relayout', fit);
})();
"""


class BookPlotlyRenderer(MimetypeRenderer):
    """HTML-only plotly output that expects ``Plotly`` to be loaded by the page."""

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(
            fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
            config=PLOTLY_CONFIG, default_width="100%", default_height=450, validate=False,
            post_script=_FIT_TITLE_JS,
        )
        return {"text/html": html}


def register_book_renderer() -> str:
    """Make ``pio.renderers[BOOK_RENDERER]`` available; returns its name."""
    if BOOK_RENDERER not in pio.renderers:
        pio.renderers[BOOK_RENDERER] = BookPlotlyRenderer()
    return BOOK_RENDERER


# circuitsvis 1.x writes, for its CDN variant:
#   <div id="circuits-vis-…" style="…"/>
#   <script crossorigin type="module">
#   import { render, Name } from "https://unpkg.com/circuitsvis@…/dist/cdn/esm.js";
#   render(
#     "circuits-vis-…",
#     Name,
#     {props}
#   )
#   </script>
_CDN_SRC = re.compile(
    r'^\s*<div id="(?P<id>circuits-vis-[\w-]+)"[^>]*/>\s*'
    r'<script[^>]*>\s*import \{ render, (?P<name>\w+) \} from "[^"]+";\s*'
    r'render\(\s*"(?P=id)",\s*(?P=name),\s*(?P<props>.*)\)\s*</script>\s*$',
    re.S,
)


def circuitsvis_book_html(rendered) -> str:
    """The book's HTML for a circuitsvis view (``RenderedHTML``, e.g. ``attention_heads(...)``).

    A real ``<div></div>`` (circuitsvis writes ``<div/>``, which HTML does not have) and a call
    of the site's ``CircuitsVis`` bundle; the view's data are kept as circuitsvis wrote them.
    """
    match = _CDN_SRC.match(rendered.cdn_src)
    if match is None:
        raise RuntimeError(
            "circuitsvis wrote its HTML in a form helpers.book_html does not know (a new "
            "circuitsvis version?); adapt _CDN_SRC to it."
        )
    view_id, name = match["id"], match["name"]
    props = match["props"].strip().replace("</", "<\\/")  # keep the script element closed
    return (
        f'<div id="{view_id}" class="casebook-circuitsvis" style="margin: 15px 0;"></div>\n'
        "<script>\n"
        "(function () {\n"
        f'  var el = document.getElementById("{view_id}");\n'
        '  if (!window.CircuitsVis) {\n'
        '    el.textContent = "(attention view: this page did not load the circuitsvis script)";\n'
        '    console.error("circuitsvis script missing: " + el.id);\n'
        "    return;\n"
        "  }\n"
        f"  CircuitsVis.render(\"{view_id}\", CircuitsVis.{name}, {props});\n"
        "})();\n"
        "</script>"
    )
