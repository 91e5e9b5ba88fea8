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
    "capital_residuals",
    "ov_letter_matrix",
    "SWAP_PAIRS",
    "BOS_SIGNAL_HEADS",
    "select_bos_heads",
    "bos_sweep_figure",
    "positional_conditions",
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
def _final_logits(model, tokens) -> torch.Tensor:
    """``[n, 3, d_vocab]``: the logits at P1, P2, P3."""
    logits = model(torch.as_tensor(tokens).to(model.cfg.device))
    return logits[:, [8, 9, 10]].float().cpu()


def letter_logit_diffs(model, ds: AcronymDataset, *, batch_size: int = 256) -> torch.Tensor:
    """``[n, 3]``: each prompt's metric for each letter (not averaged)."""
    rivals = torch.tensor(LETTER_IDS)
    out = []
    for s in range(0, len(ds), batch_size):
        lg = _final_logits(model, ds.tokens[s : s + batch_size])
        ans = ds.answers[s : s + batch_size]
        out.append(torch.stack([logit_diff_vs_rivals(lg[:, i], ans[:, i], rivals, mean=False) for i in range(3)], 1))
    return torch.cat(out)


def letter_accuracy(model, ds: AcronymDataset, *, batch_size: int = 256) -> torch.Tensor:
    """``[n, 3]`` bool: is each letter the argmax over the whole vocabulary at Pi?"""
    out = []
    for s in range(0, len(ds), batch_size):
        lg = _final_logits(model, ds.tokens[s : s + batch_size])
        out.append(lg.argmax(-1) == ds.answers[s : s + batch_size])
    return torch.cat(out)


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
}

#: Scorecard rows of head patching with the current word corrupted: (key of
#: :data:`ACRONYMS`, head, tolerance), one row per letter that the key has a number for.
HEAD_PATCH_ROWS = (
    ("patch_811", (8, 11), 0.5),
    ("patch_1010", (10, 10), 0.5),
    ("patch_114", (11, 4), 0.5),
    ("patch_99", (9, 9), 0.2),  # a small effect: its sign must hold
)

#: Scorecard rows of the previous-words experiment (letter 2): (key of :data:`ACRONYMS`,
#: head, where the head is patched, tolerance). ``"P2"`` is the data set's name for the
#: paper's A1 (the position that predicts letter 2); values at C2 are tiny, so their
#: tolerance is the reading error itself.
PREVIOUS_WORD_ROWS = (
    ("prev_words_at_A_811_letter2", (8, 11), "P2", 0.3),
    ("prev_words_at_A_58_letter2", (5, 8), "P2", 0.3),
    ("prev_words_at_A_1010_letter2", (10, 10), "P2", 0.3),
    ("prev_words_at_C_411_letter2", (4, 11), "C2", 0.1),
    ("prev_words_at_C_10_letter2", (1, 0), "C2", 0.1),
    ("prev_words_at_C_22_letter2", (2, 2), "C2", 0.1),
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


# ------------------------------------------------------------------------------ letter movers


@torch.no_grad()
def attention_and_dla(model, ds: AcronymDataset, heads, letters=(1, 2, 3)):
    """One row per (prompt, head, letter): the head's attention from Pi to Ci and its direct
    logit attribution to the correct letter at Pi (along W_U[:, letter], after the final
    LayerNorm's scale; :func:`helpers.dla_by_head`). A pandas DataFrame with columns
    ``letter, head, attention, dla``."""
    import pandas as pd

    from ..attribution import dla_by_head
    from ..circuits import head_label, parse_head
    from ..hooks import hook_name

    heads = [parse_head(h) for h in heads]
    _, cache = model.run_with_cache(ds.tokens.to(model.cfg.device))
    rows = torch.arange(len(ds))
    frames = []
    for i in letters:
        _check_letter(i)
        p, c = PREDICTION_POSITIONS[i], 2 * i
        direct = dla_by_head(model, cache, ds.letters(i), None, ds.positions[f"P{i}"])
        for L, h in heads:
            att = cache[hook_name("pattern", L)][rows, h, p, c].float().cpu()
            frames.append(pd.DataFrame({
                "letter": i, "head": head_label(L, h), "attention": att.numpy(),
                "dla": direct[L, h].float().cpu().numpy(),
            }))
    del cache
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def capital_residuals(model, tokenizer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(resid [26, d_model], spaced capital ids [26])``: each spaced capital " A".." Z"
    read as a one-token prompt, in the residual stream entering layer 1 (embedding,
    position 0, layer 0's attention and MLP): the "embedding + MLP0" input of an OV circuit."""
    from ..hooks import capture, hook_name

    tokenizer = tokenizer or _default_tokenizer()
    ids = torch.tensor([tokenizer.encode(" " + chr(65 + i))[0] for i in range(26)])
    name = hook_name("resid_pre", 1)
    _, acts = capture(model, ids[:, None], [name])
    return acts[name][:, 0], ids


@torch.no_grad()
def ov_letter_matrix(model, head, resid: torch.Tensor) -> torch.Tensor:
    """``[26, 26]``: the head's full OV circuit from each spaced capital's residual (rows, A..Z)
    to the logits of the letters "A".."Z" (columns), each row centred on its mean."""
    from ..heads import ov_logits

    out = ov_logits(model, head, resid)[:, list(LETTER_IDS)].float().cpu()
    return out - out.mean(-1, keepdim=True)


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


def bos_sweep_figure(effects, pair, *, marked=None):
    """One row of layer × head heatmaps, one per letter (``effects``: ``{letter: [n_layers,
    n_heads]}``), on a shared colour scale, with ``marked`` heads (``{name: labels}``)
    outlined: the paper's swap_BOS figure for the capitals ``pair``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..circuits import head_label, parse_head

    letters = list(effects)
    z = {i: torch.as_tensor(effects[i]).float().cpu() for i in letters}
    lim = max(float(v.nan_to_num().abs().max()) for v in z.values()) or 1.0
    n_layers, n_heads = z[letters[0]].shape
    fig = make_subplots(1, len(letters), subplot_titles=[f"letter {i}" for i in letters],
                        shared_yaxes=True, horizontal_spacing=0.03)
    text = [[head_label(L, h) for h in range(n_heads)] for L in range(n_layers)]
    symbols = ["square-open", "circle-open", "diamond-open", "x-thin-open"]
    for k, i in enumerate(letters, start=1):
        fig.add_trace(go.Heatmap(
            z=z[i].numpy(), text=text, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            showscale=k == len(letters), colorbar=dict(title="swapped − clean"),
            hovertemplate=f"letter {i}, head %{{text}}<br>value %{{z:.4f}}<extra></extra>",
        ), 1, k)
        for g, (name, heads) in enumerate((marked or {}).items()):
            lh = [parse_head(x) for x in heads]
            fig.add_trace(go.Scatter(
                x=[h for _, h in lh], y=[L for L, _ in lh], mode="markers", name=name,
                legendgroup=name, showlegend=k == 1, hoverinfo="skip",
                marker=dict(symbol=symbols[g % len(symbols)], size=9, color="black"),
            ), 1, k)
        fig.update_xaxes(title="Head", range=[-0.5, n_heads - 0.5], row=1, col=k)
    fig.update_yaxes(title="Layer", range=[n_layers - 0.5, -0.5], row=1, col=1)
    a, b = pair
    fig.update_layout(title=f"Attention to BOS swapped between C{a} and C{b}, one head at a time",
                      height=420, legend=dict(orientation="h", y=-0.25))
    return fig


@torch.no_grad()
def positional_conditions(model, ds: AcronymDataset, bos_heads, *, pair=(1, 2), watch=((8, 11),),
                          letters=(1, 2, 3)):
    """The paper's four conditions for the capitals ``pair = (a, b)``: clean, the positional
    embeddings of Ca and Cb swapped, attention-to-BOS swapped between the query positions
    Ca and Cb in ``bos_heads``, and both. Heads (``bos_heads``, ``watch``) as ``"L.H"``
    labels or ``(layer, head)`` pairs.

    A long DataFrame, one row per (condition, letter, watched head): ``swap`` ("C1 ↔ C2"),
    ``condition``, ``letter``, ``logit diff.`` (that letter's metric), ``head``, and the
    head's attention from Pi to each capital (``to C1``, ``to C2``, ``to C3``, and
    ``to matching Ci``), averaged over prompts. Every letter is measured on its own (the swap touches all three).
    """
    import pandas as pd

    from ..circuits import head_label, parse_head
    from ..hooks import as_heads, capture, hook_name
    from ..positional import swap_bos_attention_hooks, swap_pos_embed_hooks

    a, b = (int(x) for x in pair)
    for i in (a, b, *letters):
        _check_letter(i)
    if a == b:
        raise ValueError(f"pair must name two different capitals, got {pair!r}")
    pos = swap_pos_embed_hooks(2 * a, 2 * b)
    bos_heads = [parse_head(x) for x in bos_heads]  # "L.H" labels or (layer, head) pairs
    bos = swap_bos_attention_hooks(model, bos_heads, 2 * a, 2 * b) if bos_heads else []
    watch = as_heads([parse_head(x) for x in watch], model)
    names = sorted({hook_name("pattern", L) for L, _ in watch})
    rows = []
    for label, hooks in (("clean", []), ("positions swapped", pos), ("BOS attention swapped", bos),
                         ("both swapped", pos + bos)):
        logits, acts = capture(model, ds.tokens, names, fwd_hooks=hooks)
        for i in letters:
            ld = letter_metric(ds, i)(logits).item()
            p = PREDICTION_POSITIONS[i]
            for L, h in watch:
                att = acts[hook_name("pattern", L)][:, h, p, [2, 4, 6]].float().mean(0).tolist()
                rows.append({"swap": f"C{a} ↔ C{b}", "condition": label, "letter": i,
                             "logit diff.": ld, "head": head_label(L, h),
                             **{f"to C{j}": v for j, v in zip((1, 2, 3), att)},
                             "to matching Ci": att[i - 1]})
    return pd.DataFrame(rows)
