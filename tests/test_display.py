"""Plotting renderer choice, circuitsvis output mode, banner and scorecard verdicts."""

import plotly.io as pio
import torch

from helpers import Reference, Scorecard, heads_heatmap, model_banner
from helpers.display import attention_view
from helpers.plotting import BOOK_RENDERER, INTERACTIVE_RENDERER, setup_plotting


def test_renderer_stores_html_in_the_book(monkeypatch):
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    monkeypatch.setenv("CASEBOOK_BUILD", "1")
    assert setup_plotting() == BOOK_RENDERER == pio.renderers.default
    bundle = pio.renderers._build_mime_bundle({"data": [], "layout": {}}, renderers_string=BOOK_RENDERER)
    assert "text/html" in bundle and "application/vnd.plotly.v1+json" not in bundle
    monkeypatch.delenv("CASEBOOK_BUILD")
    assert setup_plotting() == INTERACTIVE_RENDERER
    monkeypatch.setenv("PLOTLY_RENDERER", "png")
    assert setup_plotting() == "png"


def test_circuitsvis_cdn_and_inline_are_explicit(monkeypatch):
    import circuitsvis.utils.render as render

    def no_probe():
        raise AssertionError("circuitsvis probed the network")

    monkeypatch.setattr(render, "internet_on", no_probe)
    tokens, pattern = ["A", " b", " c"], torch.tril(torch.ones(2, 3, 3)) / 3
    cdn = attention_view(tokens, pattern, [(9, 9), (10, 7)]).data
    inline = attention_view(tokens, pattern, [(9, 9), (10, 7)], mode="inline").data
    assert "unpkg.com/circuitsvis@" in cdn and len(cdn) < 20_000
    assert "unpkg.com" not in inline and len(inline) > 500_000
    assert '"9.9"' in cdn and '"10.7"' in cdn  # heads named L.H


def test_banner_marks_the_stand_in(small_stand_in):
    html = model_banner(small_stand_in).data
    assert "Stand-in model" in html and "random weights" in html
    small_stand_in.is_stand_in = False
    try:
        assert "Stand-in" not in model_banner(small_stand_in).data
    finally:
        small_stand_in.is_stand_in = True


def test_scorecard_verdicts():
    ref = Reference(3.56, "Wang et al. 2022, §2")
    real = Scorecard("real", stand_in=False)
    real.band("LD", ref, 3.4, 0.3, null=0).band("LD far", ref, 2.0, 0.3, null=0)
    real.band("rel", ref, 3.9, 0.1, relative=True, null=0)
    assert real.verdicts() == ["✓ holds", "✗ differs", "✓ holds"]
    assert not real.all_hold
    fake = Scorecard("stand-in", stand_in=True)
    fake.band("LD", ref, -0.2, 0.3, null=0).data_check("heads", Reference(144, "arch"), 143)
    assert fake.verdicts() == ["n/a (stand-in)", "✗ differs"]
    assert "stand-in" in fake._repr_html_()


def test_heads_heatmap_is_titled_and_labelled():
    fig = heads_heatmap(torch.zeros(12, 12), title="DLA per head", marked={"Name Mover": ["9.9", "10.0"]})
    assert fig.layout.title.text == "DLA per head"
    assert fig.layout.xaxis.title.text == "Head" and fig.layout.yaxis.title.text == "Layer"
    marker = fig.data[1]
    assert list(marker.x) == [9, 0] and list(marker.y) == [9, 10] and marker.name == "Name Mover"


def test_scatter_names_points_and_draws_the_diagonal_over_the_data():
    from helpers import scatter

    fig = scatter([1.0, 3.0], [2.0, -1.0], ["a", "b"], title="F(C\\K) vs F(M\\K)", xaxis="F(M \\ K)",
                  yaxis="F(C \\ K)", diagonal=True)
    assert fig.layout.title.text == "F(C\\K) vs F(M\\K)" and fig.layout.xaxis.title.text == "F(M \\ K)"
    points, diag = fig.data
    assert list(points.text) == ["a", "b"] and list(points.y) == [2.0, -1.0]
    assert diag.x[0] == diag.y[0] < -1.0 and diag.x[1] == diag.y[1] > 3.0  # covers every point
    assert len(scatter([1.0], [1.0], ["a"], title="t", xaxis="x", yaxis="y").data) == 1
