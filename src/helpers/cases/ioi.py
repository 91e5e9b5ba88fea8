"""Indirect Object Identification (IOI) prompts, built the way the book needs them.

IOI (Wang et al. 2022, "Interpretability in the Wild", arXiv 2211.00593) asks GPT-2 small to
finish "When Mary and John went to the store, John gave a drink to" with " Mary": the
indirect object IO ([A] in the paper) rather than the repeated subject S ([B]). This module
turns the paper's sentence templates into batches of prompts with everything a circuit
experiment needs: token ids, the answer and distractor tokens, the token positions of IO, S1,
S1+1, S2 and END, per-template groups for mean ablation, and the p_ABC corruption. It also
holds what the chapter compares against, as data: the published numbers (:data:`IOI`, from
the text named in :data:`PAPER_VERSION`), the circuit (:data:`IOI_CIRCUIT`), the paper's
minimality sets (:data:`MINIMALITY_SETS`, :data:`MINIMALITY_F`), its five path-patching
experiments (:data:`PATH_PATCHING`) and the copy score's in-context inputs
(:func:`copy_score_inputs`).

Choices, stated once here and again where they bite:

* **No BOS by default.** The authors' code fed GPT-2 its prompts without a leading
  ``<|endoftext|>`` (the paper's text does not say); ARENA and the TransformerLens demos
  prepend one. ``prepend_bos=True`` puts token 50256 first and shifts every position by one.
* **Templates.** All 15 templates of the paper's App. E (Fig. 14), kept as data in
  :data:`BABA_TEMPLATES`, each usable in BABA order (as the paper writes them) and ABBA order
  (first [B] and first [A] swapped). The wordings were checked word for word against the
  ``BABA_TEMPLATES`` list of the paper's dataset code (Easy-Transformer's ``ioi_dataset.py``,
  also in ACDC). The paper's official ``"mixed"`` default sampled only templates 1-7; here the
  default is all 15 and ``templates=`` picks any subset.
* **Names.** :data:`NAMES` is the book's own list of 100 common English first names (50 + 50),
  not the paper's list of 99 nor ARENA's 109. Places and objects are the 8 + 8 words that all
  the public IOI code uses. Every word must be one GPT-2 token with a leading space; this is
  checked with the tokenizer each time a dataset is built, and a violation raises.
* **Prompts stop before the answer.** A prompt ends with the token just before [A] (END);
  the answer token is ``io_tokens``.
* **Corruption p_ABC** (:meth:`IOIDataset.corrupt_abc`): the same template, order, place and
  object with three fresh, distinct names at the IO, S1 and S2 slots, seeded, so every
  position and length is unchanged. As in ARENA (and unlike the paper's code, which also
  swaps the answer), the corrupted dataset keeps the *clean* ``io_tokens``/``s_tokens`` for
  scoring; the names it actually contains are in ``slot_names``/``slot_tokens``.
* **Positions are found by tokenizing.** Each slot's name token is searched for in the
  tokenized prompt (S1 is the first occurrence of S, S2 the second); any count other than the
  expected one raises, so a template or word that tokenizes unexpectedly cannot slip through.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import torch

from ..circuits import Circuit, Head, parse_head
from ..hooks import activations_at
from ..metrics import percent_change
from ..path_patching import path_patch
from ..plotting import heads_heatmap
from ..prompts import PAD_TOKEN_ID, PromptSet, _default_tokenizer, check_single_tokens, tokenize
from ..scorecard import Reference

__all__ = [
    "BABA_TEMPLATES",
    "NAMES",
    "PLACES",
    "OBJECTS",
    "ORDERS",
    "POSITION_KEYS",
    "PAD_TOKEN_ID",
    "IOIDataset",
    "make_ioi_dataset",
    "render_template",
    "template_text",
    "IOI",
    "IOI_CIRCUIT",
    "PAPER_VERSION",
    "MINIMALITY_SETS",
    "MINIMALITY_F",
    "minimality_k_sets",
    "PathPatchingExperiment",
    "PATH_PATCHING",
    "DISCOVERY",
    "discovery_ranking",
    "NAIVE_CIRCUIT",
    "completeness_classes",
    "copy_score_inputs",
    "minimality_table",
    "build_scorecard",
]

ORDERS = ("BABA", "ABBA")
POSITION_KEYS = ("IO", "S1", "S1+1", "S2", "END")
_SLOTS = ("IO", "S1", "S2")

# The 15 templates of the paper's App. E (Fig. 14), in the paper's order (template k is
# BABA_TEMPLATES[k - 1]) and in its BABA form: [B] is the subject S, [A] the indirect object
# IO, and the final [A] is the answer, which prompts leave out.
BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)

# The book's own list: 50 + 50 common English first names, each one GPT-2 token with a
# leading space. Names that are also ordinary words or places (Mark, Grace, Austin, ...) are
# left out on purpose.
NAMES: tuple[str, ...] = (
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Paul", "Steven", "Andrew", "Kenneth",
    "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey",
    "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Justin", "Scott",
    "Brandon", "Benjamin", "Samuel", "Gregory", "Patrick", "Jack", "Dennis", "Tyler",
    "Aaron", "Henry", "Adam", "Peter", "Nathan", "Kyle", "Walter",
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly",
    "Emily", "Donna", "Michelle", "Dorothy", "Amanda", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Helen", "Anna", "Brenda",
    "Nicole", "Emma", "Samantha", "Katherine", "Christine", "Rachel", "Catherine", "Janet",
    "Ruth", "Maria", "Heather", "Julie", "Olivia", "Kelly", "Lauren", "Megan",
)

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)

# --------------------------------------------------------------------------- templates


@lru_cache(maxsize=None)
def template_text(template_id: int, order: str = "BABA") -> str:
    """Template ``template_id`` (1..15) in the given order, with slot placeholders.

    Returns the prompt skeleton without the answer, using ``{IO}``, ``{S1}``, ``{S2}``,
    ``{PLACE}`` and ``{OBJECT}``. BABA is the paper's form ("[B] and [A] ... [B] ... to");
    ABBA swaps the first [B] and the first [A] ("[A] and [B] ... [B] ... to").
    """
    if not 1 <= int(template_id) <= len(BABA_TEMPLATES):
        raise ValueError(f"template_id must be in 1..{len(BABA_TEMPLATES)}, got {template_id}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    text = BABA_TEMPLATES[int(template_id) - 1]
    answer = " [A]"
    if not text.endswith(answer) or text.count("[A]") != 2 or text.count("[B]") != 2:
        raise ValueError(f"malformed IOI template {template_id}: {text!r}")
    text = text[: -len(answer)]  # the prompt stops at END, the token before the answer
    first_b, first_a = text.index("[B]"), text.index("[A]")
    if order == "BABA":
        roles = {first_b: "{S1}", first_a: "{IO}"}
    else:
        roles = {first_b: "{IO}", first_a: "{S1}"}
    second_b = text.index("[B]", first_b + 3)
    roles[second_b] = "{S2}"
    out, last = [], 0
    for start in sorted(roles):
        out.append(text[last:start])
        out.append(roles[start])
        last = start + 3
    out.append(text[last:])
    return "".join(out).replace("[PLACE]", "{PLACE}").replace("[OBJECT]", "{OBJECT}")


@lru_cache(maxsize=None)
def _slot_text_rank(template_id: int, order: str) -> dict[str, int]:
    """The order (0, 1, 2) in which the IO, S1 and S2 slots appear in the prompt text."""
    skel = template_text(template_id, order)
    starts = sorted((skel.index("{" + s + "}"), s) for s in _SLOTS)
    return {s: i for i, (_, s) in enumerate(starts)}


def _uses(template_id: int, word: str) -> bool:
    return f"[{word}]" in BABA_TEMPLATES[int(template_id) - 1]


def render_template(
    template_id: int,
    order: str,
    *,
    io: str,
    s1: str,
    s2: str | None = None,
    place: str | None = None,
    obj: str | None = None,
) -> str:
    """One prompt (no answer): template ``template_id`` in ``order`` with the slots filled.

    ``s2`` defaults to ``s1`` (a clean IOI prompt); p_ABC gives three different names.
    """
    skel = template_text(template_id, order)
    if _uses(template_id, "PLACE") and place is None:
        raise ValueError(f"template {template_id} needs a place")
    if _uses(template_id, "OBJECT") and obj is None:
        raise ValueError(f"template {template_id} needs an object")
    return (
        skel.replace("{IO}", io)
        .replace("{S1}", s1)
        .replace("{S2}", s1 if s2 is None else s2)
        .replace("{PLACE}", place or "")
        .replace("{OBJECT}", obj or "")
    )


# --------------------------------------------------------------------------- word checks


# --------------------------------------------------------------------------- dataset


@dataclass(eq=False, kw_only=True)
class IOIDataset(PromptSet):
    """A batch of IOI prompts: a :class:`~helpers.prompts.PromptSet` plus names and templates.

    ``n`` is the number of prompts and ``L`` the longest tokenized prompt (BOS included when
    ``prepend_bos``). Without BOS the prompts are 14-20 tokens long.

    Fields besides the prompt set's (``prompts``, ``tokens [n, L]`` right-padded with 50256,
    ``lengths``, ``answers`` = IO tokens, ``wrong`` = S tokens, ``positions``):
        io_names, s_names: the names scored as answer (IO) and distractor (S). In a
            corrupted dataset these are still the *clean* names (see :meth:`corrupt_abc`).
        slot_names: ``{"IO", "S1", "S2"} -> n`` names actually written in each slot
            (clean: IO = io, S1 = S2 = s; p_ABC: three fresh names).
        slot_tokens: ``{"IO", "S1", "S2"} -> [n]`` long, their token ids.
        places, objects: ``n`` words, or ``None`` where the template has no such slot.
        template_ids: ``[n]`` long, template index 1..15 of each prompt.
        orders: ``n`` of ``"BABA"``/``"ABBA"``.
        positions: ``{"IO", "S1", "S1+1", "S2", "END"} -> [n]``; END = ``lengths - 1`` (the
            answer would go at END + 1).
        seed: the seed used to build it; corruption: ``None`` (clean) or ``"ABC"``.
    """

    io_names: list[str]
    s_names: list[str]
    slot_names: dict[str, list[str]]
    slot_tokens: dict[str, torch.Tensor]
    places: list[str | None]
    objects: list[str | None]
    template_ids: torch.Tensor
    orders: list[str]
    seed: int | None = None
    corruption: str | None = None

    @property
    def io_tokens(self) -> torch.Tensor:
        """``[n]`` long: the IO name's token (the answer)."""
        return self.answers

    @property
    def s_tokens(self) -> torch.Tensor:
        """``[n]`` long: the S name's token (the wrong answer)."""
        return self.wrong

    @property
    def answer_tokens(self) -> torch.Tensor:
        """``[n, 2]`` long: column 0 the IO (correct) token, column 1 the S token."""
        return torch.stack([self.io_tokens, self.s_tokens], dim=1)

    def groups(self, by: Literal["template", "template_order"] | Any = "template") -> dict[Any, torch.Tensor]:
        """Indices of the prompts sharing a template, for per-template means.

        ``by="template"``: ``{template_id: [k] long indices}``. All prompts of one template
        have the same length and positions whichever the order, and in p_ABC (three random
        names) the BABA/ABBA distinction vanishes, so this is the grouping for mean ablation
        over p_ABC. ``by="template_order"``: keys ``(template_id, order)``, which is what the
        paper's code effectively grouped by (its template list held BABA and ABBA copies).
        Any other value is passed to :meth:`PromptSet.groups`.
        """
        if by == "template":
            return super().groups("template_ids")
        if by == "template_order":
            return super().groups(("template_ids", "orders"))
        return super().groups(by)

    def corrupt_abc(self, seed: int = 1, *, names: Sequence[str] | None = None) -> IOIDataset:
        """The p_ABC twin of this dataset: same shape, three fresh names per prompt.

        Each prompt keeps its template, order, place and object; its IO, S1 and S2 slots get
        three distinct names drawn (seeded by ``seed``) from ``names`` (default
        :data:`NAMES`), none equal to the clean IO or S. Every name is one token, so each
        corrupted prompt has the same length and the same positions as its clean one
        (checked). The returned dataset keeps the **clean** ``io_names``/``s_names`` and
        ``io_tokens``/``s_tokens``, so logit differences on it are scored against the clean
        answer (ARENA's convention; the paper's code also replaced the answer). Its own
        names are in ``slot_names``/``slot_tokens``; ``corruption == "ABC"``.
        """
        names = tuple(NAMES if names is None else names)
        tokenizer = self.tokenizer or _default_tokenizer()
        name_ids = check_single_tokens(names, tokenizer, what="names")
        if len(names) < 5:
            raise ValueError("p_ABC needs at least 5 names (2 clean + 3 fresh)")
        rng = random.Random(seed)
        new: dict[str, list[str]] = {s: [] for s in _SLOTS}
        for io, s in zip(self.io_names, self.s_names):
            pool = [n for n in names if n != io and n != s]
            x, y, z = rng.sample(pool, 3)
            new["IO"].append(x)
            new["S1"].append(y)
            new["S2"].append(z)
        prompts = [
            render_template(int(t), o, io=a, s1=b, s2=c, place=p, obj=ob)
            for t, o, a, b, c, p, ob in zip(
                self.template_ids, self.orders, new["IO"], new["S1"], new["S2"], self.places, self.objects
            )
        ]
        slot_tokens = {k: torch.tensor([name_ids[n] for n in v], dtype=torch.long) for k, v in new.items()}
        tokens, lengths, positions = _tokenize_and_locate(
            prompts, slot_tokens, self.template_ids, self.orders, self.prepend_bos, tokenizer
        )
        if tokens.shape != self.tokens.shape or not torch.equal(lengths, self.lengths):
            raise RuntimeError("p_ABC corruption changed prompt lengths; a name is not one token")
        for k in POSITION_KEYS:
            if not torch.equal(positions[k], self.positions[k]):
                raise RuntimeError(f"p_ABC corruption moved position {k}")
        return replace(
            self,
            prompts=prompts,
            slot_names=new,
            slot_tokens=slot_tokens,
            tokens=tokens,
            lengths=lengths,
            positions=positions,
            seed=seed,
            corruption="ABC",
        )


def _tokenize_and_locate(
    prompts: list[str],
    slot_tokens: dict[str, torch.Tensor],
    template_ids: torch.Tensor,
    orders: list[str],
    prepend_bos: bool,
    tokenizer: Any,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Tokenize ``prompts`` and find the IO/S1/S2 slots in the token ids.

    Returns ``tokens [n, L]`` (right-padded with 50256), ``lengths [n]`` and positions. For
    each slot, its name token is searched for in the row: if k slots earlier in the text
    carry the same token (S2 after S1 in a clean prompt), the slot is its (k+1)-th
    occurrence, and the token must occur exactly as often as slots carry it. Raises
    ``RuntimeError`` otherwise.
    """
    n = len(prompts)
    try:
        tokens, lengths = tokenize(prompts, tokenizer, prepend_bos=prepend_bos)
    except ValueError as err:
        raise RuntimeError(str(err)) from None
    L = tokens.shape[1]
    real = torch.arange(L)[None, :] < lengths[:, None]
    if prepend_bos:
        real[:, 0] = False  # BOS is never a name

    ranks = [_slot_text_rank(t, o) for t, o in zip(template_ids.tolist(), orders)]
    text_rank = {s: torch.tensor([r[s] for r in ranks], dtype=torch.long).reshape(n) for s in _SLOTS}

    positions: dict[str, torch.Tensor] = {}
    for s in _SLOTS:
        tok = slot_tokens[s]
        same = torch.stack([slot_tokens[u] == tok for u in _SLOTS], dim=1)  # [n, 3]
        before = torch.stack([text_rank[u] < text_rank[s] for u in _SLOTS], dim=1)
        occurrence = (same & before).sum(1) + 1  # [n], which occurrence of tok this slot is
        expected = same.sum(1)  # [n], how many slots carry tok
        mask = (tokens == tok[:, None]) & real  # [n, L]
        found = mask.sum(1)
        if not torch.equal(found, expected):
            i = int((found != expected).nonzero()[0])
            raise RuntimeError(
                f"slot {s}: token {int(tok[i])} occurs {int(found[i])} times, expected "
                f"{int(expected[i])}, in prompt {i}: {prompts[i]!r}"
            )
        hit = mask & (mask.long().cumsum(1) == occurrence[:, None])
        positions[s] = hit.long().argmax(1)
    positions["S1+1"] = positions["S1"] + 1
    positions["END"] = lengths - 1
    positions = {k: positions[k] for k in POSITION_KEYS}
    return tokens, lengths, positions


def _balanced_assignments(
    n: int, template_ids: list[int], orders: Sequence[str], rng: random.Random
) -> list[tuple[int, str]]:
    """``n`` (template, order) pairs: templates as even as possible (remainder to random
    templates), orders alternating within and across templates (counts differ by at most
    one overall and per template), then shuffled."""
    k = len(template_ids)
    counts = {t: n // k for t in template_ids}
    for t in rng.sample(template_ids, n % k):
        counts[t] += 1
    pairs: list[tuple[int, str]] = []
    j = 0
    for t in template_ids:
        for _ in range(counts[t]):
            pairs.append((t, orders[j % len(orders)]))
            j += 1
    rng.shuffle(pairs)
    return pairs


def make_ioi_dataset(
    n_prompts: int,
    *,
    templates: str | Sequence[int] = "all",
    orders: Sequence[str] = ("BABA", "ABBA"),
    prepend_bos: bool = False,
    seed: int = 0,
    tokenizer: Any = None,
    symmetric: bool = False,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
) -> IOIDataset:
    """Build ``n_prompts`` seeded IOI prompts (p_IOI) from the paper's templates.

    Args:
        n_prompts: number of prompts ``n``.
        templates: ``"all"`` (templates 1..15) or a list of template indices in 1..15.
        orders: which orders to use, ``("BABA", "ABBA")`` by default; both orders are mixed
            in balanced proportions (counts differ by at most one), and so are templates.
        prepend_bos: prepend ``<|endoftext|>`` (50256) and shift every position by one. The
            paper measured **without** BOS, hence the default ``False``.
        seed: the same seed gives identical prompts; the template/order assignment, names,
            places and objects are all drawn from ``random.Random(seed)``.
        tokenizer: a GPT-2 tokenizer; default :func:`helpers.models.gpt2_tokenizer`.
        symmetric: if True (``n_prompts`` even), prompt ``2i + 1`` is prompt ``2i`` with IO
            and S swapped (same template, order, place and object), like the paper's
            ``symmetric=True``.
        names, places, objects: word lists overriding :data:`NAMES`, :data:`PLACES`,
            :data:`OBJECTS`; each word must be one GPT-2 token with a leading space.

    Returns:
        An :class:`IOIDataset` with ``tokens [n, L]``, ``io_tokens``/``s_tokens [n]`` and
        ``positions`` ``{"IO", "S1", "S1+1", "S2", "END"} -> [n]``.

    Sampling: IO and S are two distinct names drawn uniformly; place and object uniformly
    (recorded as ``None`` for templates without them).
    """
    if n_prompts < 1:
        raise ValueError("n_prompts must be at least 1")
    if templates == "all":
        template_ids = list(range(1, len(BABA_TEMPLATES) + 1))
    elif isinstance(templates, str):
        raise ValueError(f"templates must be 'all' or a list of indices, got {templates!r}")
    else:
        template_ids = [int(t) for t in templates]
        if not template_ids or len(set(template_ids)) != len(template_ids):
            raise ValueError(f"templates must be a non-empty list of distinct indices, got {templates!r}")
        for t in template_ids:
            if not 1 <= t <= len(BABA_TEMPLATES):
                raise ValueError(f"template indices must be in 1..{len(BABA_TEMPLATES)}, got {t}")
    orders = tuple(orders)
    if not orders or len(set(orders)) != len(orders) or any(o not in ORDERS for o in orders):
        raise ValueError(f"orders must be a non-empty subset of {ORDERS}, got {orders!r}")
    if symmetric and n_prompts % 2:
        raise ValueError("symmetric=True needs an even n_prompts")

    tokenizer = tokenizer or _default_tokenizer()
    names = tuple(NAMES if names is None else names)
    places = tuple(PLACES if places is None else places)
    objects = tuple(OBJECTS if objects is None else objects)
    name_ids = check_single_tokens(names, tokenizer, what="names")
    check_single_tokens(places, tokenizer, what="places")
    check_single_tokens(objects, tokenizer, what="objects")
    if len(names) < 2:
        raise ValueError("need at least 2 names")
    clash = set(names) & (set(places) | set(objects))
    if clash:
        raise ValueError(f"words used both as names and places/objects: {sorted(clash)}")

    rng = random.Random(seed)
    n_base = n_prompts // 2 if symmetric else n_prompts
    pairs = _balanced_assignments(n_base, template_ids, orders, rng)

    rows: list[tuple[int, str, str, str, str | None, str | None]] = []
    for t, o in pairs:
        io, s = rng.sample(names, 2)
        place = rng.choice(places) if _uses(t, "PLACE") else None
        obj = rng.choice(objects) if _uses(t, "OBJECT") else None
        rows.append((t, o, io, s, place, obj))
        if symmetric:
            rows.append((t, o, s, io, place, obj))

    t_ids, ords, ios, ss, pls, objs = (list(c) for c in zip(*rows))
    prompts = [
        render_template(t, o, io=io, s1=s, place=p, obj=ob)
        for t, o, io, s, p, ob in zip(t_ids, ords, ios, ss, pls, objs)
    ]
    io_tokens = torch.tensor([name_ids[x] for x in ios], dtype=torch.long)
    s_tokens = torch.tensor([name_ids[x] for x in ss], dtype=torch.long)
    template_tensor = torch.tensor(t_ids, dtype=torch.long)
    slot_tokens = {"IO": io_tokens.clone(), "S1": s_tokens.clone(), "S2": s_tokens.clone()}
    tokens, lengths, positions = _tokenize_and_locate(
        prompts, slot_tokens, template_tensor, ords, prepend_bos, tokenizer
    )
    return IOIDataset(
        prompts=prompts,
        io_names=ios,
        s_names=ss,
        answers=io_tokens,
        wrong=s_tokens,
        slot_names={"IO": list(ios), "S1": list(ss), "S2": list(ss)},
        slot_tokens=slot_tokens,
        places=pls,
        objects=objs,
        template_ids=template_tensor,
        orders=ords,
        tokens=tokens,
        lengths=lengths,
        positions=positions,
        prepend_bos=prepend_bos,
        seed=seed,
        corruption=None,
        tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------- published numbers
# Sources are cited by paper section; "paper text" means read in the paper, "official code"
# taken from the authors' repository. The fact sheet behind these entries is the project's
# shared/papers/ioi.md.

#: Which text the numbers below come from. The anonymous ICLR submission (OpenReview) was an
#: earlier draft with other numbers: 28 heads, mean logit difference 3.55, a 10% drop with
#: the name movers knocked out, a 3% minimality floor.
PAPER_VERSION = "final arXiv text (2211.00593; = ICLR 2023 camera-ready, 26 heads)"

#: Wang et al. 2022, "Interpretability in the Wild" (arXiv 2211.00593, ICLR 2023), GPT-2 small,
#: as in :data:`PAPER_VERSION`.
IOI: dict[str, Reference] = {
    "logit_diff": Reference(
        3.56, "Wang et al. 2022, §2 (100k prompts); no BOS: from the authors' code "
        "(Easy-Transformer experiments.py), not stated in the text"
    ),
    "io_prob": Reference(0.49, "Wang et al. 2022, §2"),
    "io_beats_s": Reference(0.993, "Wang et al. 2022, §2"),
    "faithfulness_ratio": Reference(
        0.87, "Wang et al. 2022, §4 (F(M) − F(C) = 0.46, 13% of F(M))"
    ),
    "faithfulness_gap": Reference(0.46, "Wang et al. 2022, §4"),
    "name_movers_knocked_out_drop": Reference(
        0.05, "Wang et al. 2022, §3.4 (9.9, 9.6, 10.0 mean-ablated at END over p_ABC per "
        "template: logit difference falls ~5%)"
    ),
    "negative_movers_removed_F": Reference(
        4.07, "Wang et al. 2022, App. K, Fig. 20 (F(C \\ {10.7, 11.10}); App. K's own F(C) is "
        "2.62, not the ≈3.10 implied by §4)"
    ),
    "negative_movers_removed_rise": Reference(
        1.45, "Wang et al. 2022, App. K, Fig. 20 (F rises 2.62 → 4.07 when 10.7 and 11.10 "
        "leave the circuit; the rise, against App. K's own F(C) = 2.62)"
    ),
    "minimality_min_share": Reference(
        0.01, "Wang et al. 2022, §4.2, Fig. 7 (every node changes F by ≥ 1% of F(M) for its K; "
        "K sets in App. K)"
    ),
    "greedy_incompleteness": Reference(
        3.09, "Wang et al. 2022, §4.1, App. M (worst greedy K: |F(C \\ K) − F(M \\ K)| up to "
        "3.09, 87% of F(M); k = 10, 10 runs)"
    ),
    "name_mover_attention_to_io": Reference(0.59, "Wang et al. 2022, §3.1"),
    "name_mover_copy_score": Reference(0.95, "Wang et al. 2022, §3.1 (> 95%)"),
    "negative_mover_copy_score": Reference(0.98, "Wang et al. 2022, §3.1 (negative copy score)"),
    "s_inhibition_attention_to_s2": Reference(0.51, "Wang et al. 2022, §3.2"),
    "circuit_share_of_head_positions": Reference(0.011, "Wang et al. 2022, §1 (≈1.1%)"),
}


# --------------------------------------------------------------------------- the circuit

#: The 26-head, 7-class circuit (Wang et al. 2022, Fig. 2 and §3; App. F for the backups),
#: with the token position each class keeps when everything else is mean-ablated (§4).
IOI_CIRCUIT = Circuit.from_labels(
    "IOI, GPT-2 small",
    {
        "name mover": ("9.9", "9.6", "10.0"),
        "negative name mover": ("10.7", "11.10"),
        "backup name mover": ("9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"),
        "s-inhibition": ("7.3", "7.9", "8.6", "8.10"),
        "induction": ("5.5", "5.8", "5.9", "6.9"),
        "duplicate token": ("0.1", "0.10", "3.0"),
        "previous token": ("2.2", "4.11"),
    },
    {
        "name mover": "END",
        "negative name mover": "END",
        "backup name mover": "END",
        "s-inhibition": "END",
        "induction": "S2",
        "duplicate token": "S2",
        "previous token": "S1+1",
    },
    source=(
        "Wang et al. 2022, Fig. 2, §3 and App. F: 26 heads in 7 classes (final arXiv text); "
        "5.8, 5.9 ('fuzzy' induction) and 0.10 ('fuzzy' duplicate token) from App. C "
        "(path patching into the S-inhibition heads' keys)"
    ),
)



# --------------------------------------------------------------------------- minimality sets

_NAME_MOVER_CHAIN = ("9.9", "10.0", "9.6", "10.10", "10.6", "10.2", "10.1", "11.2", "9.7")
_NM_CLASS = _NAME_MOVER_CHAIN + ("9.0", "11.9")
_NEGATIVE = ("10.7", "11.10")
_S_INHIBITION = ("7.3", "7.9", "8.6", "8.10")
_INDUCTION = ("5.5", "5.8", "5.9", "6.9")
_DUPLICATE = ("0.1", "0.10", "3.0")
_PREVIOUS = ("2.2", "4.11")


def _others(group: tuple[str, ...], v: str) -> tuple[str, ...]:
    return tuple(h for h in group if h != v)


#: The K of every circuit head v for minimality (Wang et al. 2022, App. K, Fig. 20):
#: ``{v: K}`` with heads as ``"L.H"``.
#:
#: * Name movers and backups form a chain: each K is the heads before v in the value chain
#:   of Fig. 20 (9.9, 10.0, 9.6, 10.10, 10.6, 10.2, 10.1, 11.2, 9.7), which matches the
#:   authors' ``minimality.py``.
#: * 9.0 and 11.9: K is the 11 name-mover-class heads and the 2 negative name movers,
#:   without v (12 heads).
#: * 5.8 and 5.9: K is the two negative name movers.
#: * Every other head: K is the rest of its group (for 5.5 and 6.9 the group is 5.5, 5.8,
#:   5.9, 6.9).
MINIMALITY_SETS: dict[str, tuple[str, ...]] = {
    **{v: _NAME_MOVER_CHAIN[:i] for i, v in enumerate(_NAME_MOVER_CHAIN)},
    **{v: _others(_NM_CLASS + _NEGATIVE, v) for v in ("9.0", "11.9")},
    **{v: _others(_NEGATIVE, v) for v in _NEGATIVE},
    **{v: _others(_S_INHIBITION, v) for v in _S_INHIBITION},
    **{v: _others(_INDUCTION, v) for v in ("5.5", "6.9")},
    **{v: _NEGATIVE for v in ("5.8", "5.9")},
    **{v: _others(_DUPLICATE, v) for v in _DUPLICATE},
    **{v: _others(_PREVIOUS, v) for v in _PREVIOUS},
}

#: The paper's (F(C \\ K), F(C \\ (K ∪ {v}))) per head, read off App. K, Fig. 20 (paper text,
#: via the project's fact sheet). For 9.0 and 11.9 the sheet gives one pair for both.
MINIMALITY_F: dict[str, tuple[float, float]] = {
    "9.9": (2.62, 2.26), "10.0": (2.26, 1.91), "9.6": (1.91, 2.11),
    "10.10": (2.11, 1.88), "10.6": (1.88, 1.65), "10.2": (1.65, 1.49),
    "10.1": (1.49, 1.37), "11.2": (1.37, 0.95), "9.7": (0.95, 0.81),
    "9.0": (0.45, 0.41), "11.9": (0.45, 0.41),
    "10.7": (3.13, 4.07), "11.10": (3.27, 4.07),
    "7.3": (0.43, 0.24), "7.9": (0.92, 0.24), "8.6": (0.86, 0.24), "8.10": (1.01, 0.24),
    "5.5": (2.12, 0.97), "6.9": (1.46, 0.97),
    "5.8": (4.07, 3.83), "5.9": (4.07, 3.33),
    "0.1": (1.90, 0.60), "0.10": (1.66, 0.60), "3.0": (1.05, 0.60),
    "2.2": (1.75, 1.31), "4.11": (2.28, 1.31),
}


def minimality_k_sets() -> dict[Head, list[Head]]:
    """:data:`MINIMALITY_SETS` as ``{(layer, head): [(layer, head), ...]}``, in circuit order,
    ready for :func:`helpers.minimality_scores`."""
    return {v: [parse_head(k) for k in MINIMALITY_SETS[f"{v[0]}.{v[1]}"]] for v in IOI_CIRCUIT.heads()}


# --------------------------------------------------------------------------- path patching


@dataclass(frozen=True)
class PathPatchingExperiment:
    """One of the paper's path-patching experiments, as data: which receivers (``"logits"``
    or a class of :data:`IOI_CIRCUIT`) and which of their inputs, where the senders are
    patched, and the heads that experiment found (``{legend: labels}``, marked on its
    heatmap), with the source."""

    title: str
    receivers: str
    receiver_input: str
    sender_positions: str
    found: dict[str, tuple[str, ...]]
    source: str

    def run(self, model, clean: IOIDataset, corrupted: IOIDataset, metric, **kwargs) -> torch.Tensor:
        """``[n_layers, n_heads]`` path-patching scores (the raw metric of pass D)."""
        receivers = "logits" if self.receivers == "logits" else IOI_CIRCUIT.heads(self.receivers)
        return path_patch(model, clean.tokens, corrupted.tokens, metric, receivers=receivers,
                          receiver_input=self.receiver_input, sender_positions=self.sender_positions,
                          named_positions=clean.positions, **kwargs)

    def heatmap(self, scores: torch.Tensor, clean_value: float):
        """The paper's view: (patched − clean)/clean × 100 per sender, found heads marked."""
        return heads_heatmap(percent_change(scores, clean_value), title=self.title,
                             colorbar_title="% change in<br>logit diff.", marked=self.found)


# The five path-patching experiments of Wang et al. 2022 the chapter repeats, as a table:
# key, what is patched (sender position → receivers' input), receivers, input, sender
# position, source.
_PATH_PATCHING_ROWS = [
    ("logits", "sender (at END) → logits", "logits", "q", "END", "§3.1, Fig. 3b"),
    ("name mover queries", "sender (at END) → name movers' queries", "name mover", "q", "END", "§3.2, Fig. 4"),
    ("s-inhibition values", "sender (at S2) → S-inhibition heads' values", "s-inhibition", "v", "S2", "§3.3, Fig. 5"),
    ("s-inhibition keys", "sender (at S2) → S-inhibition heads' keys", "s-inhibition", "k", "S2", "App. C, Fig. 12"),
    ("induction keys", "sender (at S1+1) → induction heads' keys", "induction", "k", "S1+1", "App. D, Fig. 13"),
]
# The heads each experiment found ({legend: labels}), marked on its own heatmap.
_PATH_PATCHING_FOUND = {
    "logits": {"name movers (Fig. 3b)": ("9.9", "9.6", "10.0"), "negative name movers (Fig. 3b)": ("10.7", "11.10")},
    "name mover queries": {"S-inhibition (Fig. 4)": ("7.3", "7.9", "8.6", "8.10")},
    "s-inhibition values": {"induction (Fig. 5)": ("5.5", "6.9"), "duplicate token (Fig. 5)": ("0.1", "3.0")},
    "s-inhibition keys": {"fuzzy induction / duplicate (App. C)": ("5.8", "5.9", "0.10"),
                          "opposite sign here (App. C)": ("0.1", "3.0")},
    "induction keys": {"previous token (App. D)": ("2.2", "4.11")},
}
#: The five path-patching experiments of Wang et al. 2022 the chapter repeats.
PATH_PATCHING: dict[str, PathPatchingExperiment] = {
    key: PathPatchingExperiment(f"Path patching: {what}", receivers, receiver_input, sender_positions,
                                _PATH_PATCHING_FOUND[key], f"Wang et al. 2022, {where}")
    for key, what, receivers, receiver_input, sender_positions, where in _PATH_PATCHING_ROWS
}


# --------------------------------------------------------------------------- copy score


def copy_score_inputs(model, ds: IOIDataset, *, hook: str = "blocks.0.hook_resid_post",
                      slots: Sequence[str] = _SLOTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's copy-score inputs (§3.1): the residual stream after block 0 (after MLP0)
    at each name slot (IO, S1, S2) of the IOI prompts, read in context.

    Returns ``(resid [n · len(slots), d_model], token_ids [n · len(slots)])``, slot-major
    (all IO rows, then S1, then S2), for :func:`helpers.copy_score`.
    """
    bad = [s for s in slots if s not in _SLOTS]
    if bad or not slots:
        raise ValueError(f"slots must be among {_SLOTS}, got {list(slots)!r}")
    pos = torch.stack([ds.positions[s] for s in slots], dim=1)  # [n, k]
    resid = activations_at(model, ds.tokens, hook, pos)  # [n, k, d_model]
    ids = ds.tokens.gather(1, pos)  # [n, k]
    return resid.transpose(0, 1).reshape(-1, resid.shape[-1]), ids.T.reshape(-1).to(resid.device)



# --------------------------------------------------------------------------- discovery rows

#: What each path-patching experiment should find, for the scorecard's top-k rows:
#: ``{experiment: [(row label, paper's heads, k, order), ...]}``. ``order`` ranks the senders:
#: ``"negative"`` (most negative % change first), ``"positive"``, or ``"magnitude"`` (largest
#: |% change| first, where the claim is about which heads matter, not the sign). ``k`` is the
#: paper's heads plus two. Senders at or after the receivers' layer have no path to them
#: (NaN) and are not ranked.
DISCOVERY: dict[str, list[tuple[str, tuple[str, ...], int, str]]] = {
    "logits": [("name movers among the most negative senders → logits (Fig. 3b)",
                ("9.9", "9.6", "10.0"), 5, "negative"),
               ("negative name movers among the most positive senders → logits (Fig. 3b)",
                ("10.7", "11.10"), 4, "positive")],
    "name mover queries": [("S-inhibition heads among the strongest senders → name movers' "
                            "queries (Fig. 4)", ("7.3", "7.9", "8.6", "8.10"), 6, "magnitude")],
    "s-inhibition values": [("induction and duplicate-token heads among the strongest senders "
                             "→ S-inhibition values (Fig. 5)", ("5.5", "6.9", "0.1", "3.0"), 6,
                             "magnitude")],
    "s-inhibition keys": [("fuzzy heads 5.8, 5.9, 0.10 among the strongest senders → "
                           "S-inhibition keys (App. C)", ("5.8", "5.9", "0.10"), 5,
                           "magnitude")],
    "induction keys": [("previous-token heads among the strongest senders → induction keys "
                        "(App. D)", ("2.2", "4.11"), 4, "magnitude")],
}


def discovery_ranking(scores: torch.Tensor, clean_value: float, order: str) -> list[str]:
    """Every sender with a path (non-NaN score), as ``"L.H"``, best first for ``order``
    (``"negative"``, ``"positive"`` or ``"magnitude"`` of the % change in the metric)."""
    if order not in ("negative", "positive", "magnitude"):
        raise ValueError(f"order must be 'negative', 'positive' or 'magnitude', got {order!r}")
    change = percent_change(torch.as_tensor(scores).detach().float().cpu(), clean_value)
    key = {"negative": -change, "positive": change, "magnitude": change.abs()}[order]
    n_heads = change.shape[1]
    flat = key.flatten()
    valid = [i for i in range(flat.numel()) if not torch.isnan(flat[i])]
    valid.sort(key=lambda i: (-float(flat[i]), i))
    return [f"{i // n_heads}.{i % n_heads}" for i in valid]


# --------------------------------------------------------------------------- completeness sets

#: The naive circuit of §4.3: name movers, S-inhibition heads, two induction, two
#: duplicate-token and two previous-token heads, as in the authors' ``NAIVE``
#: (Easy-Transformer ``ioi_circuit_extraction.py``); positions as in :data:`IOI_CIRCUIT`.
#: Faithful (|F(M) − F(C)| ≈ 0.1 in §4.3) but incomplete: no backup or negative name movers.
NAIVE_CIRCUIT = Circuit.from_labels(
    "IOI naive circuit, GPT-2 small",
    {
        "name mover": ("9.6", "9.9", "10.0"),
        "s-inhibition": ("7.3", "7.9", "8.6", "8.10"),
        "induction": ("5.5", "5.9"),
        "duplicate token": ("3.0", "0.10"),
        "previous token": ("2.2", "4.11"),
    },
    {"name mover": "END", "s-inhibition": "END", "induction": "S2",
     "duplicate token": "S2", "previous token": "S1+1"},
    source="Wang et al. 2022, §4.3; the authors' NAIVE (Easy-Transformer "
           "ioi_circuit_extraction.py)",
)


def completeness_classes(circuit: Circuit = IOI_CIRCUIT) -> dict[str, list[Head]]:
    """The classes the authors' completeness code removes as K (``completeness.py`` loops
    over their ``CIRCUIT``'s keys): six for the full circuit, because their "name mover"
    class holds the 3 name movers **and** the 8 backups (so K = all 11 is tried); the
    negative name movers, S-inhibition, induction, duplicate-token and previous-token heads
    as in :data:`IOI_CIRCUIT`. Empty classes are left out."""
    out: dict[str, list[Head]] = {}
    for cls in circuit.classes:
        merged = cls in ("name mover", "backup name mover") and "backup name mover" in circuit.classes
        name = "name mover (with backups)" if merged else cls
        heads = circuit.heads(cls)
        if heads:
            out.setdefault(name, []).extend(heads)
    return out


# --------------------------------------------------------------------------- minimality table


def minimality_table(per_prompt: torch.Tensor, configs: list, k_sets: dict, f_m: float,
                     threshold: float = 0.01):
    r"""One row per head v: this run's F(C \ K), F(C \ (K ∪ {v})), the change, its share of
    F(M) with a standard error, pass/fail at ``threshold`` and whether it is near it.

    ``per_prompt``: ``[len(configs), n]`` per-prompt scores of the circuit with each
    ``configs[i]`` (a frozenset of heads) removed; ``k_sets``: ``{v: K}`` (heads). The SE
    of a change is std/√n of the per-prompt differences (the two runs share their prompts);
    "near" means within 2 SE of the threshold, where the sample cannot tell pass from fail.
    """
    import pandas as pd

    index = {c: i for i, c in enumerate(configs)}
    n = per_prompt.shape[1]
    rows = []
    for v, K in k_sets.items():
        K = frozenset(K)
        diff = per_prompt[index[K | {v}]] - per_prompt[index[K]]
        change = diff.mean().item()
        se = (diff.std() / n ** 0.5).item() if n > 1 else float("nan")
        share, share_se = abs(change) / abs(f_m), se / abs(f_m)
        rows.append({"head": f"{v[0]}.{v[1]}", "F(C \\ K)": per_prompt[index[K]].mean().item(),
                     "F(C \\ (K ∪ {v}))": per_prompt[index[K | {v}]].mean().item(),
                     "change": change, "share of F(M)": share, "SE of share": share_se,
                     "passes": share >= threshold,
                     "near threshold": abs(share - threshold) <= 2 * share_se})
    return pd.DataFrame(rows)


def minimality_configs(k_sets: dict) -> list[frozenset]:
    """The distinct sets (each K and K ∪ {v}) to score for :func:`minimality_table`, once each."""
    out: dict[frozenset, None] = {}
    for v, K in k_sets.items():
        out.setdefault(frozenset(K), None)
        out.setdefault(frozenset(K) | {v}, None)
    return list(out)


# --------------------------------------------------------------------------- scorecard

#: Nulls the copy-score rows are judged against: the paper's average head (§3.1: "the
#: average head" copies < 20% of names and suppresses 12%).
_AVERAGE_HEAD_COPY, _AVERAGE_HEAD_NEGATIVE = 0.20, 0.12


def _share_se(p: float, m: int) -> float:
    return (p * (1 - p) / m) ** 0.5 if m > 0 else float("nan")


def build_scorecard(model, r: dict):
    r"""The chapter's scorecard from its results ``r`` (keys below; a missing key or ``None``
    shows the row as "not run at this size").

    ``n_heads_circuit``, ``share_of_nodes``; ``baseline_lds``, ``baseline_probs`` (per
    prompt); ``f_c``, ``f_m`` (per prompt, the full circuit and the model);
    ``f_m_minus_nm`` (per prompt, 9.9, 9.6, 10.0 knocked out at END); ``nm_direct`` (per
    prompt, their summed direct effect); ``f_c_minus_negative`` (per prompt);
    ``nm_attention``, ``sinh_attention`` (``[n, heads]``); ``copy_scores``,
    ``negative_copy_scores`` (``{head: share}``) and ``copy_rows`` (rows scored);
    ``minimality`` (:func:`minimality_table`); ``greedy_best`` (per-prompt F(C \ K) − F(M \ K)
    of the worst greedy K, re-scored); ``naive_gap`` (per prompt F(M) − F(naive));
    ``path_patching`` (``{experiment: scores}``) with ``clean_ld``.
    """
    import numpy as np

    from ..scorecard import Reference, Scorecard, bootstrap_se

    def get(key):  # per-prompt tensors come to the CPU, whatever device made them
        value = r.get(key)
        return value.detach().float().cpu() if isinstance(value, torch.Tensor) else value

    card = Scorecard("Indirect Object Identification, GPT-2 small (Wang et al. 2022)",
                     stand_in=model.is_stand_in)
    sec_circuit = "5. The circuit as a whole: faithfulness, knockouts, minimality, completeness"
    card.data_check("circuit heads", Reference(26, "Wang et al. 2022, §3 (final arXiv text)"),
                    get("n_heads_circuit"), section=sec_circuit)
    card.data_check("circuit share of (head, position) pairs",
                    IOI["circuit_share_of_head_positions"], get("share_of_nodes"), tol=0.003,
                    section=sec_circuit, note="26 heads × 1 position over 144 heads × the "
                    "prompts' mean length")

    sec_task = "1. The task: how well does GPT-2 do it?"
    lds, probs = get("baseline_lds"), get("baseline_probs")
    card.band("mean logit difference", IOI["logit_diff"], None, 0.5, null=0.0, values=lds,
              section=sec_task)
    card.band("mean IO probability", IOI["io_prob"], None, 0.08, null=0.0, values=probs,
              section=sec_task)
    card.band("share of prompts with IO > S", IOI["io_beats_s"], None, 0.02, null=0.5,
              values=None if lds is None else (torch.as_tensor(lds) > 0).float(),
              section=sec_task, note="null: a coin flip between the two names")

    f_c, f_m = get("f_c"), get("f_m")
    if f_c is not None and f_m is not None:
        pair = np.stack([np.asarray(f_c, dtype=float), np.asarray(f_m, dtype=float)], 1)
        ratio = float(pair[:, 0].mean() / pair[:, 1].mean())
        ratio_se = bootstrap_se(pair, lambda a: a[:, 0].mean() / a[:, 1].mean())
    else:
        ratio = ratio_se = None
    card.band("faithfulness F(C)/F(M)", IOI["faithfulness_ratio"], ratio, 0.1, null=0.0,
              se=ratio_se, section=sec_circuit,
              note="null: a circuit that carries none of the logit difference")

    nm, direct = get("f_m_minus_nm"), get("nm_direct")
    if nm is not None and f_m is not None and direct is not None:
        pair = np.stack([np.asarray(nm, dtype=float), np.asarray(f_m, dtype=float)], 1)
        drop = float(1 - pair[:, 0].mean() / pair[:, 1].mean())
        drop_se = bootstrap_se(pair, lambda a: 1 - a[:, 0].mean() / a[:, 1].mean())
        d = np.stack([np.asarray(direct, dtype=float), np.asarray(f_m, dtype=float)], 1)
        share = float(d[:, 0].mean() / d[:, 1].mean())
        share_se = bootstrap_se(d, lambda a: a[:, 0].mean() / a[:, 1].mean())
        greater, lesser = (("direct effect of 9.9, 9.6, 10.0 (share of F(M))", share, share_se),
                           ("drop when they are knocked out at END", drop, drop_se))
    else:
        greater, lesser = (("direct effect", None, None), ("knockout drop", None, None))
    card.ordering("self-repair: the 3 name movers write more than their knockout costs",
                  IOI["name_movers_knocked_out_drop"], greater=greater, lesser=lesser,
                  section=sec_circuit, note="paper: knocking them out costs ~5% (§3.4) "
                  "because backups take over; drop = 1 − F(M \\ NMs)/F(M)")

    neg, f_c_ = get("f_c_minus_negative"), get("f_c")
    rise = None if neg is None or f_c_ is None else (torch.as_tensor(neg) - torch.as_tensor(f_c_))
    card.band("rise of F(C) when 10.7, 11.10 leave the circuit",
              IOI["negative_movers_removed_rise"], None, 0.6, null=0.0, values=rise,
              section=sec_circuit, note="against App. K's own F(C) = 2.62 (§4 implies 3.10)")

    sec_att = "4. What the heads attend to"
    nm_att, sinh_att = get("nm_attention"), get("sinh_attention")
    card.band("name movers' attention END → IO", IOI["name_mover_attention_to_io"], None, 0.15,
              null=0.06, values=None if nm_att is None else torch.as_tensor(nm_att).mean(1),
              section=sec_att, note="null: uniform attention over ~17 tokens")
    card.band("S-inhibition attention END → S2", IOI["s_inhibition_attention_to_s2"], None, 0.15,
              null=0.06, values=None if sinh_att is None else torch.as_tensor(sinh_att).mean(1),
              section=sec_att, note="null: uniform attention over ~17 tokens")

    m = get("copy_rows") or 0
    for key, ref, null, what in (
            ("copy_scores", IOI["name_mover_copy_score"], _AVERAGE_HEAD_COPY,
             "name movers' copy score (lowest of 9.9, 9.6, 10.0)"),
            ("negative_copy_scores", IOI["negative_mover_copy_score"], _AVERAGE_HEAD_NEGATIVE,
             "negative copy score (lowest of 10.7, 11.10)")):
        scores = get(key)
        low = None if not scores else min(scores.values())
        card.at_least(what, ref, low, 0.95, null=null,
                      se=None if low is None else _share_se(low, m),
                      section="The name movers copy names: copy scores",
                      note=f"paper: > 95% / 98%; null: the paper's average head ({null:.0%})")

    mini = get("minimality")
    if mini is not None:
        passing = int(mini["passes"].sum())
        z = (mini["share of F(M)"] - 0.01) / mini["SE of share"].clip(lower=1e-12)
        p = 0.5 * (1 + torch.erf(torch.tensor(z.values, dtype=torch.float32) / 2 ** 0.5))
        count_se = float((p * (1 - p)).sum().sqrt())
        near = ", ".join(f"{h} ({s:.1%} ± {e:.1%})" for h, s, e in zip(
            mini["head"], mini["share of F(M)"], mini["SE of share"])
            if abs(s - 0.01) <= 2 * e) or "none"
    else:
        passing, count_se, near = None, None, "—"
    card.at_least("heads passing minimality (paper's K, ≥ 1% of F(M))",
                  Reference(26, IOI["minimality_min_share"].source), passing, 24, null=0.0,
                  se=count_se, section=sec_circuit,
                  note="bound 24: the paper's own 9.0 and 11.9 sit at 1.1% (0.45 → 0.41); "
                  f"within 2 SE of 1% in this run: {near}")

    gap = get("greedy_best")
    if gap is not None:  # oriented so that its mean is the incompleteness |mean gap|
        gap = torch.as_tensor(gap).float()
        gap = gap * (1.0 if gap.mean() >= 0 else -1.0)
    card.at_least("worst incompleteness found by the greedy search",
                  IOI["greedy_incompleteness"], None, 1.5, null=0.0, values=gap,
                  section=sec_circuit,
                  note="a smaller search than the paper's (see section 5): a lower bound; "
                  "the value is F(C \\ K) − F(M \\ K) of the worst K found")

    naive = get("naive_gap")
    card.at_most("naive circuit: |F(M) − F(C)| (faithful)",
                 Reference(0.1, "Wang et al. 2022, §4.3"), None if naive is None
                 else abs(float(torch.as_tensor(naive).mean())), 0.5, null=3.56,
                 se=None if naive is None else float(torch.as_tensor(naive).std()
                                                      / len(naive) ** 0.5),
                 section=sec_circuit, note="null: a circuit that carries nothing, |F(M)|")

    sections = {  # the chapter's headings, for the status page's links
        "logits": "3a. Senders → logits: name movers and negative name movers",
        "name mover queries": "3b. Senders → name movers' queries: S-inhibition heads",
        "s-inhibition values": "3c. Senders → S-inhibition heads' values: induction and "
                               "duplicate-token heads",
        "s-inhibition keys": '3d. Senders → S-inhibition heads\' keys: the "fuzzy" heads',
        "induction keys": "3e. Senders → induction heads' keys: previous-token heads",
    }
    pp, clean_ld = get("path_patching") or {}, get("clean_ld")
    for exp, rows in DISCOVERY.items():
        for label, members, k, order in rows:
            ranking = (None if exp not in pp or clean_ld is None
                       else discovery_ranking(pp[exp], clean_ld, order))
            card.top_k(label, Reference(len(members), PATH_PATCHING[exp].source), ranking,
                       members, k, section=sections[exp],
                       note=f"ranked by {order} % change; null: a random ranking")
    return card
