"""The book's offline assets: plotly.js, the circuitsvis bundle and MathJax, from installed packages.

No page of the built site loads anything from a CDN. This module is a Sphinx extension that
``scripts/build_book.py`` adds to the staged ``_config.yml`` (``configure``). When Sphinx runs:

* it copies, once per build, into ``_static/casebook/``:
  ``plotly.min.js`` (the ``plotly`` package's own copy, the version its figures are written
  for), ``circuitsvis.js`` (circuitsvis's browser bundle ``dist/cdn/iife.js``, which defines
  the global ``CircuitsVis``; its source-map line is dropped) and ``mathjax/`` (MathJax 3.2.2
  from the ``sphinx-mathjax-offline`` package, without its SVG/MathML/"full" combined builds);
* it points Sphinx's MathJax at that copy (``mathjax_path``), so formulas are typeset by the
  same MathJax 3 that Sphinx would take from its CDN, on the pages that have formulas only;
* each page whose body holds a plotly figure gets one ``<script>`` tag for plotly.js, each page
  with a circuitsvis view one for ``circuitsvis.js`` (in the page head, before the figures'
  inline calls; the browser caches them across pages). Figures and views carry only their
  data and a call (``helpers.book_html``).

Why MathJax and not formulas rendered at build time: Sphinx and myst-nb already write
MathJax 3 markup, a pip package ships the exact files, and only the pages with formulas load
it; rendering at build time would need Node.js or LaTeX on every build machine.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

STATIC_SUBDIR = "casebook"  # inside the site's _static/
PLOTLY_JS = f"{STATIC_SUBDIR}/plotly.min.js"
CIRCUITSVIS_JS = f"{STATIC_SUBDIR}/circuitsvis.js"
MATHJAX_JS = f"{STATIC_SUBDIR}/mathjax/tex-chtml.js"
CSS = f"{STATIC_SUBDIR}/casebook.css"
FAVICON_ICO = "book/favicon.ico"  # book/favicon.svg rendered at 32 px, copied to the site root
# Code cells: 80 characters fit the text column at the default width (at 14 px, ~77 did).
_CSS_TEXT = """/* Circuit Casebook (scripts/book_assets.py) */
div.cell_input pre, div.cell_output pre { font-size: 13px; }
"""
# What in a page's body means it needs each script (helpers.book_html writes these).
NEEDS = {PLOTLY_JS: "Plotly.newPlot(", CIRCUITSVIS_JS: "CircuitsVis.render("}
# MathJax's combined builds other than tex-chtml.js: never loaded by the book (~12 MB).
_MATHJAX_SKIP = ("tex-svg*", "tex-mml-*", "mml-*", "tex-chtml-full*", "node-main.js")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (see requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def sources() -> dict[str, Path]:
    """Where the installed packages keep each asset."""
    mathjax_package = _package_dir("sphinx-mathjax-offline")  # its import name has hyphens
    found = {
        PLOTLY_JS: _package_dir("plotly") / "package_data" / "plotly.min.js",
        CIRCUITSVIS_JS: _package_dir("circuitsvis") / "dist" / "cdn" / "iife.js",
        "mathjax": mathjax_package / "static" / "mathjax",
    }
    missing = [str(p) for p in found.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"asset files missing from installed packages: {missing}")
    return found


def copy_assets(static_dir: Path) -> list[Path]:
    """Copy the assets into ``static_dir`` (the site's ``_static``); returns the files written."""
    found = sources()
    target = static_dir / STATIC_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(found[PLOTLY_JS], static_dir / PLOTLY_JS)
    bundle = found[CIRCUITSVIS_JS].read_text(encoding="utf-8")
    # The map (7 MB) is not shipped; without this line a browser's dev tools would ask for it.
    bundle = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", bundle)
    (static_dir / CIRCUITSVIS_JS).write_text(bundle, encoding="utf-8")
    shutil.copytree(found["mathjax"], target / "mathjax", ignore=shutil.ignore_patterns(*_MATHJAX_SKIP))
    (static_dir / CSS).write_text(_CSS_TEXT, encoding="utf-8")
    return sorted(p for p in target.rglob("*") if p.is_file())


def configure(config: dict) -> dict:
    """Add this extension to a Jupyter Book ``_config.yml`` mapping (the staged copy)."""
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("local_extensions", {})["book_assets"] = str(Path(__file__).resolve().parent)
    sphinx.setdefault("config", {})["mathjax_path"] = MATHJAX_JS
    return config


# --- the Sphinx extension -------------------------------------------------------------------

def _copy_on_init(app) -> None:
    if app.builder.format == "html":
        copy_assets(Path(app.outdir) / "_static")
        # Browsers (phone Chrome in particular) still ask for /favicon.ico beside the page's
        # SVG icon; without this file that request is a 404 in the console.
        icon = Path(app.srcdir) / FAVICON_ICO
        if icon.exists():
            shutil.copyfile(icon, Path(app.outdir) / "favicon.ico")


def _defaults(app, config) -> None:
    # pydata-sphinx-theme logs a console error on a reader's first visit when no colour mode
    # is configured ("Got invalid theme mode: ."); "auto" follows the reader's system.
    config.html_context.setdefault("default_mode", "auto")


def _add_page_scripts(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body", "")
    for script, marker in NEEDS.items():
        if marker in body:
            app.add_js_file(script, priority=400)  # after the theme's, before body scripts run
    # Each script once: sphinx-thebe and sphinx-togglebutton register their inline set-up
    # twice under Jupyter Book, and a second `const THEBE_JS_URL` is a console error.
    for key in ("script_files", "css_files"):
        seen, unique = set(), []
        for asset in context.get(key, []):
            attributes = getattr(asset, "attributes", {})
            identity = (str(getattr(asset, "filename", asset) or ""), json.dumps(attributes, sort_keys=True))
            if identity not in seen:
                seen.add(identity)
                unique.append(asset)
        if key in context:
            context[key][:] = unique


def setup(app):
    app.connect("config-inited", _defaults)
    app.connect("builder-inited", _copy_on_init)
    app.connect("html-page-context", _add_page_scripts, priority=900)  # after the others
    app.add_css_file(CSS)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
