"""The built book in a real browser: every page, offline, at desktop and phone width.

Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through Selenium) loads every
page of the session's smoke build (``smoke_book`` in conftest.py) from a loopback server with
every other host unreachable; ``scripts/check_site.py`` does the looking (see its docstring).
Full-page screenshots go to ``_build/screenshots/`` (``CASEBOOK_SCREENSHOTS`` overrides).

Without a browser the tests skip with an install hint; under ``CI=true`` they fail instead.
"""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("CASEBOOK_SCREENSHOTS", ROOT / "_build" / "screenshots"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_site = _script("check_site")


def require_browser() -> None:
    missing = [] if check_site.find_browser() else ["chromium and chromedriver"]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    if missing:
        message = f"{' and '.join(missing)} not found; {check_site.INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run the browser test: {message}")
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(smoke_book):
    require_browser()
    out, _ = smoke_book
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    with check_site.SiteChecker(out / "html", SCREENSHOTS, stand_in=True) as checker:
        results = {r.page: r for r in checker.check_all()}
    return out / "html", results


def toc_chapter_pages() -> list[str]:
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            files.extend([node["file"]] if "file" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    return [f"{f}.html" for f in files if f.startswith("notebooks/") and (ROOT / f"{f}.ipynb").exists()]


def test_every_page_was_checked_and_chapters_have_screenshots(site):
    html, results = site
    assert set(results) == {p.relative_to(html).as_posix() for p in html.rglob("*.html")
                            if not p.relative_to(html).as_posix().startswith("_")}
    for page in toc_chapter_pages():
        assert page in results, f"{page} was not built"
        for shot in results[page].screenshots:
            assert shot.exists() and shot.stat().st_size > 10_000, shot
        assert len(results[page].screenshots) == 2  # desktop and phone
    # The checks below looked at something: the chapters have figures, views and formulas.
    total = lambda key: sum(r.counts.get(key, 0) for r in results.values())  # noqa: E731
    assert total("figures") >= 1 and total("views") >= 1 and total("formulas") >= 1


KINDS = {
    "console": "errors in the browser console",
    "network": "requests that left the site",
    "scripts": "scripts loaded more than once by a page",
    "plotly": "plotly figures not drawn",
    "circuitsvis": "attention views not rendered",
    "math": "formulas not typeset",
    "width": "figures, labels or code wider than the column",
    "banner": "stand-in banner missing",
    "link": "internal links that do not resolve",
    "image": "images that do not load or come from outside",
    "size": "pages over 3 MB without the shared scripts",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_pages_have_no(site, kind):
    _, results = site
    problems = [str(p) for r in results.values() for p in r.problems if p.kind == kind]
    assert not problems, f"{KINDS[kind]}:\n" + "\n".join(problems)


def test_the_browser_test_catches_a_broken_page(smoke_book, tmp_path):
    """Break a chapter page on purpose: a lost figure, an empty attention view, a CDN script."""
    require_browser()
    out, _ = smoke_book
    site_copy = tmp_path / "html"
    shutil.copytree(out / "html", site_copy)
    page = next(p for p in toc_chapter_pages()
                if "Plotly.newPlot(" in (site_copy / p).read_text(encoding="utf-8")
                and "CircuitsVis.render(" in (site_copy / p).read_text(encoding="utf-8"))
    path = site_copy / page
    text = path.read_text(encoding="utf-8")
    # 1. The first figure's script is lost (its div stays: an empty box, no console error).
    text, n = re.subn(r"<script>(\s*window\.PLOTLYENV.*?)</script>", "<script>/* lost */</script>",
                      text, count=1, flags=re.S)
    assert n == 1
    # 2. The first attention view is never rendered.
    text = text.replace("CircuitsVis.render(", "void (", 1)
    # 3. A script from a CDN.
    text = text.replace("</head>", '<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script></head>', 1)
    path.write_text(text, encoding="utf-8")

    with check_site.SiteChecker(site_copy, stand_in=True) as checker:
        result = checker.check(page)
    kinds = {p.kind for p in result.problems}
    assert {"plotly", "circuitsvis", "network"} <= kinds, [str(p) for p in result.problems]
    assert any("not drawn" in str(p) for p in result.problems)
    assert any("cdn.plot.ly" in str(p) for p in result.problems if p.kind == "network")
