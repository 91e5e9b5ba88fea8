"""Three-letter acronym prompts (García-Carrasco, Maté & Trujillo 2024, arXiv 2405.04156).

GPT-2 small completes "The Chief Executive Officer (C" with "EO": it copies the capital
letter of the next word. The paper's prompts are three nouns and the first letters of their
acronym, teacher-forced so that one forward pass predicts all three letters:

    BOS | The | C1 T1 | C2 T2 | C3 T3 | " (" | A1 A2        (target: A1 A2 A3)

* ``Ci`` is the capital of word i **with its space** (" K"), one token; ``Ti`` the rest of
  the word, one token; ``Ai`` the letter **without** a space, one of GPT-2's tokens 32-57
  ("A"-"Z"). Every prompt has the same 11 token positions (BOS included).
* Letter i is predicted at ``Pi``: P1 = " (" (position 8), P2 = A1, P3 = A2.
* **Nouns**: the 375 nouns of the `wonderwords` package's list that split into a spaced
  capital and one rest-of-word token (``assets/acronyms/nouns.txt``, its SOURCE.md); every
  token rule is re-checked here on the tokenizer, and each prompt must tokenize, as text,
  to exactly the token ids it is built from (with the third letter appended), so the
  acronym splits into three single-letter tokens as in the paper.
* **Corruptions** (the paper's figure scripts): the clean batch's rows permuted, the letters
  A1, A2 taken from a second, independent permutation; each experiment copies some positions
  of that corrupted batch into the clean one (:meth:`AcronymDataset.corrupt`).
* **Metric**: for letter i, logit(correct letter) − the largest logit among the other 25
  capital letters at Pi, averaged over prompts, always per letter (:func:`letter_metric`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from typing import Any

import torch

from ..circuits import Circuit
from ..metrics import PositionMetric, logit_diff_vs_rivals
from ..prompts import PAD_TOKEN_ID, PromptSet, _default_tokenizer, tokenize
from ..scorecard import Reference

__all__ = [
    "HEAD_PATCH_ROWS",
    "PREVIOUS_WORD_ROWS",
    "POSITION_NAMES",
    "PREDICTION_POSITIONS",
    "LETTER_IDS",
    "CORRUPTIONS",
    "load_nouns",
    "valid_acronyms",
    "corruption_columns",
    "with_answers",
    "check_nouns",
    "AcronymDataset",
    "make_acronym_dataset",
    "letter_metric",
    "letter_logit_diffs",
    "letter_accuracy",
    "filter_correct",
    "letter_distribution",
    "PAPER_LETTER_COUNTS",
    "ACRONYMS",
    "ACRONYM_CIRCUIT",
    "ADD_BACK_ORDER",
    "attention_and_dla",
    "capital_ids",
    "ov_letter_matrix",
    "letter_copy_scores",
    "corrupted_share",
    "head_patch_effects",
    "resid_patch_effects",
    "add_back_values",
    "letter_scores",
    "SWAP_PAIRS",
    "BOS_SIGNAL_HEADS",
    "select_bos_heads",
    "bos_sweep_figure",
    "facet_heatmap",
    "most_negative_table",
    "se",
    "SUCCESSOR_HEAD",
    "successor_comparison",
    "positional_conditions",
    "CONDITIONS",
    "attention_shift",
    "SECTIONS",
    "build_scorecard",
]

#: The 11 named positions, in order (BOS included).
POSITION_NAMES = ("BOS", "The", "C1", "T1", "C2", "T2", "C3", "T3", "(", "A1", "A2")
#: Where letter i (1, 2, 3) is predicted.
PREDICTION_POSITIONS = {1: 8, 2: 9, 3: 10}
#: GPT-2's no-space capital letters "A".."Z".
LETTER_IDS = tuple(range(32, 58))
CORRUPTIONS = ("current word", "previous words", "previous letters")


def load_nouns() -> list[str]:
    """The shipped noun list (``assets/acronyms/nouns.txt``), capitalised."""
    text = resources.files("helpers").joinpath("assets/acronyms/nouns.txt").read_text(encoding="utf-8")
    return [w.strip() for w in text.splitlines() if w.strip()]


def check_nouns(nouns, tokenizer: Any = None) -> dict[str, tuple[int, int]]:
    """``{noun: (capital id, rest id)}``; raises listing every noun that breaks a rule.

    Rules (GPT-2's tokenizer): the noun is capitalised; " " + noun is two tokens, the spaced
    capital (" K") and the rest ("etchup"), each one token; the capital's letter is one of
    GPT-2's single-letter tokens 32-57 without a space.
    """
    tokenizer = tokenizer or _default_tokenizer()
    out, bad = {}, []
    for w in nouns:
        if not w or not w[0].isupper() or not w.isalpha() or len(w) < 2:
            bad.append(f"{w!r} (not a capitalised alphabetic word)")
            continue
        cap, rest, full = tokenizer.encode(" " + w[0]), tokenizer.encode(w[1:]), tokenizer.encode(" " + w)
        letter = tokenizer.encode(w[0])
        if len(cap) != 1 or len(rest) != 1 or full != cap + rest or letter[0] not in LETTER_IDS:
            bad.append(f"{w!r} -> {full}")
            continue
        out[w] = (cap[0], rest[0])
    if bad:
        raise ValueError("these nouns break the acronym token rules: " + ", ".join(bad[:20]))
    if len(out) != len(nouns):
        raise ValueError("the noun list has duplicates")
    return out


@dataclass(eq=False, kw_only=True)
class AcronymDataset(PromptSet):
    """Acronym prompts: a :class:`~helpers.prompts.PromptSet` of ``n`` prompts, 11 tokens each.

    ``answers [n, 3]``: the three letter tokens (ids 32-57). ``positions``: every name of
    :data:`POSITION_NAMES` plus ``P1``, ``P2``, ``P3`` (where letter i is predicted) and
    ``END``. ``words``: ``n`` triples of nouns; ``acronyms``: ``n`` strings such as "KLW".
    """

    words: list[tuple[str, str, str]]
    acronyms: list[str]
    seed: int | None = None

    def letters(self, i: int) -> torch.Tensor:
        """``[n]`` long: the token of letter ``i`` (1, 2 or 3)."""
        _check_letter(i)
        return self.answers[:, i - 1]

    def corrupted_base(self, seed: int = 1) -> torch.Tensor:
        """``[n, 11]``: the paper's corrupted batch: rows permuted, A1 A2 from another
        permutation (seeded)."""
        g = torch.Generator().manual_seed(seed)
        n = len(self)
        rows, letter_rows = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
        out = self.tokens[rows].clone()
        out[:, 9:11] = self.tokens[letter_rows, 9:11]
        return out

    def corrupt(self, kind: str, letter: int, seed: int = 1) -> torch.Tensor:
        """``[n, 11]`` clean tokens with the positions of ``kind`` taken from the corrupted
        batch, for letter ``letter`` (1, 2, 3):

        * ``"current word"``: Ci and Ti;
        * ``"previous words"``: every position before Ci (for letter 1 that is BOS and
          "The", the same in every prompt: nothing changes);
        * ``"previous letters"``: " (" up to A(i−1), i.e. positions 8..Pi (for letter 1
          only " (", the same everywhere).
        """
        _check_letter(letter)
        cols = corruption_columns(kind, letter)
        out = self.tokens.clone()
        base = self.corrupted_base(seed)
        out[:, cols] = base[:, cols]
        return out


def corruption_columns(kind: str, letter: int) -> list[int]:
    """The token columns a corruption of ``kind`` replaces for ``letter``."""
    _check_letter(letter)
    c = 2 * letter  # C1 = 2, C2 = 4, C3 = 6
    if kind == "current word":
        return [c, c + 1]
    if kind == "previous words":
        return list(range(c))
    if kind == "previous letters":
        return list(range(8, PREDICTION_POSITIONS[letter] + 1))  # " (" .. A(i−1) = Pi
    raise ValueError(f"corruption kind must be one of {CORRUPTIONS}, got {kind!r}")


def _check_letter(i: int) -> None:
    if i not in (1, 2, 3):
        raise ValueError(f"letter must be 1, 2 or 3, got {i!r}")


def valid_acronyms(tokenizer: Any = None) -> frozenset[str]:
    """Every three-letter string ``ABC`` that GPT-2 splits, after " (", into " (" A B C
    (2,740 of the 17,576: GPT-2 merges many letter pairs, e.g. "BC")."""
    tokenizer = tokenizer or _default_tokenizer()
    key = id(tokenizer)
    if key not in _VALID:
        import itertools

        paren = tokenizer.encode(" (")
        letters = [chr(65 + i) for i in range(26)]
        triples = ["".join(t) for t in itertools.product(letters, repeat=3)]
        encoded = tokenize([" (" + t for t in triples], tokenizer)[0].tolist()
        want = lambda t: paren + [LETTER_IDS[ord(c) - 65] for c in t]  # noqa: E731
        _VALID[key] = frozenset(t for t, e in zip(triples, encoded) if e == want(t))
    return _VALID[key]


_VALID: dict[int, frozenset[str]] = {}


def _fixed_ids(tokenizer: Any) -> tuple[int, int]:
    the, paren = tokenizer.encode("The"), tokenizer.encode(" (")
    if len(the) != 1 or len(paren) != 1:
        raise RuntimeError(f"'The' and ' (' must be one token each, got {the}, {paren}")
    return the[0], paren[0]


def make_acronym_dataset(
    n_prompts: int,
    *,
    seed: int = 0,
    nouns=None,
    tokenizer: Any = None,
    max_tries: int = 10_000,
) -> AcronymDataset:
    """``n_prompts`` seeded acronym prompts from three nouns drawn at random (distinct).

    A draw is kept only if the prompt text with its third letter appended tokenizes to
    exactly ``BOS The C1 T1 C2 T2 C3 T3 " (" A1 A2 A3`` (so the acronym splits into three
    single-letter tokens); otherwise it is drawn again (up to ``max_tries`` times per prompt;
    about 5% of uniform draws from the shipped nouns pass, see :func:`valid_acronyms`).
    """
    if n_prompts < 1:
        raise ValueError("n_prompts must be at least 1")
    tokenizer = tokenizer or _default_tokenizer()
    nouns = load_nouns() if nouns is None else list(nouns)
    ids = check_nouns(nouns, tokenizer)
    if len(nouns) < 3:
        raise ValueError("need at least 3 nouns")
    the, paren = _fixed_ids(tokenizer)
    valid = valid_acronyms(tokenizer)
    rng = random.Random(seed)
    rows, words, acronyms, prompts = [], [], [], []
    for _ in range(n_prompts):
        for _try in range(max_tries):
            triple = tuple(rng.sample(nouns, 3))
            acronym = "".join(w[0] for w in triple)
            if acronym not in valid:
                continue
            text = "The " + " ".join(triple) + " (" + acronym
            letters = [tokenizer.encode(a)[0] for a in acronym]
            expected = [the] + [t for w in triple for t in ids[w]] + [paren] + letters
            if tokenizer.encode(text) == expected:
                break
        else:
            raise RuntimeError(f"no valid acronym prompt found in {max_tries} draws")
        rows.append([PAD_TOKEN_ID] + expected[:-1])
        words.append(triple)
        acronyms.append(acronym)
        prompts.append("The " + " ".join(triple) + " (" + acronym[:2])
    tokens = torch.tensor(rows, dtype=torch.long)
    n = len(rows)
    positions = {name: torch.full((n,), i, dtype=torch.long) for i, name in enumerate(POSITION_NAMES)}
    for i, p in PREDICTION_POSITIONS.items():
        positions[f"P{i}"] = torch.full((n,), p, dtype=torch.long)
    positions["END"] = torch.full((n,), 10, dtype=torch.long)
    answers = torch.tensor([[tokenizer.encode(a)[0] for a in acr] for acr in acronyms], dtype=torch.long)
    return AcronymDataset(
        prompts=prompts, tokens=tokens, lengths=torch.full((n,), 11, dtype=torch.long),
        positions=positions, answers=answers, prepend_bos=True, tokenizer=tokenizer,
        words=words, acronyms=acronyms, seed=seed,
    )


# ------------------------------------------------------------------------------ metrics


def letter_metric(ds: AcronymDataset, i: int) -> PositionMetric:
    """The paper's metric for letter ``i``: logit(correct) − max logit of the other 25
    capital letters, at Pi, averaged over prompts (a :class:`PositionMetric`)."""
    _check_letter(i)
    fn = partial(_rival_ld, answer=ds.letters(i), rivals=torch.tensor(LETTER_IDS))
    return PositionMetric(fn, ds.positions[f"P{i}"])


def _rival_ld(logits, *, answer, rivals):
    return logit_diff_vs_rivals(logits, answer, rivals)


@torch.no_grad()
def _final_logits(model, tokens, fwd_hooks=()) -> torch.Tensor:
    """``[n, 3, d_vocab]``: the logits at P1, P2, P3 (only those rows are unembedded)."""
    from ..positional import _final_resid

    resid = _final_resid(model, torch.as_tensor(tokens).to(model.cfg.device), list(fwd_hooks))
    rows = resid[:, [8, 9, 10]]
    return model.unembed(model.ln_final(rows)).float().cpu()


def _per_prompt_lds(lg: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``[n, 3]``: the rival metric per prompt and letter from ``[n, 3, d_vocab]`` logits."""
    rivals = torch.tensor(LETTER_IDS)
    return torch.stack([logit_diff_vs_rivals(lg[:, i], answers[:, i], rivals, mean=False)
                        for i in range(3)], 1)


def letter_scores(model, ds: AcronymDataset, *, batch_size: int = 128):
    """``(logit diffs [n, 3], correct [n, 3] bool)`` from one forward pass per batch: each
    prompt's metric for each letter, and whether the letter is the argmax over the whole
    vocabulary at Pi."""
    lds, right = [], []
    for s in range(0, len(ds), batch_size):
        lg = _final_logits(model, ds.tokens[s : s + batch_size])
        ans = ds.answers[s : s + batch_size]
        lds.append(_per_prompt_lds(lg, ans))
        right.append(lg.argmax(-1) == ans)
    return torch.cat(lds), torch.cat(right)


def letter_logit_diffs(model, ds: AcronymDataset, *, batch_size: int = 128) -> torch.Tensor:
    """``[n, 3]``: each prompt's metric for each letter (not averaged)."""
    return letter_scores(model, ds, batch_size=batch_size)[0]


def letter_accuracy(model, ds: AcronymDataset, *, batch_size: int = 128) -> torch.Tensor:
    """``[n, 3]`` bool: is each letter the argmax over the whole vocabulary at Pi?"""
    return letter_scores(model, ds, batch_size=batch_size)[1]


def filter_correct(model, ds: AcronymDataset, n: int | None = None) -> AcronymDataset:
    """The prompts whose three letters the model gets right (argmax over the vocabulary), the
    paper's filter; the first ``n`` of them. Raises if fewer than ``n`` remain."""
    keep = letter_accuracy(model, ds).all(1).nonzero().flatten()
    n = len(keep) if n is None else n
    if len(keep) < n:
        raise ValueError(
            f"only {len(keep)} of {len(ds)} candidate prompts are fully right; "
            f"ask for fewer prompts or build more candidates"
        )
    if n == 0:
        raise ValueError("the model gets no candidate prompt fully right")
    return ds.subset(keep[:n])


def letter_distribution(ds: AcronymDataset) -> dict[str, int]:
    """``{letter: count}`` over all three letter slots, every letter A-Z (zeros included)."""
    counts = Counter("".join(ds.acronyms))
    return {chr(65 + i): counts.get(chr(65 + i), 0) for i in range(26)}


#: Letter counts over every slot of the paper's data file ``acronyms_2_common.txt`` as the
#: fact sheet lists them (the seven largest; Q, U, X never occur; the rest not listed).
PAPER_LETTER_COUNTS = {"J": 4641, "V": 3820, "K": 3781, "Z": 3147, "Y": 2288, "W": 2129, "B": 1508,
                       "Q": 0, "U": 0, "X": 0}


# ------------------------------------------------------------------------------ published numbers

_FIG8 = "Fig. 8 (images/evaluation/evaluation.pdf), read from a figure"
_PATCH = "patching_experiments.py heatmap, read from a figure"


def _per_letter(values, source, note=""):
    return {i + 1: Reference(v, source, "official code", note) for i, v in enumerate(values)}


#: García-Carrasco et al. 2024 (GPT-2 small), from the project's fact sheet.
ACRONYMS: dict[str, Any] = {
    "circuit_heads": Reference(8, "abstract (8 heads ≈ 5% of 144)", "paper text"),
    "clean_ld": _per_letter((1.25, 2.0, 3.4), _FIG8 + " (dashed)"),
    "all_ablated_ld": _per_letter((-0.75, -0.3, -1.0), _FIG8),
    "only_811_ld": _per_letter((0.0, 0.4, 1.8), _FIG8),
    "movers_ld": _per_letter((1.15, 0.8, 3.25), _FIG8),
    "circuit_ld": _per_letter((1.4, 2.0, 3.6), _FIG8),
    "patch_811": _per_letter((-0.7, -2.1, -2.7), _PATCH + " (attn_1, current word)"),
    "patch_1010": _per_letter((-1.0, -0.9, -1.6), _PATCH + " (attn_1, current word)"),
    # 11.4 and 9.9: the fact sheet reads "small" (no number) for 11.4 on letters 2, 3 and
    # 9.9 on letter 3, so only the letters with a number are here.
    "patch_114": {1: Reference(-0.6, _PATCH + " (attn_1, current word)", "official code",
                               "letters 2, 3: 'small', no number")},
    "patch_99": {i: Reference(-0.2, _PATCH + " (attn_1, current word)", "official code",
                              "letter 3: 'small', no number") for i in (1, 2)},
    "resid_c3_letter3": Reference(-6.0, _PATCH + " (res_1; −5 to −7)", "official code"),
    "prev_words_at_A_811_letter2": Reference(-0.95, _PATCH + " (attn_2_Ai_1)", "official code"),
    "prev_words_at_A_58_letter2": Reference(-0.64, _PATCH + " (attn_2_Ai_1)", "official code"),
    "prev_words_at_A_1010_letter2": Reference(-0.45, _PATCH + " (attn_2_Ai_1)", "official code"),
    "prev_words_at_C_411_letter2": Reference(-0.15, _PATCH + " (attn_2_Ci)", "official code"),
    "prev_words_at_C_10_letter2": Reference(-0.05, _PATCH + " (attn_2_Ci)", "official code"),
    "prev_words_at_C_22_letter2": Reference(-0.03, _PATCH + " (attn_2_Ci)", "official code"),
    "attn_811_to_ci": _per_letter((0.20, 0.39, 0.41), "Fig. 3, read from a figure"),
    "third_letter_accuracy": Reference(
        0.906, "circuit-extraction benchmark_results (0.888–0.924 over 5 runs of 250)", "official code"
    ),
    # The only positional number on the fact sheet: 8.11, letter 1, C1 <-> C2. The official
    # figures (BOS_<head>_<a>_<b>.pdf) also show letters 2, 3, the other movers and the
    # pairs C1 <-> C3, C2 <-> C3, but no values were read from them.
    "bos_swap_811_attention": Reference(
        0.14, "Figs. 12–14 (C1 ↔ C2, letter 1: 0.20 → 0.14), read from a figure", "official code"
    ),
    # the same reading as a shift: swapped − clean
    "bos_swap_811_shift": Reference(
        -0.06, "Figs. 12–14 (C1 ↔ C2, letter 1: 0.20 → 0.14), read from a figure", "official code"
    ),
    # "essentially unchanged" (no number): the position swap moves 8.11's attention less
    # than the BOS swap does (the abstract's "mainly from ... attention to BOS, rather
    # than from the positional embeddings")
    "pos_swap_811_shift": Reference(
        0.0, "Figs. 12–14 and abstract ('essentially unchanged'; no number)", "official code"
    ),
    # BOS-swap shift (≈0.06 down) minus the position swap's (≈0): the abstract's ordering
    "bos_vs_pos_811": Reference(
        0.06, "abstract ('mainly ... attention to BOS, rather than the positional embeddings'); "
        "Figs. 12–14, read from a figure", "official code"
    ),
    # the four letter movers stand out in the current-word head-patching heatmap
    "movers_top_heads": Reference(
        4, "patching_experiments.py heatmap (attn_1): 8.11, 10.10 dominate, then 11.4, 9.9",
        "official code"
    ),
}

#: Scorecard rows of head patching with the current word corrupted: (key of
#: :data:`ACRONYMS`, head, tolerance), one row per letter that the key has a number for.
#: Tolerance ``None``: a sign row (9.9's effect is small, −0.2: a band of ±0.2 would accept
#: a run with no effect, so its claim is that it is negative).
HEAD_PATCH_ROWS = (
    ("patch_811", (8, 11), 0.5),
    ("patch_1010", (10, 10), 0.5),
    ("patch_114", (11, 4), 0.5),
    ("patch_99", (9, 9), None),
)

#: Scorecard rows of the previous-words experiment (letter 2): (key of :data:`ACRONYMS`,
#: head, where the head is patched, tolerance). ``"P2"`` is the data set's name for the
#: paper's A1 (the position that predicts letter 2). The effects at C2 are tiny (−0.03 to
#: −0.15, read from a figure): tolerance ``None`` makes them sign rows (negative).
PREVIOUS_WORD_ROWS = (
    ("prev_words_at_A_811_letter2", (8, 11), "P2", 0.3),
    ("prev_words_at_A_58_letter2", (5, 8), "P2", 0.3),
    ("prev_words_at_A_1010_letter2", (10, 10), "P2", 0.3),
    ("prev_words_at_C_411_letter2", (4, 11), "C2", None),
    ("prev_words_at_C_10_letter2", (1, 0), "C2", None),
    ("prev_words_at_C_22_letter2", (2, 2), "C2", None),
)

#: The 8-head circuit in three groups (the fact sheet; 5.8's name in the paper is
#: unconfirmed, so it gets a neutral one). Heads keep every position, as in the paper's
#: evaluation (mean ablation of everything outside the circuit, per position).
ACRONYM_CIRCUIT = Circuit.from_labels(
    "Acronyms, GPT-2 small",
    {
        "letter mover": ("8.11", "9.9", "10.10", "11.4"),
        "5.8 (at A(i−1))": ("5.8",),
        "fuzzy previous token": ("4.11", "2.2", "1.0"),
    },
    None,
    source="García-Carrasco et al. 2024, abstract and evaluation.py (8 heads, Fig. 8 order)",
)

#: The order Fig. 8 adds heads back in.
ADD_BACK_ORDER = tuple(
    tuple(int(x) for x in s.split(".")) for s in ("8.11", "9.9", "10.10", "11.4", "5.8", "4.11", "2.2", "1.0")
)


def with_answers(ds: AcronymDataset, tokens: torch.Tensor) -> AcronymDataset:
    """``ds`` with other tokens (same shape) but the same answers: for running a corrupted
    batch through code that takes a prompt set."""
    if tuple(tokens.shape) != tuple(ds.tokens.shape):
        raise ValueError(f"tokens {tuple(tokens.shape)} must have the shape {tuple(ds.tokens.shape)}")
    return replace(ds, tokens=tokens)


def corrupted_share(ds: AcronymDataset, kind: str, letter: int, seed: int = 1) -> float:
    """The share of prompts that the corruption ``kind`` for ``letter`` actually changes.

    The permutation leaves some rows in place, and another prompt can share the word or the
    letter; for letter 1 the previous words ("The") and previous letters (" (") are the
    same in every prompt, so nothing changes (share 0)."""
    bad = ds.corrupt(kind, letter, seed=seed)
    return (bad != ds.tokens).any(1).float().mean().item()


def _check_corrupted(ds: AcronymDataset, corrupted) -> torch.Tensor:
    corrupted = torch.as_tensor(corrupted)
    if tuple(corrupted.shape) != tuple(ds.tokens.shape):
        raise ValueError(f"corrupted tokens {tuple(corrupted.shape)} must have the shape of the "
                         f"clean ones {tuple(ds.tokens.shape)}: build them with ds.corrupt(...)")
    return corrupted


def _capture_until(model, tokens, names) -> dict:
    """``{name: activation}`` from one run of ``tokens``, stopped once all are recorded."""
    from ..hooks import StopForward

    store: dict[str, torch.Tensor] = {}
    wanted = list(dict.fromkeys(names))

    def saver(name):
        def save(t, hook):
            store[name] = t.detach()
            if len(store) == len(wanted):
                raise StopForward

        return save

    try:
        model.run_with_hooks(torch.as_tensor(tokens).to(model.cfg.device),
                             fwd_hooks=[(n, saver(n)) for n in wanted])
    except StopForward:
        pass
    missing = set(wanted) - set(store)
    if missing:
        raise RuntimeError(f"hook points never fired: {sorted(missing)}")
    return store


class _FromLayer:
    """Runs the blocks from a layer on, starting from a cached residual stream (the patched
    layer's input), so a patch at layer L costs 12 − L blocks, not a whole forward pass.
    The first use checks, on the unpatched run, that this reproduces the full run's final
    residual; if it does not (another bridge version), every run falls back to a full
    forward pass with the same hooks."""

    def __init__(self, model):
        self.model, self.ok = model, None

    def final(self, tokens, resid, start, fwd_hooks, want=None):
        from ..positional import _final_resid

        model = self.model
        if self.ok is None and want is not None:
            self.ok = False
            try:
                got = self._blocks(resid, start, [])
                scale = float(want.abs().max())
                self.ok = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale))
            except Exception:  # noqa: BLE001 - any failure means: use full passes
                self.ok = False
        if self.ok:
            return self._blocks(resid, start, fwd_hooks)
        return _final_resid(model, torch.as_tensor(tokens).to(model.cfg.device), list(fwd_hooks))

    def _blocks(self, x, start, fwd_hooks):
        model = self.model
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            for block in model.blocks[start:]:
                y = block(x)
                x = y[0] if isinstance(y, tuple) else y
        return x


def _letter_lds(model, final, answers, letter) -> torch.Tensor:
    """``[b]``: the metric for ``letter`` from the final residual ``[b, seq, d]``."""
    lg = model.unembed(model.ln_final(final[:, [8, 9, 10]])).float().cpu()
    return _per_prompt_lds(lg, answers)[:, letter - 1]


@torch.no_grad()
def head_patch_effects(model, ds: AcronymDataset, corrupted, letter: int, heads, *,
                       position: str | int | None = None, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{"L.H": [n]}``: each prompt's metric for ``letter`` with one head's output
    (``hook_z``) patched from the corrupted run, minus the clean metric (noising, as the
    paper). ``position``: a column, a name of ``ds.positions`` ("C2", "P2", ...) or None
    (every position). The same intervention as :func:`helpers.patch_heads`, one head per
    run, kept per prompt so a scorecard row can carry its standard error; each run starts
    at the head's layer from the clean run's cached residual stream."""
    from ..circuits import head_label, parse_head
    from ..hooks import hook_name
    from ..patching import node_mask, replace_z_hooks

    _check_letter(letter)
    corrupted = _check_corrupted(ds, corrupted)
    heads = [parse_head(h) for h in heads]
    if not heads:
        raise ValueError("heads must name at least one head")
    if isinstance(position, str) and position not in ds.positions:
        raise KeyError(f"unknown position {position!r}; known: {sorted(ds.positions)}")
    col = ds.positions[position][0].item() if isinstance(position, str) else position
    layers = sorted({L for L, _ in heads})
    final_name = hook_name("final_resid")
    runner = _FromLayer(model)
    out = {head_label(L, h): [] for L, h in heads}
    dev = model.cfg.device
    for s in range(0, len(ds), batch_size):
        clean_tok = ds.tokens[s : s + batch_size]
        ans = ds.answers[s : s + batch_size]
        b, seq = clean_tok.shape
        acts = _capture_until(model, clean_tok, [hook_name("resid_pre", L) for L in layers] + [final_name])
        clean = _letter_lds(model, acts[final_name], ans, letter)
        src = _capture_until(model, corrupted[s : s + batch_size], [hook_name("z", L) for L in layers])
        some = src[hook_name("z", layers[0])]
        z = torch.zeros((b, seq, model.cfg.n_layers) + tuple(some.shape[2:]), device=dev, dtype=some.dtype)
        for L in layers:
            z[:, :, L] = src[hook_name("z", L)]
        cols = torch.zeros(b, seq, dtype=torch.bool)
        if col is None:
            cols[:] = True
        else:
            cols[:, int(col)] = True
        for L, h in heads:
            hooks = replace_z_hooks(model, z, node_mask({(L, h): cols}, model, b, seq))
            final = runner.final(clean_tok, acts[hook_name("resid_pre", L)], L, hooks, acts[final_name])
            out[head_label(L, h)].append(_letter_lds(model, final, ans, letter) - clean)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def resid_patch_effects(model, ds: AcronymDataset, corrupted, letter: int, layer: int, column: int, *,
                        batch_size: int = 64) -> torch.Tensor:
    """``[n]``: each prompt's metric for ``letter`` with the residual stream entering
    ``layer`` (``resid_pre``) at ``column`` taken from the corrupted run, minus the clean
    metric (one cell of :func:`helpers.patch_resid_by_position`, per prompt)."""
    from ..hooks import hook_name

    _check_letter(letter)
    corrupted = _check_corrupted(ds, corrupted)
    layer, column = int(layer), int(column)
    name, final_name = hook_name("resid_pre", layer), hook_name("final_resid")
    runner = _FromLayer(model)
    out = []
    for s in range(0, len(ds), batch_size):
        clean_tok = ds.tokens[s : s + batch_size]
        ans = ds.answers[s : s + batch_size]
        acts = _capture_until(model, clean_tok, [name, final_name])
        clean = _letter_lds(model, acts[final_name], ans, letter)
        src = _capture_until(model, corrupted[s : s + batch_size], [name])[name]

        def patch(resid, hook, _src=src):
            resid = resid.clone()
            resid[:, column] = _src[:, column].to(resid)
            return resid

        start = acts[name].clone()
        start[:, column] = src[:, column]
        if runner.ok is None:  # check the runner once on the unpatched input
            runner.final(clean_tok, acts[name], layer, [], acts[final_name])
        final = (runner._blocks(start, layer, []) if runner.ok
                 else runner.final(clean_tok, None, layer, [(name, patch)]))
        out.append(_letter_lds(model, final, ans, letter) - clean)
    return torch.cat(out)


@torch.no_grad()
def add_back_values(model, ds: AcronymDataset, means: torch.Tensor, order, *,
                    batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """``[len(order) + 1, n, 3]``: each prompt's metric for each letter with every head
    mean-ablated (``hook_z``, every position, ``means`` from :func:`helpers.head_means`),
    then with the heads of ``order`` added back one at a time (Fig. 8). The same runs as
    :meth:`helpers.CircuitEvaluator.add_back`, but all three letters are read from each
    run and kept per prompt (for standard errors)."""
    from ..circuits import parse_head
    from ..patching import replace_z_hooks

    order = [parse_head(h) for h in order]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if means.shape[0] not in (1, len(ds)):
        raise ValueError(f"means has {means.shape[0]} rows; need 1 or one per prompt ({len(ds)})")
    steps = range(len(order) + 1)
    if progress:
        from ..display import tqdm

        steps = tqdm(steps, desc="add-back curve")
    out = []
    for k in steps:
        keep = set(order[:k])
        rows = []
        for s in range(0, len(ds), batch_size):
            tok = ds.tokens[s : s + batch_size]
            b, seq = tok.shape
            ablate = torch.ones(b, seq, n_layers, n_heads, dtype=torch.bool)
            for L, h in keep:
                ablate[:, :, L, h] = False
            m = means if means.shape[0] == 1 else means[s : s + batch_size]
            lg = _final_logits(model, tok, replace_z_hooks(model, m, ablate.to(model.cfg.device)))
            rows.append(_per_prompt_lds(lg, ds.answers[s : s + batch_size]))
        out.append(torch.cat(rows))
    return torch.stack(out)


# ------------------------------------------------------------------------------ letter movers


@torch.no_grad()
def attention_and_dla(model, ds: AcronymDataset, heads, letters=(1, 2, 3), *,
                      batch_size: int = 32):
    """One row per (prompt, head, letter): the head's attention from Pi to Ci and its direct
    logit attribution to the correct letter at Pi (along W_U[:, letter], after the final
    LayerNorm's scale; :func:`helpers.dla_by_head`). A pandas DataFrame with columns
    ``letter, head, attention, dla``. Runs ``batch_size`` prompts at a time: a full cache of
    256 prompts would hold ~6 GB."""
    import pandas as pd

    from ..attribution import dla_by_head
    from ..circuits import head_label, parse_head
    from ..hooks import hook_name

    heads = [parse_head(h) for h in heads]
    for i in letters:
        _check_letter(i)
    att: dict[tuple, list] = {(i, L, h): [] for i in letters for L, h in heads}
    dla: dict[tuple, list] = {key: [] for key in att}
    for start in range(0, len(ds), batch_size):
        part = ds.subset(range(start, min(start + batch_size, len(ds))))
        _, cache = model.run_with_cache(part.tokens.to(model.cfg.device))
        rows = torch.arange(len(part))
        for i in letters:
            p, c = PREDICTION_POSITIONS[i], 2 * i
            direct = dla_by_head(model, cache, part.letters(i), None, part.positions[f"P{i}"])
            for L, h in heads:
                pattern = cache[hook_name("pattern", L)]
                att[i, L, h].append(pattern[rows.to(pattern.device), h, p, c].float().cpu())
                dla[i, L, h].append(direct[L, h].float().cpu())
        del cache
    frames = [pd.DataFrame({"letter": i, "head": head_label(L, h),
                            "attention": torch.cat(att[i, L, h]).numpy(),
                            "dla": torch.cat(dla[i, L, h]).numpy()})
              for i in letters for L, h in heads]
    return pd.concat(frames, ignore_index=True)


def capital_ids(tokenizer: Any = None, *, spaced: bool = True) -> torch.Tensor:
    """``[26]``: the tokens " A".." Z" (``spaced``) or "A".."Z"."""
    tokenizer = tokenizer or _default_tokenizer()
    ids = [tokenizer.encode((" " if spaced else "") + chr(65 + i)) for i in range(26)]
    if any(len(t) != 1 for t in ids):
        raise RuntimeError("every capital letter must be one token")
    return torch.tensor([t[0] for t in ids])


@torch.no_grad()
def ov_letter_matrix(model, head, *, spaced_input: bool = True, spaced_output: bool = False) -> torch.Tensor:
    """``[26, 26]``: the head's full OV circuit as the paper's ``mover_heads.py`` draws it:
    ``W_E[input] @ W_V @ W_O @ W_U[:, output]``, raw (no LayerNorm, no bias, no position),
    rows the input capitals A..Z (" A" with ``spaced_input``), columns the output letters
    ("A", or " A" with ``spaced_output``)."""
    from ..circuits import parse_head

    L, h = parse_head(head)
    tok = None  # GPT-2's tokenizer (the book's models all use it)
    rows = capital_ids(tok, spaced=spaced_input).to(model.W_E.device)
    cols = capital_ids(tok, spaced=spaced_output).to(model.W_U.device)
    out = model.W_E[rows] @ model.W_V[L, h] @ model.W_O[L, h] @ model.W_U[:, cols]
    return out.float().cpu()


@torch.no_grad()
def letter_copy_scores(model, heads, *, k: int = 5) -> dict[str, dict[str, float]]:
    """The paper's copying score (``mechanistic_utils.compute_copying_scores``): each spaced
    capital " X" as ``W_E`` + MLP0 (:func:`helpers.effective_ov.token_inputs`, kind
    ``"embed+mlp0"``) through the head's OV circuit (no value bias) and the unembedding;
    the share of the 26 capitals whose letter is in the top ``k``, scored for the output
    "X" (what a mover must write) and " X" (the paper's default). ``{"L.H": {'"X"': share,
    '" X"': share}}``."""
    from ..effective_ov import token_inputs
    from ..heads import copy_score

    tok = None  # GPT-2's tokenizer (the book's models all use it)
    spaced, plain = capital_ids(tok), capital_ids(tok, spaced=False)
    x = token_inputs(model, spaced, "embed+mlp0")
    no_space = copy_score(model, heads, x, plain.to(x.device), k=k, include_bias=False)
    with_space = copy_score(model, heads, x, spaced.to(x.device), k=k, include_bias=False)
    return {h: {'top-5 has "X"': no_space[h], 'top-5 has " X"': with_space[h]} for h in no_space}


# ------------------------------------------------------------------------------ positional


#: The capital pairs the paper's ``positional_experiments.py`` swaps (every pair of C1, C2, C3).
SWAP_PAIRS = ((1, 2), (1, 3), (2, 3))

#: Early heads that carry the BOS positional signal, outside the circuit (the fact sheet,
#: from the official figures; not a number, a list to mark on the heatmaps).
BOS_SIGNAL_HEADS = ("0.8", "0.9", "0.11", "1.1", "1.2", "2.9", "5.9")


def select_bos_heads(effects, threshold: float = 0.005) -> list[tuple[int, int]]:
    """The heads the paper swaps together: those whose single-head BOS swap lowers the
    metric of **any** letter by more than ``threshold`` (``effects``: ``{letter: [n_layers,
    n_heads]}`` of swapped − clean), as in ``positional_experiments.py``."""
    if not effects:
        raise ValueError("effects must hold at least one letter's [n_layers, n_heads] tensor")
    hit = torch.stack([torch.as_tensor(e) < -threshold for e in effects.values()]).any(0)
    return [tuple(x) for x in hit.nonzero().tolist()]


def facet_heatmap(panels, *, title: str, colorbar_title: str = "patched − clean",
                  positions=None, marked=None, height: int = 420):
    """One figure, one panel per entry of ``panels`` (``{panel title: [n_layers, n]}``), on
    a shared red-blue colour scale centred on 0 (negative = red): layer × head maps, or,
    with ``positions`` (column names), layer × position maps. ``marked``: heads to outline
    on head maps (``{name: labels}``). The paper's faceted figures, one per experiment."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..circuits import head_label, parse_head

    if not panels:
        raise ValueError("panels must hold at least one [n_layers, n] map")
    names = list(panels)
    z = {k: torch.as_tensor(panels[k]).float().cpu() for k in names}
    lim = max(float(v.nan_to_num().abs().max()) for v in z.values()) or 1.0
    n_layers, n_cols = z[names[0]].shape
    fig = make_subplots(1, len(names), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.03)
    if positions is None:
        text = [[head_label(L, h) for h in range(n_cols)] for L in range(n_layers)]
        x, what = list(range(n_cols)), "head %{text}"
    else:
        if len(positions) != n_cols:
            raise ValueError(f"{len(positions)} position names for {n_cols} columns")
        x = [f"{i}: {p}" for i, p in enumerate(positions)]
        text, what = None, "layer %{y}, %{x}"
    symbols = ["square-open", "circle-open", "diamond-open", "x-thin-open"]
    for k, name in enumerate(names, start=1):
        fig.add_trace(go.Heatmap(
            z=z[name].numpy(), x=x, y=list(range(n_layers)), text=text, colorscale="RdBu",
            zmid=0, zmin=-lim, zmax=lim, showscale=k == len(names),
            colorbar=dict(title=colorbar_title),
            hovertemplate=f"{name}, {what}<br>value %{{z:.3f}}<extra></extra>",
        ), 1, k)
        if positions is None:
            for g, (label, heads) in enumerate((marked or {}).items()):
                lh = [parse_head(h) for h in heads]
                fig.add_trace(go.Scatter(
                    x=[h for _, h in lh], y=[L for L, _ in lh], mode="markers", name=label,
                    legendgroup=label, showlegend=k == 1, hoverinfo="skip",
                    marker=dict(symbol=symbols[g % len(symbols)], size=9, color="black"),
                ), 1, k)
            fig.update_xaxes(title="Head", range=[-0.5, n_cols - 0.5], row=1, col=k)
        else:
            fig.update_xaxes(title="Position", tickangle=-90, row=1, col=k)
    fig.update_yaxes(title="Layer", range=[n_layers - 0.5, -0.5], row=1, col=1)
    fig.update_layout(title=title, height=height, legend=dict(orientation="h", y=-0.25))
    return fig


def bos_sweep_figure(effects, pair, *, marked=None):
    """The paper's swap_BOS figure for the capitals ``pair``: one layer × head panel per
    letter (``effects``: ``{letter: [n_layers, n_heads]}`` of swapped − clean)."""
    a, b = pair
    return facet_heatmap({f"letter {i}": v for i, v in effects.items()},
                         title=f"Attention to BOS swapped between C{a} and C{b}, one head at a time",
                         colorbar_title="swapped − clean", marked=marked)


def most_negative_table(experiments, *, k: int = 5):
    """One table of the ``k`` most negative heads of every map: ``experiments`` is
    ``{experiment name: {panel (e.g. "letter 2"): [n_layers, n_heads]}}``; a DataFrame with
    one row per (experiment, panel) and one column per rank ("L.H value")."""
    import pandas as pd

    from ..heads import top_heads

    rows = []
    for name, panels in experiments.items():
        for panel, values in panels.items():
            top = top_heads(torch.as_tensor(values), k=k, largest=False)
            rows.append({"experiment": name, "panel": panel,
                         **{f"#{r + 1}": f"{h} {v:+.2f}" for r, (h, v) in enumerate(top)}})
    return pd.DataFrame(rows).set_index(["experiment", "panel"])


def se(values) -> float:
    """The standard error of the mean of per-prompt ``values``."""
    v = torch.as_tensor(values, dtype=torch.float32).flatten()
    if v.numel() < 2:
        return float("nan")
    return (v.std() / v.numel() ** 0.5).item()


#: GPT-2 small's successor head (Gould et al. 2023; the successor-heads chapter).
SUCCESSOR_HEAD = "9.1"


def successor_comparison(model, ds: AcronymDataset, *, letters=(1, 2, 3), seed: int = 1,
                         corruptions=("current word", "previous letters"), effects=None,
                         successor: str = SUCCESSOR_HEAD, movers=None):
    """Does the successor head 9.1 take part? One method on both sides: for each corruption
    and letter, the per-prompt head-patching effect (:func:`head_patch_effects`, every
    position, the same prompts) of 9.1 and of each letter mover. A successor head would
    read the previous letter A(i−1), so "previous letters" is the test that could show it;
    letters whose corruption changes no prompt (letter 1's previous letters) are skipped.

    A DataFrame, one row per (corruption, letter): the share of prompts corrupted, 9.1's
    mean effect and its SE, the weakest mover (smallest |mean|) with its mean and SE, and
    ``9.1 smaller``: True when |9.1| + 2 SE < |weakest| − 2 SE (clearly smaller), False
    when |9.1| − 2 SE > |weakest| + 2 SE (clearly not), None when the SEs overlap.
    ``effects``: ``{(corruption, letter): {"L.H": [n]}}`` already computed on ``ds`` with
    the same seed (reused where they hold 9.1 and every mover; the rest is computed).
    ``successor``, ``movers``: other heads to compare (default 9.1 and the letter movers)."""
    import pandas as pd

    movers = list(movers or ACRONYM_CIRCUIT.labels("letter mover"))
    rows = []
    for kind in corruptions:
        for i in letters:
            share = corrupted_share(ds, kind, i, seed=seed)
            if share == 0:
                continue
            eff = (effects or {}).get((kind, i), {})
            if not all(h in eff for h in (successor, *movers)):
                eff = head_patch_effects(model, ds, ds.corrupt(kind, i, seed=seed), i,
                                         [successor, *movers])
            stats = {h: (v.mean().item(), se(v)) for h, v in eff.items()}
            weakest = min(movers, key=lambda h: abs(stats[h][0]))
            (m9, s9), (mw, sw) = stats[successor], stats[weakest]
            lo9, hi9 = abs(m9) - 2 * s9, abs(m9) + 2 * s9
            low, hiw = abs(mw) - 2 * sw, abs(mw) + 2 * sw
            verdict = True if hi9 < low else (False if lo9 > hiw else None)
            rows.append({"corruption": kind, "letter": i, "share corrupted": share,
                         "9.1": m9, "9.1 SE": s9, "weakest mover": weakest,
                         "mover": mw, "mover SE": sw, "9.1 smaller": verdict})
    return pd.DataFrame(rows)


#: The conditions of :func:`positional_conditions`, in order. "BOS swapped" and "both
#: swapped" are the paper's (the BOS column overwritten with the clean, unhooked run's
#: swapped values, selected heads together, rows not rescaled); the last is a variant.
CONDITIONS = ("clean", "positions swapped", "BOS swapped", "both swapped",
              "BOS swapped, rows rescaled (variant)")


@torch.no_grad()
def positional_conditions(model, ds: AcronymDataset, bos_heads, *, pair=(1, 2), watch=((8, 11),),
                          letters=(1, 2, 3), per_prompt: bool = False, batch_size: int = 64):
    """The paper's conditions for the capitals ``pair = (a, b)`` (:data:`CONDITIONS`):

    * ``clean``;
    * ``positions swapped``: the positional embeddings of Ca and Cb exchanged;
    * ``BOS swapped``: the paper's swap (:func:`helpers.positional.bos_column_swap_hooks`):
      in every head of ``bos_heads`` at once, the attention-to-BOS column overwritten with
      the clean, unhooked run's values, those of the query rows Ca and Cb exchanged; rows
      are not rescaled;
    * ``both swapped``: both at once (the BOS column still from the unhooked clean run, as
      in the paper's code);
    * ``BOS swapped, rows rescaled (variant)``: not the paper's: the swap made inside the
      run, each swapped row's other entries rescaled to sum to one
      (:func:`helpers.positional.swap_bos_attention_hooks`).

    Heads (``bos_heads``, ``watch``) as ``"L.H"`` labels or ``(layer, head)`` pairs.
    A long DataFrame, one row per (condition, letter, watched head): ``swap`` ("C1 ↔ C2"),
    ``condition``, ``letter``, ``logit diff.`` (that letter's metric), ``head``, and the
    head's attention from Pi to each capital (``to C1``, ``to C2``, ``to C3``, ``to
    matching Ci``), averaged over prompts; with ``per_prompt`` one row per prompt too (a
    ``prompt`` column, no averaging), for standard errors.
    """
    import pandas as pd

    from ..circuits import head_label, parse_head
    from ..hooks import as_heads, hook_name
    from ..positional import (_final_resid, bos_column_swap_hooks, swap_bos_attention_hooks,
                              swap_pos_embed_hooks)

    a, b = (int(x) for x in pair)
    for i in (a, b, *letters):
        _check_letter(i)
    if a == b:
        raise ValueError(f"pair must name two different capitals, got {pair!r}")
    bos_heads = [parse_head(x) for x in bos_heads]  # "L.H" labels or (layer, head) pairs
    watch = as_heads([parse_head(x) for x in watch], model)
    names = sorted({hook_name("pattern", L) for L, _ in watch})
    pos = swap_pos_embed_hooks(2 * a, 2 * b)
    variant = swap_bos_attention_hooks(model, bos_heads, 2 * a, 2 * b) if bos_heads else []
    frames = []
    for s in range(0, len(ds), batch_size):
        tok = ds.tokens[s : s + batch_size]
        ans = ds.answers[s : s + batch_size]
        bos = bos_column_swap_hooks(model, tok, bos_heads, 2 * a, 2 * b) if bos_heads else []
        for label, hooks in zip(CONDITIONS, ([], pos, bos, pos + bos, variant)):
            acts: dict[str, torch.Tensor] = {}
            saves = [(n, lambda t, hook, _n=n: acts.__setitem__(_n, t.detach())) for n in names]
            final = _final_resid(model, tok.to(model.cfg.device), [*hooks, *saves])
            lg = model.unembed(model.ln_final(final[:, [8, 9, 10]])).float().cpu()
            lds = _per_prompt_lds(lg, ans)
            for i in letters:
                p = PREDICTION_POSITIONS[i]
                for L, h in watch:
                    att = acts[hook_name("pattern", L)][:, h, p][:, [2, 4, 6]].float().cpu()
                    frame = {"swap": f"C{a} ↔ C{b}", "condition": label, "letter": i,
                             "prompt": torch.arange(s, s + len(tok)).numpy(),
                             "logit diff.": lds[:, i - 1].numpy(), "head": head_label(L, h)}
                    frame.update({f"to C{j}": att[:, j - 1].numpy() for j in (1, 2, 3)})
                    frame["to matching Ci"] = att[:, i - 1].numpy()
                    frames.append(pd.DataFrame(frame))
    df = pd.concat(frames, ignore_index=True)
    if per_prompt:
        return df
    keys = ["swap", "condition", "letter", "head"]
    return df.drop(columns="prompt").groupby(keys, sort=False).mean().reset_index()


def attention_shift(per_prompt, *, condition: str, head: str = "8.11", letter: int = 1,
                    key: str = "to C1") -> torch.Tensor:
    """``[n]``: each prompt's change of ``head``'s attention (column ``key``) at letter
    ``letter`` under ``condition`` relative to the clean run, from the per-prompt table of
    :func:`positional_conditions` (one swap pair). The paper's BOS-swap number is
    ``attention_shift(t, condition="BOS swapped")`` for 8.11, letter 1, C1 ↔ C2."""
    if condition not in CONDITIONS[1:]:
        raise ValueError(f"condition must be one of {CONDITIONS[1:]}, got {condition!r}")
    if per_prompt["swap"].nunique() != 1 or "prompt" not in per_prompt:
        raise ValueError("pass the per-prompt table of one swap pair "
                         "(positional_conditions(..., per_prompt=True))")
    sel = per_prompt[(per_prompt["head"] == head) & (per_prompt["letter"] == letter)]
    if sel.empty:
        raise KeyError(f"no rows for head {head!r}, letter {letter}: was it watched?")
    get = lambda c: torch.tensor(sel[sel["condition"] == c].sort_values("prompt")[key].to_numpy())  # noqa: E731
    return get(condition) - get("clean")


# ------------------------------------------------------------------------------ scorecard

#: The notebook's section headings (the scorecard links each row to the section that
#: computed it; keep them equal to the headings in ``notebooks/02_acronyms.ipynb``).
SECTIONS = {
    "task": "1. The task: how well does GPT-2 do it?",
    "resid": "2. Where is the letter? Residual-stream patching",
    "heads": "3. Which heads move it? Head patching",
    "previous": "4. The earlier words: previous-words corruption",
    "movers": "5. The letter movers",
    "circuit": "6. The circuit as a whole (Fig. 8)",
    "position": "7. Position: embeddings or attention to BOS?",
}


def build_scorecard(res: dict, *, stand_in: bool):
    """The chapter's scorecard from this run's results ``res`` (missing keys or ``None``:
    "not run at this size"). Per-prompt tensors give each row its standard error.

    Keys: ``circuit_heads`` (int); ``accuracy3_candidates`` ([n] bool, unfiltered);
    ``clean`` ([n, 3] metric per prompt); ``curves`` ([9, n, 3] add-back values, Fig. 8
    order); ``attention_811`` ({letter: [n]}); ``head_rows`` ({letter: {"L.H": [n]}});
    ``resid_c3`` ([n], letter 3, at the layer where the sweep's effect at C3 is most
    negative); ``prev_rows`` ({(head label, "C2" | "P2"): [n]}, letter 2); ``bos_shift``,
    ``pos_shift`` ([n], 8.11's attention P1 → C1, letter 1, C1 ↔ C2, swapped − clean);
    ``ranking`` (all 144 heads, most negative current-word effect first).
    """
    from ..scorecard import Scorecard

    R, S = ACRONYMS, SECTIONS
    get = lambda k: res.get(k)  # noqa: E731
    card = Scorecard("Acronyms, GPT-2 small (García-Carrasco et al. 2024)", stand_in=stand_in)
    card.data_check("circuit heads", R["circuit_heads"], get("circuit_heads"),
                    note="the circuit as this chapter defines it (a constant)")
    acc = get("accuracy3_candidates")
    card.info("third-letter accuracy, unfiltered candidates", R["third_letter_accuracy"],
              None if acc is None else acc.float().mean().item(), section=S["task"],
              values=None if acc is None else acc.float(),
              note="not like for like: the paper's 0.906 is derived on its data file, already "
                   "filtered to prompts GPT-2 gets right; after the same filter ours is 1 by "
                   "construction, so this is the unfiltered candidates' accuracy")
    clean, curves = get("clean"), get("curves")
    for i in (1, 2, 3):
        v = None if clean is None else clean[:, i - 1]
        card.band(f"clean logit diff., letter {i}", R["clean_ld"][i], None, 0.5, null=0.0,
                  values=v, section=S["circuit"], note="null: a model indifferent between letters")
        paper_clean = R["clean_ld"][i].value
        steps = (("all heads ablated", "all_ablated_ld", 0, paper_clean,
                  "null: the ablation changes nothing (the paper's clean value)"),
                 ("only 8.11 restored", "only_811_ld", 1, R["all_ablated_ld"][i].value,
                  "null: restoring 8.11 changes nothing (the paper's all-ablated value)"),
                 ("4 letter movers restored", "movers_ld", 4, R["all_ablated_ld"][i].value,
                  "null: restoring the movers changes nothing (all-ablated value)"),
                 ("8-head circuit", "circuit_ld", 8, R["all_ablated_ld"][i].value,
                  "null: restoring the circuit changes nothing (all-ablated value)"))
        for name, key, step, null, note in steps:
            v = None if curves is None else curves[step, :, i - 1]
            card.band(f"{name}, letter {i}", R[key][i], None, 0.5, null=null, values=v,
                      section=S["circuit"], note=note)
        att = (get("attention_811") or {}).get(i)
        card.band(f"8.11 attention Pi → Ci, letter {i}", R["attn_811_to_ci"][i], None, 0.1,
                  null=0.0, values=att, section=S["movers"], note="null: no attention to Ci")
    rows = get("head_rows") or {}
    for key, (L, H), tol in HEAD_PATCH_ROWS:
        for i, ref in R[key].items():  # no row where the paper reads "small" without a number
            v = rows.get(i, {}).get(f"{L}.{H}")
            q = f"head patching {L}.{H}, letter {i} (current word)"
            if tol is None:
                card.sign(q, ref, None, -1, values=v, section=S["heads"])
            else:
                card.band(q, ref, None, tol, null=0.0, values=v, section=S["heads"])
    card.band("residual patching at C3 (most negative layer), letter 3", R["resid_c3_letter3"],
              None, 2.0, null=0.0, values=get("resid_c3"), section=S["resid"])
    prev = get("prev_rows") or {}
    for key, (L, H), where, tol in PREVIOUS_WORD_ROWS:
        name = "A1" if where == "P2" else where
        v = prev.get((f"{L}.{H}", where))
        q = f"previous words, {L}.{H} at {name}, letter 2"
        if tol is None:
            card.sign(q, R[key], None, -1, values=v, section=S["previous"])
        else:
            card.band(q, R[key], None, tol, null=0.0, values=v, section=S["previous"])
    bos, pos = get("bos_shift"), get("pos_shift")
    card.sign("BOS swap: 8.11 attention P1 → C1, swapped − clean (C1 ↔ C2)",
              R["bos_swap_811_shift"], None, -1, values=bos, section=S["position"],
              note="the paper's swap: clean BOS column, selected heads together, no rescaling")
    if bos is None or pos is None:
        greater = lesser = (None, None, None)
    else:
        greater = (-bos.mean().item(), se(bos))
        lesser = (pos.mean().abs().item(), se(pos))
    card.ordering("BOS swap lowers 8.11's attention to C1 more than the position swap moves it",
                  R["bos_vs_pos_811"],
                  greater=("−(BOS-swap shift)", *greater[:2]),
                  lesser=("|position-swap shift|", *lesser[:2]), section=S["position"])
    card.info("position swap: 8.11 attention P1 → C1, swapped − clean (C1 ↔ C2)",
              R["pos_swap_811_shift"], None, values=pos, section=S["position"],
              note="the paper says 'essentially unchanged' without a number: a claim of no "
                   "effect cannot be graded (a run with no effect passes it)")
    ranking = get("ranking")
    card.top_k("letter movers among the 8 most negative heads (current word, all letters)",
               R["movers_top_heads"], ranking, ACRONYM_CIRCUIT.labels("letter mover"), 8, need=3,
               section=S["heads"],
               note="8.11 and 10.10 dominate, then 11.4 and 9.9 (9.9 is small: 3 of 4 needed)")
    return card
