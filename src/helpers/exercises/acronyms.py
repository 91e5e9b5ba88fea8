"""Checks for the acronyms chapter's exercises (``notebooks/02_acronyms.ipynb``).

Method checks (on the chapter's prompts, :func:`helpers.cases.acronyms.make_acronym_dataset`,
and the notebook's model, compared with the toolkit): :func:`check_letter_corruption`
(the per-letter "current word" corruption vs :meth:`AcronymDataset.corrupt`) and
:func:`check_add_back` (the add-back curve vs
:meth:`helpers.ablation.CircuitEvaluator.add_back`). Short checks (seeded tensors laid out
like the chapter's prompts: 11 tokens, capitals C1..C3 at columns 2, 4, 6, letters predicted
at columns 8, 9, 10; stored answers): :func:`check_letter_logit_diff`,
:func:`check_mover_attention`.
"""

from __future__ import annotations

import torch

from ..ablation import CircuitEvaluator, head_means
from . import Case, CheckResult, check_on_model, random_attention, run_check, stored_answers

__all__ = ["check_add_back", "check_letter_corruption", "check_letter_logit_diff", "check_mover_attention",
           "exercise_prompts"]

CAPITALS = (2, 4, 6)  # C1, C2, C3
PREDICTS = (8, 9, 10)  # the positions whose next token is letter 1, 2, 3
_LETTERS = torch.arange(32, 58)  # GPT-2's ids of "A".."Z" (no leading space)


def exercise_prompts(n_prompts: int = 6, *, seed: int = 3):
    """The chapter's acronym prompts (an :class:`~helpers.cases.acronyms.AcronymDataset`)."""
    from ..cases.acronyms import make_acronym_dataset

    return make_acronym_dataset(n_prompts, seed=seed)


def check_letter_corruption(fn, *, quiet: bool = False) -> CheckResult:
    """``fn(clean [n, 11], base [n, 11], letter) -> [n, 11]``: the clean prompts with the
    current word of ``letter`` (its capital Ci and the rest of the word Ti) taken from the
    ``base`` prompts (the chapter's permuted batch); compared with
    ``AcronymDataset.corrupt("current word", letter)``."""
    ds = exercise_prompts()
    base = ds.corrupted_base(seed=1)

    def columns(cols):
        out = ds.tokens.clone()
        out[:, cols] = base[:, cols]
        return out

    cases = []
    for letter in (1, 2, 3):
        c = CAPITALS[letter - 1]
        mistakes = {
            "you replaced only the capital Ci; the current word is Ci and the rest of the "
            "word Ti (two columns)": lambda c=c: columns([c]),
            "you replaced the previous words; this corruption changes the current word only":
                lambda c=c: columns(list(range(c))),
            "you replaced another letter's word (off by one in the letter: C1 is column 2)":
                lambda c=c: columns([c + 2, c + 3] if c + 3 < 8 else [c - 2, c - 1]),
        }
        cases.append(Case(f"letter {letter}", (ds.tokens, base, letter),
                          lambda letter=letter: ds.corrupt("current word", letter, seed=1), mistakes,
                          names=("clean", "base", "letter")))
    return check_on_model("per-letter corruption", fn, cases, atol=0.0, rtol=0.0, quiet=quiet)


def _order(model) -> list[tuple[int, int]]:
    from ..cases.acronyms import ADD_BACK_ORDER

    L, H = model.cfg.n_layers, model.cfg.n_heads
    order = [tuple(h) for h in ADD_BACK_ORDER if h[0] < L and h[1] < H]
    return order[:4] if len(order) >= 4 else [(L - 1, 0), (L - 1, H - 1), (0, 0)]


@torch.no_grad()
def check_add_back(model, fn, *, letter: int = 3, quiet: bool = False) -> CheckResult:
    """``fn(model, tokens [n, 11], metric, means, order) -> [len(order) + 1]``: the letter's
    metric with every head mean-ablated (``means`` from :func:`helpers.ablation.head_means`),
    then with the first 1, 2, ... heads of ``order`` kept (added back, at every position);
    compared with ``CircuitEvaluator(..., {h: None for h in order}).add_back(order)``."""
    from ..cases.acronyms import letter_metric

    ds = exercise_prompts(4, seed=5)
    dev = model.cfg.device
    tokens = ds.tokens.to(dev)
    metric = letter_metric(ds, letter)
    means = head_means(model, ds.corrupted_base(seed=2))
    order = _order(model)
    circuit = {h: None for h in order}

    def curve(m=means):
        return torch.tensor(CircuitEvaluator(model, tokens, metric, m, circuit).add_back(order))

    case = Case(
        f"letter {letter}, {len(order)} heads added back", (model, tokens, metric, means, order),
        curve,
        {
            "you ablated the heads to zero; mean ablation replaces z by `means`":
                lambda: curve(torch.zeros_like(means)),
            "the curve runs backwards: the first value has every head ablated, the last keeps "
            "all of `order`": lambda: curve().flip(0),
        },
        names=("model", "tokens", "metric", "means", "order"),
        baseline=lambda: torch.full((len(order) + 1,), float(metric(model(tokens)))),
    )
    return check_on_model("add-back curve", fn, [case], quiet=quiet)


# ---------------------------------------------------------------- short checks (seeded tensors)


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
    return run_check("letter logit difference", fn, None, _letter_cases(),
                     answers=stored_answers("letter logit difference"),
                     names=("logits", "answers", "letter_ids"), sign_hint="The answer's logit comes first.")


def _attention_cases():
    g = torch.Generator().manual_seed(5)
    return [(f"{n} prompts, {heads} heads", (random_attention(n, heads, 11, g),))
            for n, heads in ((4, 3), (7, 2))]


def check_mover_attention(fn) -> CheckResult:
    """``fn(pattern [n, n_heads, query, key]) -> [n_heads, 3]``."""
    return run_check("mover attention", fn, None, _attention_cases(),
                     answers=stored_answers("mover attention"), names=("pattern",))


def __getattr__(name: str):  # transitional: see helpers.exercises._teacher_reference
    from . import _teacher_reference

    return _teacher_reference(__name__, name)
