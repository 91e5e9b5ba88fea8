"""Checks for the circuit-reuse chapter's exercises (``notebooks/05_circuit_reuse.ipynb``).

Small seeded tensors, no model: each check runs in milliseconds.
"""

from __future__ import annotations

import torch

from . import CheckResult, random_attention, run_check

__all__ = ["check_block_keys", "check_wrong_color_rows", "reference_block_keys", "reference_wrong_color_rows"]


def reference_wrong_color_rows(asked, seq, color_positions):
    """``[n, seq]``: ½ on each of the two listed colors that were *not* asked about, 0
    elsewhere. ``asked`` ``[n]``: which of the three colors (0, 1, 2) is the answer;
    ``color_positions``: the three colors' positions."""
    rows = torch.zeros(len(asked), seq)
    for j, pos in enumerate(color_positions):
        rows[:, pos] = (asked != j).float() * 0.5
    return rows


def _color_cases():
    return [("5 prompts, colors at 41, 45, 50", (torch.tensor([0, 1, 2, 2, 0]), 62, (41, 45, 50))),
            ("3 prompts, colors at 3, 5, 8", (torch.tensor([1, 0, 2]), 10, (3, 5, 8)))]


def _on_answer(a, s, c):
    """you put the attention on the answer's color; the intervention sends it to the two
    *wrong* colors, as the inhibition heads do in IOI"""
    rows = torch.zeros(len(a), s)
    for j, pos in enumerate(c):
        rows[:, pos] = (a == j).float()
    return rows


def _thirds(a, s, c):
    """you spread the attention over all three colors; the asked one gets none"""
    rows = torch.zeros(len(a), s)
    rows[:, list(c)] = 1 / 3
    return rows


def _unnormalised(a, s, c):
    """the row does not sum to 1: ½ on each of the two wrong colors"""
    return 2 * reference_wrong_color_rows(a, s, c)


def check_wrong_color_rows(fn) -> CheckResult:
    """``fn(asked [n], seq: int, color_positions: 3 ints) -> [n, seq]``."""
    return run_check("wrong-color rows", fn, reference_wrong_color_rows, _color_cases(),
                     known_mistakes=[_on_answer, _thirds, _unnormalised])


def reference_block_keys(pattern, query, block):
    """Attention knockout at one query position per prompt: the blocked keys' weights set to
    0 and the row renormalised; every other row unchanged. ``pattern`` ``[n, heads, q, k]``,
    ``query`` ``[n]``, ``block`` ``[n, k]`` bool."""
    out = pattern.clone()
    rows = torch.arange(len(query))
    row = out[rows, :, query].masked_fill(block[:, None, :], 0.0)  # [n, heads, k]
    out[rows, :, query] = row / row.sum(-1, keepdim=True)
    return out


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

    def no_renorm(p, q, b):
        out = p.clone()
        rows = torch.arange(len(q))
        out[rows, :, q] = out[rows, :, q].masked_fill(b[:, None, :], 0.0)
        return out

    def every_query(p, q, b):
        out = p.masked_fill(b[:, None, None, :], 0.0)
        return out / out.sum(-1, keepdim=True).clamp_min(1e-12)

    return run_check(
        "block keys", fn, reference_block_keys, _block_cases(),
        known_mistakes={
            "the edited row no longer sums to 1: renormalise it after zeroing the blocked keys":
                no_renorm,
            "you blocked the keys at every query position; only the query position (END) "
            "changes": every_query,
        },
    )
