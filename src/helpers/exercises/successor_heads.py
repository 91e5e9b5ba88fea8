"""Checks for the successor-heads chapter's exercises (``notebooks/03_successor_heads.ipynb``).

Method checks (on the notebook's model and the chapter's succession tokens, compared with
the toolkit): :func:`check_effective_ov` (one head's effective OV circuit vs
:func:`helpers.effective_ov.effective_ov_logits`), :func:`check_layer_succession_scores`
(every head of one layer vs :func:`helpers.cases.successor_heads.succession_scores`).
Short checks (seeded tensors, stored answers): :func:`check_succession_score`,
:func:`check_residue_directions`.
"""

from __future__ import annotations

import torch

from ..effective_ov import argmax_score, effective_ov_logits, token_inputs
from ..hooks import folded_layer_norm
from . import Case, CheckResult, check_on_model, run_check, stored_answers

__all__ = ["check_effective_ov", "check_layer_succession_scores", "check_residue_directions",
           "check_succession_score", "exercise_tokens"]


def exercise_tokens(task: str = "months"):
    """``(token_ids [n], successor [n])``: one task's tokens and each one's successor's
    index in that list (−1 where there is none), from the chapter's dataset."""
    from ..cases.successor_heads import make_succession_dataset

    data = make_succession_dataset([task])
    return data.token_ids.clone(), data.successor_row.clone()


def _head(model) -> tuple[int, int]:
    """The successor head 9.1 when the model has it."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return (9, 1) if L >= 12 and H >= 2 else (L - 1, 0)


def _no_final_ln(model, L, h, ids):
    x = folded_layer_norm(token_inputs(model, ids, "mlp0"), model.cfg.eps)
    written = (x @ model.W_V[L, h] + model.b_V[L, h]) @ model.W_O[L, h]
    return (written @ model.W_U[:, ids.to(model.W_U.device)]).float().cpu()


@torch.no_grad()
def check_effective_ov(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, layer, head, token_ids [n]) -> [n, n]``: row i = the logits over the
    ``token_ids`` of head ``layer.head``'s OV circuit on token i's MLP0 output (LayerNorm
    before the head and before the unembedding, value bias included); compared with
    ``effective_ov_logits(model, token_inputs(model, ids, "mlp0"), columns=ids)``."""
    ids, _ = exercise_tokens("months")
    L, h = _head(model)

    def ref(kind="mlp0", bias=True):
        return lambda: effective_ov_logits(model, token_inputs(model, ids, kind), ids, heads=[(L, h)],
                                           include_bias=bias)[L, h]

    case = Case(
        f"head {L}.{h} on the 12 months", (model, L, h, ids), ref(),
        {
            "you fed the head the raw token embeddings; the succession screen feeds it MLP0's "
            "output on each embedding (token_inputs(..., 'mlp0'))": ref("embed"),
            "you left out the value bias b_V (compatibility mode keeps it in the head)":
                ref(bias=False),
            "the head's output goes through the final LayerNorm before the unembedding: "
            "normalise it before multiplying by W_U": lambda: _no_final_ln(model, L, h, ids),
        },
        names=("model", "layer", "head", "token_ids"),
    )
    return check_on_model("effective OV circuit", fn, [case], quiet=quiet)


@torch.no_grad()
def check_layer_succession_scores(model, fn, *, layer: int | None = None, quiet: bool = False) -> CheckResult:
    """``fn(model, layer, token_ids [n], successor [n]) -> [n_heads]``: each head's
    succession score in ``layer`` (share of the tokens with a successor whose largest OV
    logit, among ``token_ids``, is the successor's); compared with the chapter's
    ``succession_scores``."""
    from ..cases.successor_heads import make_succession_dataset, succession_scores

    task = "number words"
    ids, succ = exercise_tokens(task)
    data = make_succession_dataset([task])
    L = _head(model)[0] if layer is None else int(layer)
    heads = [(L, i) for i in range(model.cfg.n_heads)]
    valid = succ >= 0

    def ov(kind="mlp0"):
        return effective_ov_logits(model, token_inputs(model, ids, kind), ids, heads=heads)[L]

    case = Case(
        f"layer {L} on the {len(ids)} number words", (model, L, ids, succ),
        lambda: succession_scores(model, data, heads=heads)["score"][L],
        {
            "you scored copying (each token's own column); the score asks for its successor's":
                lambda: argmax_score(ov(), torch.arange(len(ids)), valid),
            "you counted the last word too, which has no successor (successor −1): leave it out":
                lambda: (ov().argmax(-1) == succ).float().mean(-1),
            "you fed the heads the raw embeddings; the screen uses MLP0's output":
                lambda: argmax_score(ov("embed"), succ.clamp_min(0), valid),
            "you took the argmax down the columns; each row is one input token, so take it "
            "along the row (dim -1)":
                lambda: (ov()[:, :, valid].argmax(-2) == torch.arange(len(ids))[valid]).float().mean(-1),
        },
        names=("model", "layer", "token_ids", "successor"),
    )
    return check_on_model("succession scores of a layer", fn, [case], atol=1e-6, quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded tensors)


def _succession_cases():
    g = torch.Generator().manual_seed(8)
    cases = []
    for n, wrap in ((7, True), (12, False)):  # days wrap around; numbers 1..12 here do not
        successor = (torch.arange(n) + 1) % n if wrap else torch.cat([torch.arange(1, n), torch.tensor([-1])])
        logits = torch.randn(n, n, generator=g)
        rows = torch.arange(n)
        good = rows[(successor >= 0) & (torch.rand(n, generator=g) < 0.6)]
        logits[good, successor[good]] += 4.0  # a head that succeeds on about 60% of the rows
        logits[rows[-1], rows[-1]] += 6.0  # the last token copies itself
        cases.append((f"{n} tokens, {'with' if wrap else 'no'} wrap-around", (logits, successor)))
    return cases


def check_succession_score(fn) -> CheckResult:
    """``fn(logits [n, n], successor [n]) -> share`` (a number in [0, 1])."""
    return run_check("succession score", fn, None, _succession_cases(),
                     answers=stored_answers("succession score"), names=("logits", "successor"))


def _residue_cases():
    g = torch.Generator().manual_seed(9)
    cases = []
    for n, d in ((40, 6), (100, 12)):
        values = torch.arange(1, n + 1)
        x = torch.randn(n, d, generator=g) + 2.0  # an offset shared by every token
        x = x + torch.randn(10, d, generator=g)[values % 10]  # a residue signal
        cases.append((f"numbers 1..{n}, d_model {d}", (x, values)))
    return cases


def check_residue_directions(fn) -> CheckResult:
    """``fn(x [n, d], values [n]) -> [10, d]``."""
    return run_check("residue directions", fn, None, _residue_cases(),
                     answers=stored_answers("residue directions"), names=("x", "values"))


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
