"""Checks for the IOI chapter's exercises (``notebooks/01_ioi.ipynb``).

Method checks (on the notebook's model, a few IOI prompts from
:func:`helpers.cases.ioi.make_ioi_dataset` and their p_ABC twins, compared with the
toolkit): :func:`check_patch_head_z` (activation patching of one head's ``z`` vs
:func:`helpers.patching.patch_heads`), :func:`check_path_patch` (one sender → receivers'
queries vs :func:`helpers.path_patching.path_patch`), :func:`check_faithfulness` (mean
ablation of everything outside a circuit vs :class:`helpers.ablation.CircuitEvaluator`).
Short checks (seeded tensors, stored answers): :func:`check_copy_score`,
:func:`check_mean_ablation`.
"""

from __future__ import annotations

import torch

from ..ablation import CircuitEvaluator, circuit_score, head_means
from ..hooks import capture, hook_name
from ..metrics import LogitDiffMetric, metric_scalar
from ..patching import patch_heads, run_with_patches
from ..path_patching import path_patch, path_patch_reference
from . import Case, CheckResult, check_on_model, run_check, stored_answers

__all__ = ["check_copy_score", "check_faithfulness", "check_mean_ablation", "check_patch_head_z",
           "check_path_patch", "exercise_prompts"]


# ---------------------------------------------------------------- prompts for method checks


def exercise_prompts(model, n_prompts: int = 4, *, seed: int = 11):
    """``(clean, corrupted, metric)``: ``n_prompts`` IOI prompts of one template (equal
    lengths), their p_ABC twins and the logit difference IO − S at END (a
    :class:`~helpers.metrics.LogitDiffMetric`)."""
    from ..cases.ioi import make_ioi_dataset

    clean = make_ioi_dataset(n_prompts, templates=[1], seed=seed)
    corrupt = clean.corrupt_abc(seed=seed + 1)
    metric = LogitDiffMetric(clean.io_tokens.to(model.cfg.device), clean.s_tokens.to(model.cfg.device),
                             clean.positions["END"].to(model.cfg.device))
    return clean, corrupt, metric


def _heads(model) -> list[tuple[int, int]]:
    """Two heads to patch: the name movers 9.9 and 10.0 when the model has them."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L >= 12 and H >= 10:
        return [(9, 9), (10, 0)]
    return [(L - 1, H - 1), (max(L - 2, 0), 0)]


# ---------------------------------------------------------------- activation patching of z


def _pattern_patch(model, clean, corrupt, layer, head, metric):
    """Patching the head's attention pattern instead of its output ``z``."""
    name = hook_name("pattern", layer)
    _, src = capture(model, corrupt, [name])

    def put(p, hook):
        p = p.clone()
        p[:, head] = src[name][:, head].to(p)
        return p

    return metric_scalar(metric(model.run_with_hooks(clean, fwd_hooks=[(name, put)])))


@torch.no_grad()
def check_patch_head_z(model, fn, *, n_prompts: int = 4, quiet: bool = False) -> CheckResult:
    """``fn(model, clean_tokens, corrupted_tokens, layer, head, metric) -> float``: the metric
    of the clean run with head ``layer.head``'s output ``z`` (``blocks.L.attn.hook_z``, all
    positions) taken from the corrupted run; compared with ``patch_heads``."""
    clean, corrupt, metric = exercise_prompts(model, n_prompts)
    dev = model.cfg.device
    c_tok, x_tok = clean.tokens.to(dev), corrupt.tokens.to(dev)
    clean_value = metric_scalar(metric(model(c_tok)))
    cases = []
    for L, h in _heads(model):
        layer_heads = [(L, i) for i in range(model.cfg.n_heads)]
        cases.append(Case(
            f"head {L}.{h} on {n_prompts} prompts", (model, c_tok, x_tok, L, h, metric),
            lambda L=L, h=h: patch_heads(model, c_tok, x_tok, metric, heads=[(L, h)])[L, h],
            {
                "wrong direction: you ran the corrupted prompts and patched in the clean z; "
                "run the clean prompts and patch in the corrupted head":
                    lambda L=L, h=h: patch_heads(model, c_tok, x_tok, metric, heads=[(L, h)],
                                                 direction="clean->corrupted")[L, h],
                "you patched every head of the layer; index the head axis of z "
                "([batch, pos, head, d_head]) to patch one head":
                    lambda L=L: metric_scalar(metric(run_with_patches(model, c_tok, x_tok, heads=layer_heads))),
                "you patched the attention pattern, not the head's output z (the values "
                "still come from the clean run)":
                    lambda L=L, h=h: _pattern_patch(model, c_tok, x_tok, L, h, metric),
                "this is the clean run's metric: the hook never changed anything (check the "
                "hook name, blocks.L.attn.hook_z, and that the hook returns the new z)":
                    lambda: metric_scalar(metric(model(c_tok))),
            },
            names=("model", "clean_tokens", "corrupted_tokens", "layer", "head", "metric"),
            baseline=clean_value,
        ))
    return check_on_model("activation patching of z", fn, cases, quiet=quiet)


# ---------------------------------------------------------------- path patching


def _receiver_heads(model):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L >= 12 and H >= 11:  # an S-inhibition head into the name movers' queries
        return (8, 10), [(9, 9), (10, 0), (9, 6)]
    return (max(L // 2 - 1, 0), 0), [(L - 1, 0), (L - 1, H - 1)]


def _unfrozen(model, clean, corrupt, sender, receivers, metric):
    """Pass C without freezing the other heads."""
    L, h = sender
    z = hook_name("z", L)
    _, src = capture(model, corrupt, [z])

    def put(t, hook):
        t = t.clone()
        t[:, :, h] = src[z][:, :, h].to(t)
        return t

    names = sorted({hook_name("q", rl) for rl, _ in receivers})
    _, pass_c = capture(model, clean, names, fwd_hooks=[(z, put)])
    hooks = []
    for name in names:
        rl = int(name.split(".")[1])
        hs = [rh for l2, rh in receivers if l2 == rl]

        def rep(t, hook, _n=name, _hs=hs):
            t = t.clone()
            t[:, :, _hs] = pass_c[_n][:, :, _hs].to(t)
            return t

        hooks.append((name, rep))
    return metric_scalar(metric(model.run_with_hooks(clean, fwd_hooks=hooks)))


@torch.no_grad()
def check_path_patch(model, fn, *, n_prompts: int = 3, quiet: bool = False) -> CheckResult:
    """``fn(model, clean_tokens, corrupted_tokens, sender, receivers, metric) -> float``: path
    patching (Wang et al., App. B) from ``sender`` ``(layer, head)`` to the queries of the
    ``receivers`` heads; compared with ``path_patch(..., receiver_input="q")``."""
    clean, corrupt, metric = exercise_prompts(model, n_prompts, seed=13)
    dev = model.cfg.device
    c_tok, x_tok = clean.tokens.to(dev), corrupt.tokens.to(dev)
    sender, receivers = _receiver_heads(model)

    def pp(**kw):
        return lambda: path_patch(model, c_tok, x_tok, metric, senders=[sender], **kw)[sender]

    case = Case(
        f"sender {sender[0]}.{sender[1]} → queries of {', '.join(f'{a}.{b}' for a, b in receivers)}",
        (model, c_tok, x_tok, sender, receivers, metric),
        # the plain reference (hooked passes, as a learner writes them): on the stand-in the
        # effects are ~1e-6, the size of the fast engine's float rounding
        lambda: path_patch_reference(model, c_tok, x_tok, metric, senders=[sender], receivers=receivers,
                                     receiver_input="q")[sender],
        {
            "in pass C only the sender was patched and the other heads ran freely; freeze "
            "every other head's z at its clean value, so that only the direct path counts":
                lambda: _unfrozen(model, c_tok, x_tok, sender, receivers, metric),
            "you replaced the receivers' keys; this exercise replaces their queries "
            "(blocks.L.attn.hook_q)": pp(receivers=receivers, receiver_input="k"),
            "you scored pass C's logits; run pass D (clean run, only the receivers' queries "
            "replaced) and score that": pp(receivers="logits"),
            "that is activation patching of the sender (every path to the logits), not "
            "path patching": lambda: patch_heads(model, c_tok, x_tok, metric, heads=[sender])[sender],
        },
        names=("model", "clean_tokens", "corrupted_tokens", "sender", "receivers", "metric"),
        baseline=lambda: metric_scalar(metric(model(c_tok))),
    )
    return check_on_model("path patching", fn, [case], quiet=quiet)


# ---------------------------------------------------------------- faithfulness


@torch.no_grad()
def check_faithfulness(model, fn, *, n_prompts: int = 4, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens, metric, means, circuit_heads) -> (F_M, F_C)``: the metric of the
    model, and with every head outside ``circuit_heads`` mean-ablated (``means``
    ``[n, seq, n_layers, n_heads, d_head]`` from :func:`helpers.ablation.head_means`);
    compared with :class:`helpers.ablation.CircuitEvaluator`."""
    clean, corrupt, metric = exercise_prompts(model, n_prompts, seed=17)
    dev = model.cfg.device
    tokens = clean.tokens.to(dev)
    means = head_means(model, corrupt.tokens)
    heads = _heads(model) + [_receiver_heads(model)[0]]
    circuit = {h: None for h in heads}

    faith = {}

    def reference():
        faith.update(CircuitEvaluator(model, tokens, metric, means, circuit).faithfulness())
        return torch.tensor([faith["F_M"], faith["F_C"]])

    zeros = torch.zeros_like(means)
    case = Case(
        f"{len(heads)} circuit heads, {n_prompts} prompts", (model, tokens, metric, means, heads),
        reference,
        {
            "you ablated the heads to zero; mean ablation replaces z by `means`":
                lambda: torch.tensor([circuit_score(model, tokens, metric, means),
                                      circuit_score(model, tokens, metric, zeros, circuit=circuit)]),
            "you ablated the circuit's heads; F(C) keeps them and ablates every other head":
                lambda: torch.tensor([circuit_score(model, tokens, metric, means),
                                      circuit_score(model, tokens, metric, means, remove=heads)]),
        },
        names=("model", "tokens", "metric", "means", "circuit_heads"),
        baseline=lambda: torch.tensor([faith["F_M"], faith["F_M"]]),
    )
    return check_on_model("faithfulness", fn, [case], quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded tensors)


def _copy_cases():
    g = torch.Generator().manual_seed(2)
    cases = []
    for i, (m, d, dh, v) in enumerate([(12, 16, 4, 40), (30, 24, 6, 60)]):
        W_U = torch.randn(d, v, generator=g)
        tokens = torch.randint(0, v, (m,), generator=g)
        # residuals that partly carry their token's unembedding direction, plus an offset
        resid = 0.8 * W_U[:, tokens].T + torch.randn(m, d, generator=g) + 3.0
        W_V = torch.randn(d, dh, generator=g)
        W_O = W_V.T + 0.3 * torch.randn(dh, d, generator=g)  # a roughly copying head
        cases.append((f"head {i + 1} ({m} names, d_model {d})", (resid, W_V, W_O, W_U, tokens)))
    return cases


def check_copy_score(fn) -> CheckResult:
    """``fn(resid [m, d_model], W_V [d_model, d_head], W_O [d_head, d_model],
    W_U [d_model, d_vocab], tokens [m], k=5) -> share`` (a number in [0, 1])."""
    return run_check("copy score", fn, None, _copy_cases(), answers=stored_answers("copy score"),
                     names=("resid", "W_V", "W_O", "W_U", "tokens"))


def _ablation_cases():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, 5, 3, generator=g)
    means = torch.randn(4, 7, 5, 3, generator=g)
    return [("4 prompts, END at different positions", (z, means, 2, torch.tensor([6, 4, 5, 6]))),
            ("the same prompts, head 0 at S2", (z, means, 0, torch.tensor([3, 2, 2, 3])))]


def check_mean_ablation(fn) -> CheckResult:
    """``fn(z [n, seq, heads, d_head], means (same shape), head: int, positions [n]) -> z'``."""
    return run_check("mean ablation", fn, None, _ablation_cases(), answers=stored_answers("mean ablation"),
                     names=("z", "means", "head", "positions"))


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
