"""Checks for the circuit-reuse chapter's exercises (``notebooks/05_circuit_reuse.ipynb``).

Method checks (on the notebook's model and a few Colored Objects prompts, compared with the
toolkit's :func:`helpers.interventions.attention_edit_hooks`): :func:`check_edit_at_end`
(the repair: new attention rows at END) and :func:`check_block_at_end` (blocking keys at END,
the row renormalised). Short checks (seeded tensors, stored answers):
:func:`check_wrong_color_rows`, :func:`check_block_keys`.
"""

from __future__ import annotations

import torch

from ..hooks import hook_name, logits_at_positions
from ..interventions import attention_edit_hooks
from . import Case, CheckResult, check_on_model, random_attention, run_check, stored_answers

__all__ = ["check_block_at_end", "check_block_keys", "check_edit_at_end", "check_wrong_color_rows",
           "exercise_prompts"]


def exercise_prompts(n_prompts: int = 3, *, seed: int = 5):
    """``(tokens [n, seq], end [n], rows [n, seq], block [n, seq])``: Colored Objects
    prompts, their END positions, the repair's rows (½ on each wrong color,
    :func:`helpers.cases.circuit_reuse.wrong_color_rows`) and a mask of the three colors."""
    from ..cases.circuit_reuse import COLOR_POSITIONS, make_colored_objects, wrong_color_rows

    ds = make_colored_objects(n_prompts, seed=seed)
    block = torch.zeros(len(ds), ds.max_len, dtype=torch.bool)
    block[:, list(COLOR_POSITIONS)] = True
    return ds.tokens.clone(), ds.positions["END"].clone(), wrong_color_rows(ds), block


def _heads(model) -> list[tuple[int, int]]:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return [(2 * L // 3, 0), (2 * L // 3, H - 1), (L - 2, 1)]


def _run(model, tokens, end, hooks):
    return logits_at_positions(model, tokens.to(model.cfg.device), end, fwd_hooks=hooks).float().cpu()


def _pattern_edit(model, heads, end, value_fn, site="pattern", every_query=False):
    """Hooks that write ``value_fn(row, b)`` into each head's row at END (or every row)."""
    by_layer: dict[int, list[int]] = {}
    for L, h in heads:
        by_layer.setdefault(L, []).append(h)
    hooks = []
    for L, hs in by_layer.items():
        def edit(t, hook, _hs=hs):
            t = t.clone()
            b = torch.arange(t.shape[0], device=t.device)
            for h in _hs:
                if every_query:
                    for q in range(t.shape[-2]):
                        t[b, h, q] = value_fn(t[b, h, q], b, q)
                else:
                    q = end.to(t.device)
                    t[b, h, q] = value_fn(t[b, h, q], b, q)
            return t
        hooks.append((hook_name(site, L), edit))
    return hooks


@torch.no_grad()
def check_edit_at_end(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [n, seq], heads, end [n], rows [n, seq]) -> logits [n, d_vocab]``:
    the logits at END when each head in ``heads`` attends from END with the weights
    ``rows`` (``hook_pattern``); compared with ``attention_edit_hooks(rows=...)``."""
    tokens, end, rows, _ = exercise_prompts()
    heads = _heads(model)
    dev_rows = rows

    def wrong_site():
        return _run(model, tokens, end, _pattern_edit(
            model, heads, end, lambda r, b, q: dev_rows.to(r)[b] , site="attn_scores"))

    def every_row():
        return _run(model, tokens, end, _pattern_edit(
            model, heads, end, lambda r, b, q: torch.where(
                (torch.arange(r.shape[-1], device=r.device) <= q)[None], dev_rows.to(r)[b], r),
            every_query=True))

    case = Case(
        f"{len(heads)} heads, {len(end)} prompts", (model, tokens, heads, end, rows),
        lambda: _run(model, tokens, end, attention_edit_hooks(model, heads, end, rows=rows)),
        {
            "you wrote the new row into the attention scores (before the softmax); write it "
            "into the pattern (blocks.L.attn.hook_pattern)": wrong_site,
            "you edited the rows of every query position; only END's row changes":
                every_row,
            "you edited only the first head": lambda: _run(
                model, tokens, end, attention_edit_hooks(model, heads[:1], end, rows=rows)),
        },
        names=("model", "tokens", "heads", "end", "rows"),
        baseline=lambda: _run(model, tokens, end, []),
    )
    return check_on_model("attention edit at END", fn, [case], quiet=quiet)


@torch.no_grad()
def check_block_at_end(model, fn, *, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [n, seq], heads, end [n], block [n, seq] bool) -> logits [n,
    d_vocab]``: the logits at END when each head in ``heads`` cannot attend from END to the
    ``block`` keys (their weights set to 0, the row renormalised to sum to 1); compared
    with ``attention_edit_hooks(block=...)``."""
    tokens, end, _, block = exercise_prompts()
    heads = _heads(model)

    def no_renorm():
        return _run(model, tokens, end, _pattern_edit(
            model, heads, end, lambda r, b, q: r.masked_fill(block.to(r.device)[b], 0.0)))

    case = Case(
        f"the three colors blocked for {len(heads)} heads", (model, tokens, heads, end, block),
        lambda: _run(model, tokens, end, attention_edit_hooks(model, heads, end, block=block)),
        {
            "the edited row no longer sums to 1: renormalise it after zeroing the blocked keys":
                no_renorm,
            "you blocked only the first head": lambda: _run(
                model, tokens, end, attention_edit_hooks(model, heads[:1], end, block=block)),
        },
        names=("model", "tokens", "heads", "end", "block"),
        baseline=lambda: _run(model, tokens, end, []),
    )
    return check_on_model("blocking keys at END", fn, [case], quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded tensors)


def _color_cases():
    return [("5 prompts, colors at 41, 45, 50", (torch.tensor([0, 1, 2, 2, 0]), 62, (41, 45, 50))),
            ("3 prompts, colors at 3, 5, 8", (torch.tensor([1, 0, 2]), 10, (3, 5, 8)))]


def check_wrong_color_rows(fn) -> CheckResult:
    """``fn(asked [n], seq: int, color_positions: 3 ints) -> [n, seq]``."""
    return run_check("wrong-color rows", fn, None, _color_cases(), answers=stored_answers("wrong-color rows"),
                     names=("asked", "seq", "color_positions"))


def _block_cases():
    g = torch.Generator().manual_seed(10)
    cases = []
    for n, heads, seq in ((3, 2, 7), (4, 3, 9)):
        pattern = random_attention(n, heads, seq, g)
        query = torch.randint(seq // 2, seq, (n,), generator=g)
        block = torch.zeros(n, seq, dtype=torch.bool)
        block[:, 1:3] = True
        cases.append((f"{n} prompts, {heads} heads", (pattern, query, block)))
    return cases


def check_block_keys(fn) -> CheckResult:
    """``fn(pattern [n, heads, q, k], query [n], block [n, k]) -> pattern'`` (same shape)."""
    return run_check("block keys", fn, None, _block_cases(), answers=stored_answers("block keys"),
                     names=("pattern", "query", "block"))


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
