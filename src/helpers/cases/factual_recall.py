"""Factual recall (Lv et al. 2024, arXiv 2403.19521 v4), with ROME's known facts.

Two prompt sets, both :class:`~helpers.prompts.PromptSet`s read at the last token (END):

* **The capital task** of Lv et al.'s code (``fact_dataset.py``): 15 country → capital
  pairs and 15 zero-shot lead-in templates ("… the capital of [N] is"), so **at most 225
  distinct prompts**; the answer is the capital (one GPT-2 token with a leading space). The
  one-shot variant prepends "The capital of [X] is [Y]. " for another country X. Country
  flips (another query country) and city flips (a wrong capital in the one-shot example)
  give aligned corrupted prompts. Named positions: ``SUBJ_FIRST`` = ``SUBJ_LAST`` =
  ``COUNTRY``, ``CAPITAL`` (the word "capital" of the query), ``OF``, ``END`` ("is").
  Of the 15 lead-ins, three are the ones the fact sheet quotes from the paper's code ("As
  we all know", "According to the textbook", "Keep in mind"); the other twelve are the
  book's own, since the code's full list could not be read.
* **ROME's known facts** (Meng et al. 2022, ``known_1000.json``, 1,209 facts, shipped as
  package data with its MIT licence): those whose answer is one GPT-2 token with a leading
  space; named positions ``SUBJ_FIRST``, ``SUBJ_LAST`` (the subject's token span, found
  from character offsets) and ``END``. The paper filtered by what the model knows;
  :func:`select_known` does that at run time with real weights and keeps a fixed seeded
  subset on the stand-in. :func:`one_shot_facts` prefixes each fact with another fact of
  the same relation, answered (the book's one-shot variant).

Claims of the papers that have a measurable form are in :data:`CLAIMS` (and
:func:`claim_range` for "lies in this layer range"); parameter choices are shown beside the
papers' by :func:`setup_table`, never scored.

Metrics (:func:`lv_metrics`), all at END: top-1 accuracy, the answer's logit minus the mean
logit over the vocabulary, its probability, and the answer's logit minus the subject
country's ("iw − n", capital task only).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch

from ..prompts import PromptSet, _default_tokenizer, check_single_tokens
from ..scorecard import Reference

__all__ = [
    "CAPITALS",
    "LEAD_INS",
    "RELATION_NAMES",
    "MAX_CAPITAL_PROMPTS",
    "make_capital_prompts",
    "flip_country",
    "flip_city",
    "load_known_facts",
    "make_fact_set",
    "rome_fact_set",
    "one_shot_facts",
    "select_known",
    "relation_counts",
    "lv_metrics",
    "subject_masks",
    "REFERENCES",
    "CLAIMS",
    "claim_range",
    "setup_table",
]

# The 15 pairs of Lv et al.'s fact_dataset.py (fact sheet), in its order.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("China", "Beijing"), ("USA", "Washington"), ("Russia", "Moscow"), ("England", "London"),
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Greece", "Athens"), ("Thailand", "Bangkok"),
)

# Lead-ins: the first three are quoted from the paper's code by the fact sheet; the rest are
# the book's own wording (the code's full list was not available).
LEAD_INS: tuple[str, ...] = (
    "As we all know,",
    "According to the textbook,",
    "Keep in mind,",
    "It is well known that",
    "As everyone learns at school,",
    "In case you forgot,",
    "Here is a simple fact:",
    "As the atlas shows,",
    "Any encyclopedia will tell you that",
    "As my teacher said,",
    "To put it simply,",
    "For the record,",
    "As most people know,",
    "In geography class we learned that",
    "Of course,",
)
MAX_CAPITAL_PROMPTS = len(CAPITALS) * len(LEAD_INS)  # 225

RELATION_NAMES: dict[str, str] = {
    "P17": "country", "P19": "place of birth", "P20": "place of death", "P27": "citizenship",
    "P30": "continent", "P36": "capital", "P37": "official language", "P39": "position held",
    "P101": "field of work", "P103": "native language", "P106": "occupation",
    "P108": "employer", "P127": "owned by", "P131": "located in (admin.)",
    "P136": "genre", "P138": "named after", "P140": "religion",
    "P159": "headquarters", "P176": "manufacturer", "P178": "developer",
    "P190": "twin city", "P276": "location", "P364": "original language",
    "P407": "language of work", "P413": "position played", "P449": "original network",
    "P463": "member of", "P495": "country of origin", "P641": "sport",
    "P740": "formed in", "P937": "work location", "P1303": "instrument",
    "P1412": "languages spoken",
}

REFERENCES: dict[str, Reference] = {
    "capital_prompts": Reference(225, "Lv et al. code, fact_dataset.py: 15 pairs × 15 templates",
                                 "official code"),
    "rome_facts": Reference(1209, "ROME known_1000.json (ids 0–1208)", "official code"),
    "rome_window": Reference(10, "ROME causal_trace.py: MLP/attention restoration window",
                             "official code"),
    "rome_samples": Reference(10, "ROME causal_trace.py: noise samples averaged", "official code"),
    "rome_noise_factor": Reference(3, "ROME tracing notebook: 3 × std of subject embeddings",
                                   "official code"),
}


def claim_range(lo: float, hi: float, source: str, confidence: str = "paper text",
                note: str = "") -> tuple[Reference, float]:
    """``(reference, tolerance)`` for a claim "the measured value lies in [lo, hi]".

    The reference value is the interval's centre and the tolerance its half-width, so a
    :class:`~helpers.scorecard.Scorecard` row holds exactly when the claim does. The
    centre is the book's encoding of a qualitative claim, never a number of the paper.
    """
    if hi < lo:
        raise ValueError(f"empty claim range [{lo}, {hi}]")
    return Reference((lo + hi) / 2, source, confidence, note), (hi - lo) / 2


_ABSTRACT = "Lv et al. v4 abstract; claim, no number published"
#: Claims with a measurable number, as Scorecard references (value, source, confidence).
#: Values are the claim's encoding (a count, a share, 1 = yes), not numbers from a paper.
CLAIMS: dict[str, Reference] = {
    "movers_attend_subject": Reference(
        3, _ABSTRACT + " (heads move the topic to the last position)", "paper text",
        note="count of the top-3 path-patching heads with attention 'is' → country > 0.3 "
             "(the threshold is the book's)"),
    "lead_9_8_in_top5": Reference(
        1, "a reading list naming 9.8 as Lv's argument passer (not the paper; unconfirmed)",
        "secondary source", note="1 if head 9.8 is among the 5 largest path-patching drops"),
    "capital_map_share": Reference(
        1.0, _ABSTRACT + " (a deep MLP applies get_capital(X))", "paper text",
        note="share of countries whose own capital scores highest in the top MLP's output; "
             "holds at ≥ 0.5 (the book's bar)"),
    "suppressors_raise_p": Reference(
        1, _ABSTRACT + " (final-layer anti-overconfidence; mitigating it raises confidence)",
        "paper text",
        note="1 if zeroing the final layer's 3 most negative direct effects raises mean "
             "p(capital)"),
    "geva_relation_before_subject": Reference(
        1, "Geva et al. 2023 (relation positions matter first, subject positions later)",
        "paper text", note="1 if the relation knockout's largest drop is at an earlier "
                           "layer than the subject knockout's"),
}


def setup_table(choices: Sequence[tuple[str, Any, Any, str]]):
    """The chapter's parameter choices beside the papers', as a labelled table.

    ``choices``: ``(parameter, this chapter, paper, source)``. These are settings, not
    results, so they carry no verdict (they never enter a scorecard).
    """
    import pandas as pd

    return pd.DataFrame([{"parameter": p, "this chapter": str(c), "paper": str(r), "source": s}
                         for p, c, r, s in choices])


def _capital_text(lead: str, country: str) -> str:
    return f"{lead} the capital of {country} is"


def _demo(country: str, city: str) -> str:
    return f"The capital of {country} is {city}. "


def _locate(tokens: torch.Tensor, length: int, token: int, what: str, prompt: str, last: bool = True) -> int:
    hits = (tokens[:length] == token).nonzero().flatten().tolist()
    if not hits:
        raise ValueError(f"{what} token {token} not found in {prompt!r}")
    return hits[-1] if last else hits[0]


def make_capital_prompts(
    n: int | None = None,
    *,
    shot: int = 0,
    seed: int = 0,
    tokenizer: Any = None,
    _countries: Sequence[int] | None = None,
    _templates: Sequence[int] | None = None,
    _demos: Sequence[tuple[int, str]] | None = None,
) -> PromptSet:
    """The capital task: ``n`` distinct prompts (default all 225), zero- or one-shot.

    Prompts are every (lead-in, country) pair in a seeded order; ``n`` takes the first
    ``n``. ``shot=1`` prepends "The capital of X is Y. " for a seeded other country X.
    Raises if ``n`` exceeds 225 (the task has no more distinct prompts). Fields:
    ``country`` (index into :data:`CAPITALS`), ``template`` (index into :data:`LEAD_INS`),
    ``demo_country`` (−1 for zero-shot), ``demo_city``; ``answers`` = the capital token,
    ``wrong`` = the query country's token (for Lv's "iw − n").
    """
    if shot not in (0, 1):
        raise ValueError(f"shot must be 0 or 1, got {shot!r}")
    tokenizer = tokenizer or _default_tokenizer()
    words = [c for c, _ in CAPITALS] + [k for _, k in CAPITALS]
    ids = check_single_tokens(words, tokenizer, what="countries and capitals")
    rng = random.Random(seed)
    if _countries is None:
        pairs = [(t, c) for t in range(len(LEAD_INS)) for c in range(len(CAPITALS))]
        rng.shuffle(pairs)
        if n is None:
            n = len(pairs)
        if not 1 <= n <= len(pairs):
            raise ValueError(
                f"the capital task has at most {len(pairs)} distinct prompts (15 countries × 15 "
                f"templates); asked for {n}"
            )
        pairs = pairs[:n]
        templates, countries = [t for t, _ in pairs], [c for _, c in pairs]
    else:
        countries, templates = list(_countries), list(_templates)
    if _demos is None:
        demos = []
        for c in countries:
            other = rng.choice([x for x in range(len(CAPITALS)) if x != c])
            demos.append((other, CAPITALS[other][1]))
    else:
        demos = list(_demos)
    prompts = []
    for c, t, (dc, dcity) in zip(countries, templates, demos):
        text = _capital_text(LEAD_INS[t], CAPITALS[c][0])
        prompts.append((_demo(CAPITALS[dc][0], dcity) if shot else "") + text)
    answers = [ids[CAPITALS[c][1]] for c in countries]
    country_tok = [ids[CAPITALS[c][0]] for c in countries]
    ps = PromptSet.from_texts(prompts, answers=torch.tensor(answers), wrong=torch.tensor(country_tok),
                              tokenizer=tokenizer)
    cap_tok, of_tok = tokenizer.encode(" capital")[0], tokenizer.encode(" of")[0]
    country_pos, cap_pos, of_pos = [], [], []
    for i, p in enumerate(prompts):
        L = int(ps.lengths[i])
        country_pos.append(_locate(ps.tokens[i], L, country_tok[i], "country", p))
        cap_pos.append(_locate(ps.tokens[i], L, cap_tok, "' capital'", p))
        of_pos.append(_locate(ps.tokens[i], L, of_tok, "' of'", p))
    cpos = torch.tensor(country_pos)
    ps.positions.update({"COUNTRY": cpos, "SUBJ_FIRST": cpos, "SUBJ_LAST": cpos,
                         "CAPITAL": torch.tensor(cap_pos), "OF": torch.tensor(of_pos)})
    ps.fields.update({
        "country": countries, "template": templates,
        "demo_country": [dc if shot else -1 for dc, _ in demos],
        "demo_city": [city if shot else "" for _, city in demos],
        "shot": [shot] * len(prompts),
    })
    return ps


def flip_country(ps: PromptSet, *, seed: int = 1) -> PromptSet:
    """Each prompt with its query country replaced by another one (seeded), aligned.

    ``answers`` of the result are the *flipped* prompts' own capitals (what the flipped
    prompt asks for); compare with the clean set's ``answers`` for a logit difference.
    """
    rng = random.Random(seed)
    countries = [rng.choice([x for x in range(len(CAPITALS)) if x != c]) for c in ps.fields["country"]]
    return _rebuild(ps, countries=countries)


def flip_city(ps: PromptSet, *, seed: int = 1) -> PromptSet:
    """One-shot prompts with the example's capital replaced by a wrong city (seeded)."""
    if ps.fields["shot"][0] != 1:
        raise ValueError("flip_city needs one-shot prompts (make_capital_prompts(shot=1)): "
                         "zero-shot prompts contain no city")
    rng = random.Random(seed)
    demos = []
    for dc in ps.fields["demo_country"]:
        wrong = rng.choice([x for x in range(len(CAPITALS)) if x != dc])
        demos.append((dc, CAPITALS[wrong][1]))
    return _rebuild(ps, demos=demos)


def _rebuild(ps: PromptSet, *, countries=None, demos=None) -> PromptSet:
    shot = ps.fields["shot"][0]
    old_demos = list(zip(ps.fields["demo_country"], ps.fields["demo_city"]))
    if shot == 0:
        old_demos = [(0, "")] * len(ps)
    out = make_capital_prompts(
        shot=shot, tokenizer=ps.tokenizer,
        _countries=countries if countries is not None else ps.fields["country"],
        _templates=ps.fields["template"], _demos=demos if demos is not None else old_demos,
    )
    if out.tokens.shape != ps.tokens.shape:
        raise ValueError("the flipped prompts do not align with the clean ones")
    return out


# ---------------------------------------------------------------------------- ROME facts


def load_known_facts() -> list[dict]:
    """ROME's 1,209 known facts (package data; see the folder's SOURCE.md and LICENSE)."""
    path = resources.files("helpers.cases").joinpath("data/rome-known-facts/known_1000.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _subject_span(prefix: str, prompt: str, subject: str, tokenizer: Any) -> tuple[int, int]:
    start = prompt.find(subject)
    if start < 0:
        raise ValueError(f"subject {subject!r} is not in the prompt {prompt!r}")
    start += len(prefix)
    end = start + len(subject)
    text = prefix + prompt
    offsets = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).offsets
    span = [j for j, (a, b) in enumerate(offsets) if a < end and b > start]
    return span[0], span[-1]


def make_fact_set(facts: Sequence[dict], *, tokenizer: Any = None) -> PromptSet:
    """A prompt set from fact records (``prompt``, ``subject``, ``attribute``, ...).

    A record may carry a ``prefix`` (e.g. a one-shot demonstration): the text is
    ``prefix + prompt`` and the subject is looked up in the prompt part only. Raises a clear ``ValueError`` if an answer (" " + attribute) is not one GPT-2 token or a
    subject does not occur in its prompt, or the subject reaches the last token.
    """
    if not facts:
        raise ValueError("no facts given: a fact set needs at least one")
    tokenizer = tokenizer or _default_tokenizer()
    answers, firsts, lasts = [], [], []
    for f in facts:
        ids = tokenizer.encode(" " + f["attribute"])
        if len(ids) != 1:
            raise ValueError(
                f"the answer {f['attribute']!r} of {f['prompt']!r} is {len(ids)} GPT-2 tokens "
                f"({ids}); every answer must be one token with its leading space"
            )
        answers.append(ids[0])
        a, b = _subject_span(f.get("prefix", ""), f["prompt"], f["subject"], tokenizer)
        firsts.append(a)
        lasts.append(b)
    texts = [f.get("prefix", "") + f["prompt"] for f in facts]
    ps = PromptSet.from_texts(texts, answers=torch.tensor(answers), tokenizer=tokenizer)
    bad = [i for i, b in enumerate(lasts) if b >= int(ps.lengths[i]) - 1]
    if bad:
        raise ValueError(f"the subject must end before the last token; it does not in "
                         f"{[facts[i]['prompt'] for i in bad[:3]]}")
    ps.positions.update({"SUBJ_FIRST": torch.tensor(firsts), "SUBJ_LAST": torch.tensor(lasts)})
    ps.fields.update({
        "relation": [f.get("relation_id", "") for f in facts],
        "subject": [f["subject"] for f in facts],
        "attribute": [f["attribute"] for f in facts],
        "known_id": [f.get("known_id", -1) for f in facts],
        "demo_known_id": [f.get("demo_known_id", -1) for f in facts],
    })
    return ps


def rome_fact_set(*, tokenizer: Any = None) -> tuple[PromptSet, int]:
    """``(fact set, n_dropped)``: ROME's facts whose answer is a single token."""
    tokenizer = tokenizer or _default_tokenizer()
    keep = []
    for f in load_known_facts():
        if len(tokenizer.encode(" " + f["attribute"])) != 1:
            continue
        if f["subject"] not in f["prompt"]:
            continue
        keep.append(f)
    return make_fact_set(keep, tokenizer=tokenizer), 1209 - len(keep)


def one_shot_facts(ps: PromptSet, pool: PromptSet, *, seed: int = 0) -> PromptSet:
    """The facts of ``ps``, each preceded by one other fact of the same relation, answered.

    The demonstration is "<prompt> <attribute>. " of a seeded other fact from ``pool`` with
    the same Wikidata relation, a different subject and, where the relation allows, a
    different answer (so the answer cannot be copied from the example). Positions, answers
    and fields are those of ``ps``'s facts, shifted past the demonstration; the field
    ``demo_known_id`` names the example. Raises if a relation has no other fact in ``pool``.
    """
    rng = random.Random(seed)
    by_rel: dict[str, list[int]] = {}
    for j, r in enumerate(pool.fields["relation"]):
        by_rel.setdefault(r, []).append(j)
    records = []
    for i in range(len(ps)):
        rel, subj = ps.fields["relation"][i], ps.fields["subject"][i]
        attr = ps.fields["attribute"][i]
        others = [j for j in by_rel.get(rel, []) if pool.fields["subject"][j] != subj]
        if not others:
            raise ValueError(f"no other fact of relation {rel!r} to use as a one-shot example "
                             f"for {ps.prompts[i]!r}")
        new = [j for j in others if pool.fields["attribute"][j] != attr]
        j = rng.choice(new or others)
        demo = f"{pool.prompts[j]} {pool.fields['attribute'][j]}. "
        records.append({"prefix": demo, "prompt": ps.prompts[i], "subject": subj,
                        "attribute": attr, "relation_id": rel,
                        "known_id": ps.fields["known_id"][i],
                        "demo_known_id": pool.fields["known_id"][j]})
    return make_fact_set(records, tokenizer=ps.tokenizer)


@torch.no_grad()
def top1_correct(model, ps: PromptSet, batch: int = 64) -> torch.Tensor:
    """``[n]`` bool: whether the model's top token at END is the answer."""
    from ..hooks import logits_at_positions

    out = []
    for s in range(0, len(ps), batch):
        part = ps.subset(range(s, min(s + batch, len(ps))))
        lg = logits_at_positions(model, part.tokens, part.positions["END"])
        out.append((lg.argmax(-1).cpu() == part.answers).cpu())
    return torch.cat(out)


def select_known(model, ps: PromptSet, n: int, *, seed: int = 0) -> tuple[PromptSet, str]:
    """``(subset, note)``: up to ``n`` facts the model gets right (top-1), seeded order.

    With real weights the facts are filtered by the model's own top-1 prediction, as the
    papers did; on the stand-in (random weights, which know nothing) a fixed seeded subset
    is kept instead, and the note says so.
    """
    from ..models import is_stand_in

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    order = list(range(len(ps)))
    random.Random(seed).shuffle(order)
    if is_stand_in(model):
        idx = order[:n]
        return ps.subset(idx), (f"stand-in: a fixed seeded subset of {len(idx)} of the {len(ps)} "
                                f"single-token facts (no top-1 filter: random weights know nothing)")
    correct = top1_correct(model, ps)
    known = [i for i in order if bool(correct[i])]
    if not known:
        raise ValueError("the model gets none of these facts right (top-1); nothing to trace")
    idx = known[:n]
    return ps.subset(idx), (f"{int(correct.sum())} of {len(ps)} single-token facts are the model's "
                            f"top-1 prediction; {len(idx)} of them kept")


def relation_counts(ps: PromptSet):
    """A table of facts per Wikidata relation (id, name, count), largest first."""
    import pandas as pd

    counts = Counter(ps.fields["relation"])
    rows = [(r, RELATION_NAMES.get(r, "?"), c) for r, c in counts.most_common()]
    return pd.DataFrame(rows, columns=["relation", "name", "facts"])


# ---------------------------------------------------------------------------- metrics


@torch.no_grad()
def lv_metrics(model, ps: PromptSet, *, batch: int = 64, fwd_hooks=()) -> dict[str, torch.Tensor]:
    """Per-prompt metrics at END: ``correct`` (top-1), ``logit_minus_mean`` (the answer's
    logit minus the mean logit over the vocabulary), ``prob``, and ``minus_subject``
    (answer logit minus the ``wrong`` token's, e.g. the country: Lv's "iw − n")."""
    from ..hooks import logits_at_positions

    keys = ("correct", "logit_minus_mean", "prob", "minus_subject")
    out: dict[str, list] = {k: [] for k in keys}
    for s in range(0, len(ps), batch):
        part = ps.subset(range(s, min(s + batch, len(ps))))
        lg = logits_at_positions(model, part.tokens, part.positions["END"], fwd_hooks=fwd_hooks).float().cpu()
        rows = torch.arange(len(part))
        ans = lg[rows, part.answers]
        out["correct"].append(lg.argmax(-1) == part.answers)
        out["logit_minus_mean"].append(ans - lg.mean(-1))
        out["prob"].append(lg.softmax(-1)[rows, part.answers])
        if part.wrong is not None:
            out["minus_subject"].append(ans - lg[rows, part.wrong])
        else:
            out["minus_subject"].append(torch.full((len(part),), float("nan")))
    return {k: torch.cat(v) for k, v in out.items()}


def subject_masks(ps: PromptSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``(subject, relation)`` ``[n, L]`` bool masks: the subject span, and every other real
    position before END (Geva et al.'s non-subject / relation positions)."""
    from ..tracing import subject_mask

    subj = subject_mask(ps.positions["SUBJ_FIRST"], ps.positions["SUBJ_LAST"], ps.max_len)
    real = torch.arange(ps.max_len)[None] < (ps.lengths - 1)[:, None]
    return subj, real & ~subj
