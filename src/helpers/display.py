"""What a notebook shows besides plots: the model banner and circuitsvis views.

circuitsvis decides by itself between a tiny CDN snippet and ~1.3 MB of inlined JavaScript,
by probing google.com for a second at display time; build machines offline silently get the
heavy variant and outputs differ between machines. ``show_attention`` always picks
explicitly: ``mode="cdn"`` (the default, or ``CASEBOOK_CV_MODE``), ``"inline"`` (works
offline, heavy) or ``"book"`` (the default in the book build: the site's own copy of the
bundle, ``helpers.book_html``).
"""

from __future__ import annotations

import html
import os
import warnings
from typing import Sequence

from IPython.display import HTML, display

from .book_html import circuitsvis_book_html
from .models import is_stand_in
from .plotting import head_label, setup_plotting

__all__ = ["setup_notebook", "model_banner", "attention_view", "show_attention", "token_effect_view", "CV_MODES"]

CV_MODES = ("cdn", "inline", "book")


def setup_notebook() -> None:
    """One call at the top of every chapter: plotting renderer, quiet library warnings."""
    setup_plotting()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_STAND_IN_TEXT = (
    "This page was computed with the <b>stand-in</b>: GPT-2's exact architecture and real "
    "tokenizer, but <b>random weights</b> (seed {seed}). Prompts, token positions, shapes and "
    "runtime are the real model's; every number and figure shows the pipeline, <b>not "
    "GPT-2's behaviour</b>, and scorecard comparisons do not apply. Run the chapter with "
    "<code>weights=\"pretrained\"</code> (e.g. on Colab) for the real results."
)


def model_banner(model) -> HTML:
    """A box naming the model; a prominent warning box when it is the stand-in."""
    name = html.escape(str(getattr(model, "casebook_name", "unknown model")))
    cfg = model.cfg
    shape = f"{cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}"
    if is_stand_in(model):
        body = _STAND_IN_TEXT.format(seed=getattr(model, "casebook_seed", "?"))
        return HTML(
            '<div class="admonition warning casebook-stand-in" style="border-left:6px solid '
            '#d9822b;background:#fff4e5;padding:0.6em 1em;margin:0.5em 0;color:#222;">'
            f'<p class="admonition-title" style="font-weight:bold;margin:0 0 0.3em 0;">'
            f"⚠ Stand-in model: random weights, not GPT-2 ({name}: {shape})</p>"
            f"<p style=\"margin:0;\">{body}</p></div>"
        )
    return HTML(
        '<div class="admonition note casebook-model" style="border-left:6px solid #2b7bd9;'
        'background:#eef5ff;padding:0.6em 1em;margin:0.5em 0;color:#222;">'
        f'<p class="admonition-title" style="font-weight:bold;margin:0;">Model: {name}, '
        f"pretrained weights ({shape}, on {html.escape(str(cfg.device))})</p></div>"
    )


def _cv_mode(mode: str | None) -> str:
    """The circuitsvis output mode: the argument, else ``CASEBOOK_CV_MODE``, else ``"book"``
    in a book build (``CASEBOOK_BUILD``) and ``"cdn"`` elsewhere."""
    default = "book" if os.environ.get("CASEBOOK_BUILD") else "cdn"
    mode = mode or os.environ.get("CASEBOOK_CV_MODE", default)
    if mode not in CV_MODES:
        raise ValueError(
            f"circuitsvis mode {mode!r} is not one of {CV_MODES}: use 'cdn' (small, the reader "
            f"needs internet), 'inline' (works offline, ~1.3 MB per view) or 'book' (the built "
            f"site's own copy of the bundle)."
        )
    return mode


def _cv_html(view, mode: str) -> HTML:
    """A rendered circuitsvis view as HTML in the given mode."""
    if mode == "book":
        return HTML(circuitsvis_book_html(view))
    return HTML(view.cdn_src if mode == "cdn" else view.local_src)


def token_effect_view(tokens: Sequence[str], values, labels: Sequence[str], *, mode: str | None = None) -> HTML:
    """circuitsvis ``colored_tokens_multi``: each token coloured by one of several values.

    ``values``: ``[n_tokens, n_labels]`` (e.g. summed estimated effects per token for
    embeddings, heads, neurons); the reader picks the column to colour by.
    """
    import circuitsvis as cv
    import torch

    mode = _cv_mode(mode)
    values = torch.as_tensor(values, dtype=torch.float32)
    view = cv.tokens.colored_tokens_multi(tokens=list(tokens), values=values, labels=list(labels))
    return _cv_html(view, mode)


def attention_view(
    tokens: Sequence[str],
    patterns,
    heads: Sequence[tuple[int, int]] | None = None,
    *,
    mode: str | None = None,
) -> HTML:
    """One circuitsvis view of attention patterns for one prompt, as an IPython ``HTML``.

    ``tokens``: the prompt's string tokens (``model.to_str_tokens``); ``patterns``:
    ``[n_heads_shown, seq, seq]`` (dest × source); ``heads``: ``(layer, head)`` of each
    pattern, used as the ``L.H`` names. ``mode``: ``"cdn"``, ``"inline"`` or ``"book"`` (above).
    """
    import circuitsvis as cv

    mode = _cv_mode(mode)
    if hasattr(patterns, "detach"):
        patterns = patterns.detach().float().cpu()
    names = [head_label(l, h) for l, h in heads] if heads is not None else None
    view = cv.attention.attention_heads(
        attention=patterns, tokens=list(tokens), attention_head_names=names
    )
    return _cv_html(view, mode)


def show_attention(tokens, patterns, heads=None, *, mode: str | None = None) -> None:
    """Display ``attention_view(...)`` (same arguments)."""
    display(attention_view(tokens, patterns, heads, mode=mode))


def tqdm(*args, **kwargs):
    """``tqdm.auto``'s progress bar, switched off when ``TQDM_DISABLE`` is set.

    tqdm's notebook bar (chosen once ipywidgets is installed) passes ``disable=False`` itself
    and so ignores ``TQDM_DISABLE``: the book build would store widget outputs (and the page
    would fetch widget scripts from a CDN). Every helper's progress bar goes through here.
    """
    from tqdm.auto import tqdm as _tqdm

    kwargs.setdefault("disable", os.environ.get("TQDM_DISABLE", "").strip().lower()
                      not in ("", "0", "false", "no"))
    return _tqdm(*args, **kwargs)

