"""The offline site without a browser: outputs carry no library and no CDN, the assets come from
the installed packages, code fits the column, and a failed chapter leaves a readable report."""

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_CODE_LINE = 80  # characters: what fits the text column at the book's default width


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_book_figures_carry_no_library_and_follow_the_column(monkeypatch):
    from helpers.plotting import BOOK_RENDERER, setup_plotting

    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    monkeypatch.setenv("CASEBOOK_BUILD", "1")
    assert setup_plotting() == BOOK_RENDERER
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout=dict(title="A title"))
    bundle = pio.renderers._build_mime_bundle(fig.to_dict(), renderers_string=BOOK_RENDERER)
    html = bundle["text/html"]
    assert list(bundle) == ["text/html"]
    assert "Plotly.newPlot(" in html and 'class="plotly-graph-div"' in html
    assert "<script src" not in html and "https://" not in html  # no plotly.js, no MathJax, no CDN
    assert '"responsive": true' in html and "width:100%" in html
    assert "plotly_relayout" in html  # long titles are wrapped to the figure's width


def test_heads_heatmap_has_no_fixed_width():
    from helpers import heads_heatmap

    fig = heads_heatmap(torch.zeros(12, 12), title="t", marked={"a": ["9.9"]})
    assert fig.layout.width is None  # the column decides (responsive), desktop and phone


def test_circuitsvis_book_mode_uses_the_sites_bundle(monkeypatch):
    import circuitsvis.utils.render as render

    from helpers.display import attention_view

    monkeypatch.setattr(render, "internet_on", lambda: pytest.fail("circuitsvis probed the network"))
    monkeypatch.delenv("CASEBOOK_CV_MODE", raising=False)
    monkeypatch.setenv("CASEBOOK_BUILD", "1")
    tokens, pattern = ["A", " b", " </script>"], torch.tril(torch.ones(2, 3, 3)) / 3
    html = attention_view(tokens, pattern, [(9, 9), (10, 7)]).data  # the build's default: "book"
    assert re.search(r'<div id="circuits-vis-[\w-]+"[^>]*></div>', html) and "/>" not in html
    assert "CircuitsVis.render(" in html and "CircuitsVis.AttentionHeads" in html
    assert "unpkg.com" not in html and "import " not in html and len(html) < 20_000
    assert "</script>" not in html[: html.rindex("</script>")]  # a token cannot close the script
    assert '"9.9"' in html and '"10.7"' in html
    monkeypatch.delenv("CASEBOOK_BUILD")
    assert "unpkg.com" in attention_view(tokens, pattern).data  # Jupyter: the CDN, as before


def test_assets_are_copied_from_the_installed_packages(tmp_path):
    import circuitsvis
    import plotly

    book_assets = _script("book_assets")
    written = book_assets.copy_assets(tmp_path)
    plotly_js = tmp_path / book_assets.PLOTLY_JS
    assert plotly_js.read_bytes() == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    bundle = (tmp_path / book_assets.CIRCUITSVIS_JS).read_text(encoding="utf-8")
    assert bundle.startswith('"use strict";var CircuitsVis=') and "sourceMappingURL" not in bundle
    assert (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").stat().st_size - len(bundle) < 100
    mathjax = tmp_path / book_assets.MATHJAX_JS
    assert mathjax.exists() and 'VERSION="3.' in mathjax.read_text(encoding="utf-8")
    assert list((mathjax.parent / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert not list(mathjax.parent.glob("tex-svg*"))  # combined builds the book never loads
    total = sum(p.stat().st_size for p in written)
    assert total < 25e6, total


def test_staged_config_loads_the_extension_and_local_mathjax():
    book_assets = _script("book_assets")
    config = book_assets.configure({"sphinx": {"config": {"bibtex_reference_style": "author_year"}}})
    assert config["sphinx"]["local_extensions"]["book_assets"] == str(ROOT / "scripts")
    assert config["sphinx"]["config"]["mathjax_path"] == book_assets.MATHJAX_JS
    assert config["sphinx"]["config"]["bibtex_reference_style"] == "author_year"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_the_column(path):
    nb = nbformat.read(path, as_version=4)
    long_lines = []
    for index, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type != "code" or tags & {"remove-cell", "remove-input"}:
            continue  # not shown in the book
        long_lines += [f"cell {index}: {line!r} ({len(line)})" for line in cell.source.splitlines()
                       if len(line) > MAX_CODE_LINE]
    assert not long_lines, f"code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long_lines)


def test_a_failed_chapter_leaves_its_notebook_and_traceback(tmp_path, capsys):
    build_book = _script("build_book")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("weights = 'random'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('first cell ran')"),
        nbformat.v4.new_code_cell("raise RuntimeError('chapter broke here')"),
        nbformat.v4.new_code_cell("print('never runs')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, source)
    reports = tmp_path / "reports"
    (tmp_path / "stage").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        build_book.execute(source, tmp_path / "stage" / "99_broken.ipynb", {"weights": "random"},
                           timeout=120, reports=reports)
    assert exit_info.value.code == 1
    executed = nbformat.read(reports / "99_broken.ipynb", as_version=4)
    outputs = {c.source: c.get("outputs", []) for c in executed.cells if c.cell_type == "code"}
    assert outputs["print('first cell ran')"][0]["text"].strip() == "first cell ran"
    assert outputs["raise RuntimeError('chapter broke here')"][0]["output_type"] == "error"
    assert not outputs["print('never runs')"]
    trace = (reports / "99_broken.traceback.txt").read_text()
    assert "RuntimeError" in trace and "chapter broke here" in trace and "\x1b[" not in trace
    said = capsys.readouterr()
    assert str(reports / "99_broken.traceback.txt") in said.out + said.err
