"""Checks for the acronyms chapter's exercises (``notebooks/02_acronyms.ipynb``).

Small seeded tensors laid out like the chapter's prompts (11 tokens, capitals C1..C3 at
columns 2, 4, 6, letters predicted at columns 8, 9, 10), no model: each check runs in
milliseconds.
"""

from __future__ import annotations

import torch

from ..metrics import logit_diff_vs_rivals
from . import CheckResult, random_attention, run_check

__all__ = ["check_letter_logit_diff", "check_mover_attention", "reference_letter_logit_diff",
           "reference_mover_attention"]

CAPITALS = (2, 4, 6)  # C1, C2, C3
PREDICTS = (8, 9, 10)  # the positions whose next token is letter 1, 2, 3
_LETTERS = torch.arange(32, 58)  # GPT-2's ids of "A".."Z" (no leading space)


def reference_letter_logit_diff(logits, answers, letter_ids):
    """``[n, 3]``: per letter, logit(answer) − the largest logit among the other letters.

    ``logits`` ``[n, 3, d_vocab]`` (the three prediction positions), ``answers`` ``[n, 3]``,
    ``letter_ids`` ``[26]``."""
    return torch.stack([logit_diff_vs_rivals(logits[:, i], answers[:, i], letter_ids, mean=False)
                        for i in range(3)], dim=1)


def _letter_cases():
    g = torch.Generator().manual_seed(4)
    cases = []
    for n in (5, 9):
        logits = torch.randn(n, 3, 64, generator=g)
        logits[:, :, 58:] += 6.0  # tokens that are not letters score highest: ignore them
        answers = _LETTERS[torch.randint(0, 26, (n, 3), generator=g)]
        rows = torch.arange(n)
        for i in range(3):  # the answer is the best letter in about half the cases
            logits[rows[::2], i, answers[::2, i]] += 3.0
        cases.append((f"{n} prompts", (logits, answers, _LETTERS)))
    return cases


def check_letter_logit_diff(fn) -> CheckResult:
    """``fn(logits [n, 3, d_vocab], answers [n, 3], letter_ids [26]) -> [n, 3]``."""

    def with_answer(lg, a, ids):
        return lg.gather(2, a[..., None])[..., 0] - lg[:, :, ids].max(-1).values

    def whole_vocab(lg, a, ids):
        others = lg.scatter(2, a[..., None], float("-inf"))
        return lg.gather(2, a[..., None])[..., 0] - others.max(-1).values

    return run_check(
        "letter logit difference", fn, reference_letter_logit_diff, _letter_cases(),
        known_mistakes={
            "the maximum includes the answer itself: leave the answer out of the rivals "
            "(else the value is never above 0)": with_answer,
            "you took the largest logit over the whole vocabulary; the rivals are the 26 "
            "capital letters only": whole_vocab,
        },
        sign_hint="The answer's logit comes first.",
    )


def reference_mover_attention(pattern):
    """``[n_heads, 3]``: mean over prompts of the attention from the position predicting
    letter i to the capital Ci. ``pattern``: ``[n, n_heads, 11 (query), 11 (key)]``."""
    return torch.stack([pattern[:, :, q, k].mean(0) for q, k in zip(PREDICTS, CAPITALS)], dim=1)


def _attention_cases():
    g = torch.Generator().manual_seed(5)
    return [(f"{n} prompts, {heads} heads", (random_attention(n, heads, 11, g),))
            for n, heads in ((4, 3), (7, 2))]


def check_mover_attention(fn) -> CheckResult:
    """``fn(pattern [n, n_heads, query, key]) -> [n_heads, 3]``."""

    def swapped(p):
        return torch.stack([p[:, :, k, q].mean(0) for q, k in zip(PREDICTS, CAPITALS)], dim=1)

    def rest_of_word(p):
        return torch.stack([p[:, :, q, k + 1].mean(0) for q, k in zip(PREDICTS, CAPITALS)], dim=1)

    def letter_position(p):
        return torch.stack([p[:, :, q - 1, k].mean(0) for q, k in zip(PREDICTS, CAPITALS)], dim=1)

    return run_check(
        "mover attention", fn, reference_mover_attention, _attention_cases(),
        known_mistakes={
            "query and key are swapped: the pattern is indexed [..., query, key], and the "
            "query is the prediction position": swapped,
            "you read the attention to Ti (the rest of the word); the mover looks at the "
            "capital Ci": rest_of_word,
            "off by one in the query: letter i is predicted one position before it appears "
            "(letter 1 at '(', column 8)": letter_position,
        },
    )
