"""Check the built book in a real browser: every page, offline, at desktop and phone width.

Usage:
    python scripts/check_site.py [HTML_DIR] [--screenshots DIR] [--stand-in | --no-stand-in]
                                 [--only PAGE ...]

Defaults: ``_build/html`` and ``_build/screenshots``. Exit status 1 when any page has a problem.
``tests/test_browser.py`` runs the same checks on the book the test suite builds.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven with Selenium) loads
each page from a local HTTP server on 127.0.0.1; every other host is unreachable (DNS maps it
nowhere and a dead proxy takes whatever is left). For each page, at the book's default width
(1280 px) and at phone width (390 px), it records as problems:

* ``console``: any error in the browser console (script errors, failed loads);
* ``network``: any request that left the site;
* ``scripts``: a script loaded twice by one page;
* ``plotly``: a plotly figure without an SVG and traces drawn in it;
* ``circuitsvis``: a circuitsvis view with nothing rendered in it;
* ``math``: a formula MathJax did not typeset (or typeset as an error);
* ``width``: a figure, attention view or text label wider than the text column, a page that
  scrolls sideways, and (default width) a code cell whose lines do not fit the column;
* ``banner``: no stand-in banner on a stand-in build;
* ``link`` / ``image``: an internal link (file or ``#anchor``) or image that does not resolve;
* ``size``: a page heavier than 3 MB without the shared scripts (HTML + its own images).

Full-page screenshots go to ``DIR/<page>.png`` (desktop) and ``DIR/<page>.phone.png``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html.parser
import http.server
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {"desktop": (1280, 900, False), "phone": (390, 844, True)}  # css px, mobile flag
PAGE_BUDGET_BYTES = 3 * 1024 * 1024
INSTALL_HINT = (
    "the browser test needs Chromium and its WebDriver: on Debian/Ubuntu run "
    "`apt-get update && apt-get install -y chromium chromium-driver` (as root), "
    "and `pip install selenium` (requirements.txt pins it)"
)


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    browser = next((shutil.which(n) for n in names if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@dataclass
class Problem:
    page: str
    kind: str
    message: str
    width: str = ""

    def __str__(self) -> str:
        at = f" [{self.width}]" if self.width else ""
        return f"{self.page}{at}: {self.kind}: {self.message}"


@dataclass
class PageResult:
    page: str
    problems: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # figures, views, formulas, links, requests
    screenshots: list[Path] = field(default_factory=list)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A static server for ``directory`` on 127.0.0.1 (a free port), in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# Runs in the page (Selenium's execute_async_script): waits until the page has settled (MathJax
# done, every plotly figure and circuitsvis view drawn, or 15 s), then measures everything.
_INSPECT_JS = r"""
const done = arguments[arguments.length - 1];
const started = Date.now();
function views() { return Array.from(document.querySelectorAll('[id^="circuits-vis-"]')); }
function figures() { return Array.from(document.querySelectorAll('.plotly-graph-div')); }
function settled() {
  if (document.readyState !== 'complete') return false;
  if (figures().some(gd => !gd._fullLayout)) return false;
  if (views().some(v => v.children.length === 0)) return false;
  return true;
}
async function run() {
  while (!settled() && Date.now() - started < 15000) await new Promise(r => setTimeout(r, 100));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  await new Promise(r => setTimeout(r, 300));  // plotly's responsive resize, React effects
  const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const cs = getComputedStyle(col), cr = col.getBoundingClientRect();
  const column = {left: cr.left + parseFloat(cs.paddingLeft), right: cr.right - parseFloat(cs.paddingRight)};
  const box = el => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width, height: r.height}; };
  const out = {column: column, viewport: window.innerWidth,
               scrollWidth: document.documentElement.scrollWidth, figures: [], views: [], formulas: [],
               code: [], links: [], images: [], banner: null};
  for (const gd of figures()) {
    const svg = gd.querySelector('svg.main-svg');
    const r = box(gd);
    const texts = [];
    for (const t of gd.querySelectorAll('svg text')) {
      const s = (t.textContent || '').trim();
      if (!s) continue;
      const tr = t.getBoundingClientRect();
      if (tr.width === 0) continue;
      if (tr.left < r.left - 1 || tr.right > r.right + 1) texts.push(s.slice(0, 40));
    }
    const titles = ['.gtitle', '.xtitle', '.ytitle'].map(q => gd.querySelector(q)).filter(t => t && t.textContent.trim());
    for (let i = 0; i < titles.length; i++) for (let j = i + 1; j < titles.length; j++) {
      const a = titles[i].getBoundingClientRect(), b = titles[j].getBoundingClientRect();
      if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
        texts.push('overlapping titles: ' + titles[i].textContent.slice(0, 30) + ' / ' + titles[j].textContent.slice(0, 30));
    }
    out.figures.push({id: gd.id, box: r, svg: !!svg && svg.getBoundingClientRect().width > 0,
      data: gd._fullData ? gd._fullData.length : 0,
      drawn: gd.querySelectorAll('.cartesianlayer g.trace, .cartesianlayer g.hm image, .pielayer g.trace, .barlayer g.trace').length,
      title: (gd.querySelector('.gtitle') || {}).textContent || '', clipped: texts});
  }
  for (const v of views()) {
    out.views.push({id: v.id, box: box(v), elements: v.querySelectorAll('*').length,
                    scrollWidth: v.scrollWidth, clientWidth: v.clientWidth});
  }
  for (const m of document.querySelectorAll('.math')) {
    out.formulas.push({text: m.textContent.slice(0, 60), typeset: !!m.querySelector('mjx-container'),
                       error: !!m.querySelector('mjx-merror')});
  }
  for (const pre of document.querySelectorAll('.cell_input pre')) {
    if (pre.scrollWidth > pre.clientWidth + 1) {
      const longest = pre.textContent.split('\n').reduce((a, b) => b.length > a.length ? b : a, '');
      out.code.push({chars: longest.length, line: longest.slice(0, 60)});
    }
  }
  for (const a of document.querySelectorAll('a[href]')) out.links.push(a.href);
  for (const img of document.querySelectorAll('img')) {
    out.images.push({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0});
  }
  out.scripts = Array.from(document.scripts).map(s => s.src).filter(Boolean).map(s => s.split('?')[0]);
  const banner = document.querySelector('.bd-header-announcement');
  if (banner) out.banner = {text: banner.textContent.trim().slice(0, 200), height: banner.offsetHeight};
  done(out);
}
run().catch(e => done({error: String(e)}));
"""


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


class SiteChecker:
    """One headless Chromium and one loopback server for a built site (use as a context)."""

    def __init__(self, html_dir: Path, screenshots: Path | None = None, stand_in: bool | None = None):
        self.html_dir = Path(html_dir).resolve()
        self.screenshots = Path(screenshots) if screenshots else None
        self.stand_in = stand_in
        self._ids: dict[str, set[str] | None] = {}

    def __enter__(self) -> "SiteChecker":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = find_browser()
        if not found:
            raise RuntimeError(INSTALL_HINT)
        browser, driver = found
        self.server, self.origin = serve(self.html_dir)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--force-device-scale-factor=1", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--mute-audio",
            # The network, blocked: no host name resolves except the loopback address, and every
            # request that is not for the loopback goes to a proxy that does not exist.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download drivers
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_script_timeout(60)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd("Network.enable", {})
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.driver.quit()
        finally:
            self.server.shutdown()
            self.server.server_close()

    # -- pages ------------------------------------------------------------------------------
    def pages(self) -> list[str]:
        """Every HTML page of the site (relative paths), static files excluded."""
        skip = ("_static/", "_sources/", "_images/", "_downloads/")
        return sorted(
            p.relative_to(self.html_dir).as_posix() for p in self.html_dir.rglob("*.html")
            if not p.relative_to(self.html_dir).as_posix().startswith(skip)
        )

    def check_all(self, pages: list[str] | None = None) -> list[PageResult]:
        return [self.check(page) for page in (pages or self.pages())]

    def check(self, page: str) -> PageResult:
        result = PageResult(page)
        self._check_size(page, result)
        for width_name in WIDTHS:
            self._check_at(page, width_name, result)
        return result

    def _check_size(self, page: str, result: PageResult) -> None:
        path = self.html_dir / page
        total = path.stat().st_size
        text = path.read_text(encoding="utf-8", errors="replace")
        for src in set(_attr_values(text, "img", "src")):
            target = (path.parent / urllib.parse.unquote(src.split("#")[0])).resolve()
            if "://" not in src and target.is_file() and "_static" not in target.parts:
                total += target.stat().st_size
        result.counts["bytes"] = total
        if total > PAGE_BUDGET_BYTES:
            result.problems.append(Problem(page, "size", f"{total / 1e6:.1f} MB (budget 3 MB without shared scripts)"))

    def _check_at(self, page: str, width_name: str, result: PageResult) -> None:
        driver = self.driver
        width, height, mobile = WIDTHS[width_name]
        driver.set_window_size(width, height)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        driver.get_log("browser"), driver.get_log("performance")  # drop earlier pages' entries
        url = self.origin + page
        driver.get(url)
        state = driver.execute_async_script(_INSPECT_JS)
        console = driver.get_log("browser")
        requests = self._requests(driver.get_log("performance"))

        def add(kind: str, message: str) -> None:
            result.problems.append(Problem(page, kind, message, width_name))

        if "error" in state:
            add("console", f"the page inspection script failed: {state['error']}")
            return
        for entry in console:
            if entry.get("level") == "SEVERE":
                add("console", entry.get("message", "")[:300])
        twice = sorted({u for u in state["scripts"] if state["scripts"].count(u) > 1})
        for u in twice:
            add("scripts", f"script loaded more than once: {u[len(self.origin):]}")
        outside = sorted({u for u in requests if not u.startswith(self.origin)})
        for u in outside:
            add("network", f"request left the site: {u[:200]}")
        result.counts.setdefault("requests", 0)
        result.counts["requests"] = max(result.counts["requests"], len(requests))
        column = state["column"]

        def too_wide(box) -> bool:
            return box["left"] < column["left"] - 1 or box["right"] > column["right"] + 1

        for fig in state["figures"]:
            name = f"figure {fig['title'] or fig['id']!r}"
            if not fig["svg"] or fig["data"] == 0 or fig["drawn"] == 0:
                add("plotly", f"{name} not drawn (svg={fig['svg']}, traces={fig['data']}, drawn={fig['drawn']})")
            if too_wide(fig["box"]):
                add("width", f"{name} is {fig['box']['width']:.0f} px, wider than the column "
                             f"({column['right'] - column['left']:.0f} px)")
            if fig["clipped"]:
                add("width", f"{name}: labels cut off at its edge or overlapping: {fig['clipped'][:4]}")
        for view in state["views"]:
            if view["elements"] < 3 or view["box"]["height"] < 20:
                add("circuitsvis", f"attention view {view['id']} rendered nothing")
            elif too_wide(view["box"]) or view["scrollWidth"] > view["clientWidth"] + 1:
                add("width", f"attention view {view['id']} is wider than the column")
        for formula in state["formulas"]:
            if not formula["typeset"] or formula["error"]:
                add("math", f"formula not typeset: {formula['text']!r}")
        if state["scrollWidth"] > state["viewport"] + 1:
            add("width", f"the page scrolls sideways ({state['scrollWidth']} px > {state['viewport']} px)")
        if width_name == "desktop":
            for code in state["code"]:
                add("width", f"code line of {code['chars']} characters wider than the column: {code['line']!r}")
            self._check_links(page, url, state, add)
        if self.stand_in:
            banner = state["banner"]
            if not banner or not banner["height"] or "stand-in" not in banner["text"].lower():
                add("banner", "no stand-in banner on a stand-in build")
        if self.stand_in is False and state["banner"] and "stand-in" in state["banner"]["text"].lower():
            add("banner", "a stand-in banner on a build with real weights")
        result.counts.update({f"figures": len(state["figures"]), "views": len(state["views"]),
                              "formulas": len(state["formulas"]), "links": len(state["links"])})
        if self.screenshots:
            result.screenshots.append(self._screenshot(page, width_name))

    def _requests(self, performance_log) -> list[str]:
        urls = []
        for entry in performance_log:
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not url.startswith(("data:", "blob:", "about:")):
                    urls.append(url)
        return urls

    def _check_links(self, page: str, url: str, state: dict, add) -> None:
        for href in state["links"]:
            if not href.startswith(self.origin):
                continue  # outside links are only followed when a reader clicks them
            target, _, fragment = href.partition("#")
            ids = self._page_ids(target)
            if ids is None:
                add("link", f"internal link to a missing page: {href[len(self.origin):]}")
            elif fragment and urllib.parse.unquote(fragment) not in ids:
                add("link", f"internal link to a missing anchor: {href[len(self.origin):]}")
        for image in state["images"]:
            if not image["src"].startswith(self.origin):
                add("image", f"image from outside the site: {image['src'][:200]}")
            elif not image["ok"]:
                add("image", f"image does not load: {image['src'][len(self.origin):]}")

    def _page_ids(self, target: str) -> set[str] | None:
        """The ids of a page of this site (None if it does not load)."""
        if target not in self._ids:
            try:
                with urllib.request.urlopen(target, timeout=10) as response:
                    body = response.read().decode("utf-8", errors="replace")
                    html_type = "html" in response.headers.get("Content-Type", "")
            except urllib.error.URLError:
                self._ids[target] = None
            else:
                parser = _Ids()
                if html_type:
                    parser.feed(body)
                self._ids[target] = parser.ids
        return self._ids[target]

    def _screenshot(self, page: str, width_name: str) -> Path:
        driver = self.driver
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height, mobile = WIDTHS[width_name]
        full = int(min(max(size["height"], height), 30000))
        # The whole page as one tall viewport, then back (figures keep their width: only the
        # height changes, and plotly's responsive sizing follows the width).
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": full, "deviceScaleFactor": 1, "mobile": mobile})
        time.sleep(0.5)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        name = page[: -len(".html")].replace("/", "__") + (".phone" if width_name == "phone" else "") + ".png"
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _attr_values(text: str, tag: str, attr: str) -> list[str]:
    values: list[str] = []

    class Collect(html.parser.HTMLParser):
        def handle_starttag(self, name, attrs):
            if name == tag:
                values.extend(v for k, v in attrs if k == attr and v)

    Collect().feed(text)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--stand-in", dest="stand_in", action="store_true", default=None,
                        help="expect the stand-in banner (default: read _build/timings.json)")
    parser.add_argument("--no-stand-in", dest="stand_in", action="store_false")
    parser.add_argument("--only", nargs="*", help="pages relative to HTML_DIR")
    args = parser.parse_args(argv)
    if not find_browser():
        print(f"[check-site] {INSTALL_HINT}", file=sys.stderr)
        return 2
    stand_in = args.stand_in
    timings = args.html.parent / "timings.json"
    if stand_in is None and timings.exists():
        stand_in = json.loads(timings.read_text()).get("weights") == "random"
    start = time.perf_counter()
    with SiteChecker(args.html, args.screenshots, stand_in) as checker:
        results = checker.check_all(args.only)
    if not results:
        print(f"[check-site] no pages in {args.html}", file=sys.stderr)
        return 1
    problems = [p for r in results for p in r.problems]
    for r in results:
        flag = "ok" if not r.problems else f"{len(r.problems)} problem(s)"
        print(f"[check-site] {r.page}: {flag} {r.counts}")
    for p in problems:
        print(f"[check-site]   {p}")
    print(f"[check-site] {len(results)} pages, {len(problems)} problems, "
          f"{time.perf_counter() - start:.1f} s; screenshots in {args.screenshots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
