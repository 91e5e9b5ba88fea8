"""Checks for the factual-recall chapter's exercises (``notebooks/04_factual_recall.ipynb``).

Method checks (on the notebook's model and one fact, compared with the toolkit):
:func:`check_trace_cell` (one causal-tracing cell: noise, restore, indirect effect, vs
:func:`helpers.tracing.causal_trace`) and :func:`check_knockout` (attention knockout at one
layer vs :func:`helpers.tracing.attention_knockout`). Short checks (seeded inputs, stored
answers): :func:`check_noise_scale`, :func:`check_gain_fit`.
"""

from __future__ import annotations

import math

import torch

from ..hooks import hook_name, logits_at_positions
from ..tracing import attention_knockout, causal_trace
from . import Case, CheckResult, check_on_model, run_check, stored_answers

__all__ = ["check_gain_fit", "check_knockout", "check_noise_scale", "check_trace_cell", "exercise_fact",
           "noise_draws"]

_FACT = ("The", " Eiffel Tower", " is located in the city of", " Paris")


def exercise_fact(model=None):
    """``(tokens [1, L], answer, first, last)``: "The Eiffel Tower is located in the city
    of" (no BOS), the token of " Paris", and the subject's first and last positions."""
    from ..models import gpt2_tokenizer

    tok = gpt2_tokenizer()
    lead, subject, rest, answer = (tok.encode(s) for s in _FACT)
    ids = lead + subject + rest
    first, last = len(lead), len(lead) + len(subject) - 1
    return torch.tensor([ids]), answer[0], first, last


def noise_draws(n_samples: int, span: int, d_model: int, noise: float, seed: int = 0) -> torch.Tensor:
    """``[n_samples, span, d_model]``: the Gaussian noise :func:`helpers.tracing.causal_trace`
    adds to the subject's embeddings of its first prompt (std ``noise``, seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed * 100_003)
    return noise * torch.randn(n_samples, span, d_model, generator=g)


@torch.no_grad()
def check_trace_cell(model, fn, *, n_samples: int = 3, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [1, L], answer, first, last, draws [k, span, d_model], layer,
    position) -> float``: the indirect effect of restoring the clean hidden state after
    block ``layer`` (``resid_post``) at ``position``: the answer probability at the last
    token, averaged over the ``k`` noise draws added to the subject's embeddings, minus the
    same without restoring; compared with ``causal_trace(kind="resid")``."""
    tokens, answer, first, last = exercise_fact()
    noise = 0.5  # large enough to move the stand-in's probabilities too
    draws = noise_draws(n_samples, last - first + 1, model.cfg.d_model, noise)
    result = {}

    def trace():
        if not result:
            result["r"] = causal_trace(model, tokens, [answer], [first], [last], n_samples=n_samples,
                                       noise=noise, seed=0)
        return result["r"]

    n_layers = model.cfg.n_layers
    cases = []
    for layer, position in ((n_layers // 2, last), (max(n_layers // 3, 1), tokens.shape[1] - 1)):
        mistakes = {
            "you returned the restored probability; the indirect effect subtracts the "
            "probability with noise and no restoration":
                lambda L=layer, p=position: trace().scores[0, L, p],
            "you restored the hidden state before the block (resid_pre); restore the one "
            "after it (resid_post)":
                lambda L=layer, p=position: trace().indirect_effect[0, L - 1, p],
            "you restored the clean state at another position; restore it at `position` only":
                lambda L=layer, p=position: trace().indirect_effect[0, L, p - 1],
        }
        cases.append(Case(
            f"layer {layer}, position {position}",
            (model, tokens, answer, first, last, draws, layer, position),
            lambda L=layer, p=position: trace().indirect_effect[0, L, p],
            mistakes,
            names=("model", "tokens", "answer", "first", "last", "draws", "layer", "position"),
            baseline=0.0, floor=lambda: 1e-4 * float(trace().corrupted[0]),
        ))
    return check_on_model("causal tracing cell", fn, cases, quiet=quiet)


def _knock(model, tokens, answer, layer, edit, site="attn_scores"):
    name = hook_name(site, layer)
    lg = logits_at_positions(model, tokens.to(model.cfg.device), None, fwd_hooks=[(name, edit)])
    return float(lg.float().softmax(-1)[0, answer])


@torch.no_grad()
def check_knockout(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [1, L], answer, sources [L] bool, layer) -> float``: the answer
    probability at the last token when, in ``layer``, no head lets the last token attend to
    the ``sources`` positions (their attention scores set to −∞ before the softmax);
    compared with ``attention_knockout(window=1)``."""
    tokens, answer, first, last = exercise_fact()
    seq = tokens.shape[1]
    sources = torch.zeros(seq, dtype=torch.bool)
    sources[first:last + 1] = True
    q = seq - 1
    res = {}

    def knock():
        if not res:
            res["r"] = attention_knockout(model, tokens, [answer], sources[None], window=1)
        return res["r"]

    def renorm_not(layer):
        def edit(p, hook):
            p = p.clone()
            p[:, :, q, sources.to(p.device)] = 0.0
            return p
        return _knock(model, tokens, answer, layer, edit, site="pattern")

    def every_query(layer):
        def edit(s, hook):
            return s.masked_fill(sources.to(s.device)[None, None, None, :], -math.inf).nan_to_num(
                nan=-math.inf)
        return _knock(model, tokens, answer, layer, edit)

    def zero_scores(layer):
        def edit(s, hook):
            s = s.clone()
            s[:, :, q, sources.to(s.device)] = 0.0
            return s
        return _knock(model, tokens, answer, layer, edit)

    cases = []
    for layer in (model.cfg.n_layers // 2, model.cfg.n_layers - 2):
        cases.append(Case(
            f"the subject's positions blocked at layer {layer}", (model, tokens, answer, sources, layer),
            lambda L=layer: knock().knocked[0, L],
            {
                "you zeroed the attention weights after the softmax without renormalising the "
                "row; block the scores (−∞) before the softmax": lambda L=layer: renorm_not(L),
                "you blocked the subject for every query position; only the last token's row "
                "changes": lambda L=layer: every_query(L),
                "you set the scores to 0, which still lets the last token attend there; use −∞":
                    lambda L=layer: zero_scores(L),
            },
            names=("model", "tokens", "answer", "sources", "layer"),
            baseline=lambda: knock().clean[0], floor=1e-9,
        ))
    return check_on_model("attention knockout", fn, cases, quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded inputs)


def _noise_cases():
    g = torch.Generator().manual_seed(0)
    W_E = torch.randn(50, 8, generator=g) * torch.linspace(0.5, 2.0, 50)[:, None]
    tokens = torch.randint(0, 50, (3, 6), generator=g)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1:3] = mask[1, 2] = mask[2, 0:4] = True
    return [("3 prompts, subjects of 1–4 tokens", (W_E, tokens, mask))]


def check_noise_scale(fn) -> CheckResult:
    """``fn(W_E [vocab, d], tokens [n, L], mask [n, L] bool) -> scalar``."""
    return run_check("noise scale", fn, None, _noise_cases(), answers=stored_answers("noise scale"),
                     names=("W_E", "tokens", "mask"))


def _gain_cases():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, 16, generator=g) + 1.0  # a non-zero mean, so the intercept matters
    y = 0.7 + torch.einsum("k,nkd->nd", torch.tensor([1.5, 0.0, -0.5]), X)
    y = y + 0.1 * torch.randn(40, 16, generator=g)
    return [("40 prompts, 3 heads, d_model 16", (X, y))]


def check_gain_fit(fn) -> CheckResult:
    """``fn(X [n, k, d], y [n, d]) -> gains [k]``."""
    return run_check("head gains", fn, None, _gain_cases(), answers=stored_answers("head gains"),
                     names=("X", "y"), atol=1e-3)


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
