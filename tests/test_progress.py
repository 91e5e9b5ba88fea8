"""Progress bars: on for people, off in the book build (TQDM_DISABLE), in a notebook too."""

import io

from helpers.display import tqdm


def test_tqdm_disable_switches_every_helper_bar_off(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert tqdm(range(3), file=io.StringIO()).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not tqdm(range(3), file=io.StringIO()).disable
    monkeypatch.delenv("TQDM_DISABLE")
    bar = tqdm(range(3), file=io.StringIO())
    assert not bar.disable and list(bar) == [0, 1, 2]


def test_the_notebook_bar_is_off_too(monkeypatch):
    """tqdm's notebook bar forces disable=False itself; ours passes TQDM_DISABLE through."""
    from tqdm.notebook import tqdm as notebook_tqdm

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not notebook_tqdm(range(3)).disable  # tqdm's own bar ignores the variable
    monkeypatch.setattr("tqdm.auto.tqdm", notebook_tqdm)
    assert tqdm(range(3)).disable
