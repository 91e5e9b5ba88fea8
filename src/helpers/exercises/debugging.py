"""Checks for the debugging chapter's exercises (``notebooks/06_debugging.ipynb``).

Method checks (on the notebook's model and an IOI prompt, compared with the debugger's
:func:`helpers.debugger.ablation_effects`): :func:`check_zero_ablation` (the real effect of
zero-ablating one head) and :func:`check_act_times_grad` (its activation × gradient
estimate). Short checks (seeded tensors, stored answers): :func:`check_pair_direct_effect`,
:func:`check_rank_correlation`.
"""

from __future__ import annotations

import torch

from ..hooks import hook_name
from . import Case, CheckResult, check_on_model, run_check, stored_answers

__all__ = ["check_act_times_grad", "check_pair_direct_effect", "check_rank_correlation",
           "check_zero_ablation", "exercise_prompt"]

PROMPT = " When Mary and John went to the store, John gave a drink to"


def exercise_prompt(model):
    """``(tokens [1, S], target, distractor)``: the chapter's IOI prompt (no BOS), " Mary"
    and " John"."""
    tokens = model.to_tokens(PROMPT, prepend_bos=False).cpu()
    ids = [model.to_tokens(w, prepend_bos=False)[0, 0].item() for w in (" Mary", " John")]
    return tokens, int(ids[0]), int(ids[1])


def _heads(model):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return [(9, 9), (10, 7)] if L >= 12 and H >= 10 else [(L - 1, 0), (L // 2, H - 1)]


def _effects(model, tokens, target, distractor, L, h):
    from ..debugger import Debugger, ablation_effects

    dbg = Debugger(model, tokens[0], target, distractor)
    row = ablation_effects(dbg, [f"H{L}.{h}"]).iloc[0]
    return dbg, float(row["estimated"]), float(row["actual"])


def _ld(model, tokens, target, distractor, hooks=()):
    logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=list(hooks))[0, -1]
    return float(logits[target] - logits[distractor])


def _zero(name, h=None):
    def hook(t, hook):
        t = t.clone()
        if h is None:
            t[:] = 0.0
        else:
            t[:, h] = 0.0
        return t
    return (name, hook)


@torch.no_grad()
def check_zero_ablation(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [1, S], layer, head, target, distractor) -> float``: how much the
    logit difference target − distractor at the last token drops when head ``layer.head``'s
    attention pattern is set to zero (before − after); compared with ``ablation_effects``."""
    tokens, target, distractor = exercise_prompt(model)
    cases = []
    for L, h in _heads(model):
        before = _ld(model, tokens, target, distractor)
        cases.append(Case(
            f"head {L}.{h}", (model, tokens, L, h, target, distractor),
            lambda L=L, h=h: _effects(model, tokens, target, distractor, L, h)[2],
            {
                "you returned the logit difference after the ablation, not the drop (before − after)":
                    lambda L=L, h=h: _ld(model, tokens, target, distractor,
                                         [_zero(hook_name("pattern", L), h)]),
                "you zeroed the whole attention layer's output, not one head":
                    lambda L=L: before - _ld(model, tokens, target, distractor,
                                             [_zero(hook_name("attn_out", L))]),
            },
            names=("model", "tokens", "layer", "head", "target", "distractor"),
            baseline=0.0,
        ))
    return check_on_model("zero ablation of a head", fn, cases,
                          sign_hint="The effect is the value before minus the value after.", quiet=quiet)


def _grad_only(model, tokens, target, distractor, L, h, weight_by_pattern):
    name = hook_name("pattern", L)
    store = {}

    def keep(p, hook):
        p = p.detach().requires_grad_(True)
        store["p"] = p
        return p

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(name, keep)])[0, -1]
        (logits[target] - logits[distractor]).backward()
    p, g = store["p"][0, h], store["p"].grad[0, h]
    return float((g if not weight_by_pattern else p).sum())


def check_act_times_grad(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [1, S], layer, head, target, distractor) -> float``: the estimated
    effect of head ``layer.head``: the sum over its (query, key) pairs of attention
    probability × the gradient of the logit difference with respect to it; compared with
    the debugger's ``est_total_effect`` (``ablation_effects(...)["estimated"]``)."""
    tokens, target, distractor = exercise_prompt(model)
    cases = []
    for L, h in _heads(model):
        cases.append(Case(
            f"head {L}.{h}", (model, tokens, L, h, target, distractor),
            lambda L=L, h=h: _effects(model, tokens, target, distractor, L, h)[1],
            {
                "you summed the gradient alone; weight each pair's gradient by its attention "
                "probability (activation × gradient)":
                    lambda L=L, h=h: _grad_only(model, tokens, target, distractor, L, h, False),
                "you summed the attention probabilities alone; multiply each by the gradient":
                    lambda L=L, h=h: _grad_only(model, tokens, target, distractor, L, h, True),
            },
            names=("model", "tokens", "layer", "head", "target", "distractor"),
            baseline=0.0,
        ))
    return check_on_model("activation × gradient", fn, cases,
                          sign_hint="The gradient is of logit(target) − logit(distractor).", quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded tensors)


def _pair_cases():
    g = torch.Generator().manual_seed(6)
    cases = []
    for heads, src, d_head, d_model, scale in ((3, 5, 4, 16, 2.5), (2, 7, 8, 24, 0.4)):
        pattern = torch.randn(heads, src, generator=g).softmax(-1)
        v = torch.randn(src, heads, d_head, generator=g)
        W_O = torch.randn(heads, d_head, d_model, generator=g)
        direction = torch.randn(d_model, generator=g)
        cases.append((f"{heads} heads, {src} source tokens, scale {scale}",
                      (pattern, v, W_O, scale, direction)))
    return cases


def check_pair_direct_effect(fn) -> CheckResult:
    """``fn(pattern [heads, src], v [src, heads, d_head], W_O [heads, d_head, d_model],
    scale: float, direction [d_model]) -> [heads, src]``."""
    return run_check("pair direct effect", fn, None, _pair_cases(),
                     answers=stored_answers("pair direct effect"),
                     names=("pattern", "v", "W_O", "scale", "direction"),
                     sign_hint="The direction is W_U[:, target] − W_U[:, distractor], in that order.")


def _rank_cases():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, generator=g)
    effects = torch.randn(15, generator=g)
    estimates = effects + 0.7 * torch.randn(15, generator=g)
    return [("a monotone but curved relation", (x, x.exp() ** 3)),
            ("noisy estimates of 15 effects", (estimates, effects))]


def check_rank_correlation(fn) -> CheckResult:
    """``fn(x [n], y [n]) -> number`` (no ties in the test inputs)."""
    return run_check("rank correlation", fn, None, _rank_cases(), answers=stored_answers("rank correlation"),
                     names=("x", "y"))


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
