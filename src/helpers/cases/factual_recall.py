"""Factual recall (Lv et al. 2024, arXiv 2403.19521 v4), with ROME's known facts.

Two prompt sets, both :class:`~helpers.prompts.PromptSet`s read at the last token (END):

* **The capital task** of Lv et al.'s code (``fact_dataset.py``): 15 country → capital
  pairs and 15 zero-shot lead-in templates ("… the capital of [N] is"), so **at most 225
  distinct prompts**; the answer is the capital (one GPT-2 token with a leading space). The
  one-shot variant prepends "The capital of [X] is [Y]. " for another country X (the
  authors' ``add_a_shot``). Country flips (another query country) give aligned corrupted
  prompts. Named positions: ``SUBJ_FIRST`` = ``SUBJ_LAST`` = ``COUNTRY``, ``CAPITAL``
  (the word "capital" of the query), ``OF``, ``END`` ("is"). The 15 lead-ins are the
  authors' own (``NC_TEMPLATES`` of their ``fact_dataset.py``).
* **ROME's known facts** (Meng et al. 2022, ``known_1000.json``, 1,209 facts, shipped as
  package data with its MIT licence): those whose answer is one GPT-2 token with a leading
  space; named positions ``SUBJ_FIRST``, ``SUBJ_LAST`` (the subject's token span, found
  from character offsets) and ``END``. The paper filtered by what the model knows;
  :func:`select_known` does that at run time with real weights and keeps a fixed seeded
  subset on the stand-in. :func:`one_shot_facts` prefixes each fact with another fact of
  the same relation, answered (the book's one-shot variant).

Claims of the papers that have a measurable form are in :data:`CLAIMS`, graded by
:func:`scorecard`; parameter choices are shown beside the papers' by :func:`setup_table`,
never scored. The chapter's analyses: :func:`anti_overconfidence` (held out, with controls),
:func:`mlp_direct_effects` and :func:`capital_map` (function application with its echo
controls), :func:`decode_intercept` (the gain fit's task-aware part).

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
    "setup_table",
    "split_halves",
    "top_wrong_tokens",
    "anti_overconfidence",
    "mlp_direct_effects",
    "capital_map",
    "decode_intercept",
    "scorecard",
    "meaning",
]

# The 15 pairs of Lv et al.'s fact_dataset.py (fact sheet), in its order.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("China", "Beijing"), ("USA", "Washington"), ("Russia", "Moscow"), ("England", "London"),
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Greece", "Athens"), ("Thailand", "Bangkok"),
)

# The 15 lead-ins of Lv et al.'s templates (NC_TEMPLATES in the authors' fact_dataset.py,
# trestad/Factual-Recall-Mechanism), in their order; each template is
# "<lead-in> the capital of [N] is [C]". Short data strings, used with the source stated.
LEAD_INS: tuple[str, ...] = (
    "It's crucial to know that",
    "You are right to say that",
    "Therefore, it's correct to state that",
    "When asked, always remember that",
    "We confirm that",
    "Don't forget,",
    "Bear in mind,",
    "Keep in mind,",
    "Just a reminder,",
    "As we all know,",
    "According to the textbook,",
    "I am sure that",
    "Without a doubt,",
    "In case you didn't know,",
    "To emphasize,",
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


_ABSTRACT = "Lv et al. v4 abstract; claim, no number published"
_ROME = "Meng et al. 2022 (ROME), abstract and §2: claim, GPT-2 XL"
_GEVA = "Geva et al. 2023: claim, GPT-2 XL / GPT-J"
#: Claims with a measurable form, as Scorecard references. The value is the claim's encoding
#: (a sign, a bound of the book's), never a number from a paper; each row's criterion and
#: null are set in :func:`scorecard`.
CLAIMS: dict[str, Reference] = {
    "rome_mlp_site": Reference(
        1, _ROME + " (mid-layer MLPs at the last subject token are decisive)", "paper text",
        note="restoring MLP outputs there brings probability back (> 0); windows scaled from "
             "10 of 48 layers to the chapter's window of 12"),
    "rome_attn_late": Reference(
        1, _ROME + " (attention matters late, at the last token)", "paper text",
        note="attention windows at the last token: upper half > lower half"),
    "geva_subject_late": Reference(
        1, _GEVA + " (subject → last edges matter from the middle layers on)", "paper text",
        note="% change of p(answer) when those edges are blocked: lower half − upper half > 0"),
    "geva_relation_before_subject": Reference(
        1, _GEVA + " (relation positions matter first, subject positions later)",
        "paper text", note="in the lower half, blocking the relation hurts more than the subject"),
    "movers_attend_subject": Reference(
        2, _ABSTRACT + " (heads move the topic to the last position)", "paper text",
        note="at least 2 of the top-3 path-patching heads attend 'is' → country > 0.3 "
             "(threshold and count are the book's)"),
    "lead_9_8_in_top5": Reference(
        1, "a reading list naming 9.8 as Lv's argument passer (not the paper; unconfirmed)",
        "secondary source", note="9.8 among the 5 largest path-patching drops"),
    "mlp_gain": Reference(
        0.25, _ABSTRACT + " (the MLP after the movers amplifies or erases heads)",
        "paper text", note="causal gain g (MLP output along the head's, per unit of head "
                           "output): 0 = pass-through; |g| ≥ 0.25 is the book's bar"),
    "intercept_task_aware": Reference(
        0.9, _ABSTRACT + " (the MLP also writes a task-aware part toward the answer)",
        "paper text", note="the fit's intercept read with W_U: capitals' mean percentile "
                           "among all tokens (0.5 = random; ≥ 0.9 is the book's bar)"),
    "capital_map_share": Reference(
        0.5, _ABSTRACT + " (a deep MLP applies get_capital(X))", "paper text",
        note="share of countries whose own capital scores highest in the top MLP's output; "
             "≥ 0.5 is the book's bar; chance 1/15"),
    "suppressors_raise_p": Reference(
        1, _ABSTRACT + " (final-layer anti-overconfidence; mitigating it raises confidence)",
        "paper text", note="components chosen on one half of the prompts, scored on the other"),
    "anti_universal": Reference(
        1, _ABSTRACT + " ('universal' anti-overconfidence: other facts too)", "paper text",
        note="ROME's known facts, held out as for the capitals"),
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


# ---------------------------------------------------------------------------- analyses


def split_halves(n: int, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(choose, score)``: a seeded split of ``range(n)`` into two halves (the first gets
    the extra one). Components are chosen on one half and scored on the other."""
    if n < 2:
        raise ValueError(f"a held-out split needs at least 2 prompts, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    half = (n + 1) // 2
    return sorted(order[:half]), sorted(order[half:])


def _zero_neurons_hook(layer: int, neurons: Sequence[int]):
    from ..hooks import hook_name

    idx = torch.tensor(list(neurons), dtype=torch.long)

    def zero(post, hook):
        post = post.clone()
        post[..., idx.to(post.device)] = 0.0
        return post

    return [(hook_name("post", layer), zero)]


@torch.no_grad()
def top_wrong_tokens(model, ps: PromptSet, batch: int = 64) -> torch.Tensor:
    """``[n]``: the model's highest-logit token at END other than the answer."""
    from ..hooks import logits_at_positions

    out = []
    for s in range(0, len(ps), batch):
        part = ps.subset(range(s, min(s + batch, len(ps))))
        lg = logits_at_positions(model, part.tokens, part.positions["END"]).float().cpu()
        lg[torch.arange(len(part)), part.answers] = -float("inf")
        out.append(lg.argmax(-1))
    return torch.cat(out)


def anti_overconfidence(model, ps: PromptSet, *, k: int = 3, mid_layer: int | None = None,
                        n_random: int = 10, n_neurons: int = 3, seed: int = 0) -> dict:
    """Lv et al.'s final-layer anti-overconfidence, held out and controlled.

    On one half of ``ps`` (:func:`split_halves`) choose the ``k`` components of the last
    layer (its heads and its MLP) with the most negative mean direct effect on the answer's
    logit minus the mean logit; the same for ``mid_layer`` (default: the middle layer) and
    for MLP neurons of the last layer (``n_neurons``). On the *other* half, per prompt:

    * ``dp_suppressors``: p(answer) with the chosen last-layer components zeroed, minus
      the clean p(answer);
    * ``dp_random``: the same for ``k`` random last-layer components (mean over
      ``n_random`` seeded draws): zeroing anything there can only act directly;
    * ``dp_mid``: zeroing the middle layer's ``k`` most negative components;
    * ``dp_neurons``: zeroing the chosen last-layer neurons;
    * ``specificity``: the chosen components' summed direct effect on the answer minus that
      on the model's top wrong token (negative: they suppress the answer more);
    * ``lens_drop``: logit-lens p(answer) entering the last layer minus the model's output
      p(answer) (positive: the last layer lowers confidence).
    """
    from ..tracing import direct_effects, neuron_direct_effects, scale_hooks, logit_lens

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    last = n_layers - 1
    mid = n_layers // 2 if mid_layer is None else int(mid_layer)
    if not 0 <= mid < last:
        raise ValueError(f"mid_layer must be in 0..{last - 1}, got {mid}")
    choose, score = split_halves(len(ps), seed=seed)
    A, B = ps.subset(choose), ps.subset(score)

    def comps(L):
        return [f"{L}.{h}" for h in range(n_heads)] + [f"MLP {L}"]

    def most_negative(L):
        de = direct_effects(model, A.tokens, A.positions["END"], A.answers, comps(L)).mean(0)
        order = de.argsort().tolist()
        return [comps(L)[i] for i in order[:k]], de

    suppressors, de_last = most_negative(last)
    mid_suppressors, _ = most_negative(mid)
    base = lv_metrics(model, B)["prob"]

    def dp(hooks):
        return lv_metrics(model, B, fwd_hooks=hooks)["prob"] - base

    rng = random.Random(seed + 1)
    random_sets = [rng.sample(comps(last), k) for _ in range(n_random)]
    dp_random = torch.stack([dp(scale_hooks(model, {c: 0.0 for c in s})) for s in random_sets]).mean(0)
    ne = neuron_direct_effects(model, A.tokens, A.positions["END"], A.answers, last).mean(0)
    neurons = ne.argsort()[:n_neurons].tolist()
    wrong = top_wrong_tokens(model, B)
    de_ans = direct_effects(model, B.tokens, B.positions["END"], B.answers, suppressors).sum(1)
    de_wrong = direct_effects(model, B.tokens, B.positions["END"], wrong, suppressors).sum(1)
    lens_p, _ = logit_lens(model, B.tokens, B.answers, B.positions["END"])
    return {
        "choose": choose, "score": score, "layer": last, "mid_layer": mid,
        "suppressors": suppressors, "mid_suppressors": mid_suppressors,
        "components": comps(last), "de_last": de_last, "random_sets": random_sets,
        "neurons": neurons, "neuron_de": ne,
        "base_p": base,
        "dp_suppressors": dp(scale_hooks(model, {c: 0.0 for c in suppressors})),
        "dp_random": dp_random,
        "dp_mid": dp(scale_hooks(model, {c: 0.0 for c in mid_suppressors})),
        "dp_neurons": dp(_zero_neurons_hook(last, neurons)),
        "specificity": de_ans - de_wrong,
        "lens_drop": lens_p[last] - lens_p[-1],
    }


@torch.no_grad()
def mlp_direct_effects(model, ps: PromptSet) -> torch.Tensor:
    """``[n, n_layers]``: each MLP's direct effect on the answer's logit minus the mean
    logit at END (Lv's metric), the selection rule for the function-application MLP."""
    from ..tracing import direct_effects

    labels = [f"MLP {L}" for L in range(model.cfg.n_layers)]
    return direct_effects(model, ps.tokens, ps.positions["END"], ps.answers, labels)


@torch.no_grad()
def capital_map(model, ps: PromptSet, layer: int) -> dict:
    """Does MLP ``layer`` map each country to its own capital, and is it only an echo?

    Over the capital prompts, average MLP ``layer``'s output at END per query country and
    read it against every capital's unembedding, centred over the vocabulary (``mlp``), and
    for two echo controls: the same output against every *country's* unembedding
    (``mlp_countries``: GPT-2's tied embeddings let an MLP that echoes the country look like
    a map), and the residual stream *before* that MLP (``resid_mid``) against the capitals
    (is the map already there?). ``share``: the fraction of countries whose own column is the
    largest in their row; ``margin``: per country, its own column minus the mean of the
    others (per-country values, for an SE).
    """
    from ..hooks import capture, hook_name

    countries = torch.tensor(ps.fields["country"])
    present = sorted(set(countries.tolist()))
    if len(present) < 2:
        raise ValueError("the capital map needs prompts of at least 2 countries")
    tok = ps.tokenizer
    cap_ids = torch.tensor([tok.encode(" " + CAPITALS[c][1])[0] for c in present])
    cty_ids = torch.tensor([tok.encode(" " + CAPITALS[c][0])[0] for c in present])
    names = [hook_name("mlp_out", layer), hook_name("resid_mid", layer)]
    out = {}
    rows = torch.arange(len(ps))
    W_U = model.W_U
    W_c = W_U - W_U.mean(-1, keepdim=True)
    acts_all: dict[str, list] = {nm: [] for nm in names}
    for s in range(0, len(ps), 64):
        part = ps.subset(range(s, min(s + 64, len(ps))))
        _, acts = capture(model, part.tokens, names)
        r = torch.arange(len(part))
        for nm in names:
            a = acts[nm]
            acts_all[nm].append(a[r.to(a.device), part.positions["END"].to(a.device)])
    for key, nm, ids in (("mlp", names[0], cap_ids), ("mlp_countries", names[0], cty_ids),
                         ("resid_mid", names[1], cap_ids)):
        vec = torch.cat(acts_all[nm])
        means = torch.stack([vec[(countries == c).to(vec.device)].mean(0) for c in present])
        mat = (means @ W_c[:, ids.to(W_c.device)]).float().cpu()
        diag = mat.diagonal()
        off = (mat.sum(1) - diag) / (len(present) - 1)
        out[key] = {"matrix": mat, "share": float((mat.argmax(1) == torch.arange(len(present))).float().mean()),
                    "margin": diag - off}
    out["countries"] = [CAPITALS[c][0] for c in present]
    out["capitals"] = [CAPITALS[c][1] for c in present]
    del rows
    return out


def decode_intercept(model, intercept: torch.Tensor, targets: Sequence[int], top: int = 10):
    """``(percentiles [len(targets)], top tokens)``: read a fitted intercept (a vector in
    the residual basis) against the unembedding, centred over the vocabulary; each target
    token's percentile among all tokens (1 = the top token, 0.5 = a random token's
    expectation) and the ``top`` tokens it promotes most."""
    W_U = model.W_U
    logits = (intercept.to(W_U.device).to(W_U.dtype) @ (W_U - W_U.mean(-1, keepdim=True))).float().cpu()
    t = torch.as_tensor(list(targets), dtype=torch.long)
    below = (logits[None, :] < logits[t][:, None]).float().sum(1)
    pct = below / (logits.numel() - 1)
    best = logits.argsort(descending=True)[:top].tolist()
    return pct, best


def scorecard(m: dict, *, stand_in: bool, n_layers: int = 12):
    """The chapter's scorecard from the measured values ``m`` (see the notebook's Scorecard
    section; a key missing or None means "not run at this size"). Every graded row names
    its null and fails there (:meth:`~helpers.scorecard.Scorecard.null_run`)."""
    from ..scorecard import Scorecard, bootstrap_se  # noqa: F401 (bootstrap_se: callers)

    def get(key):
        return m.get(key)

    card = Scorecard("Factual recall: claims and data", stand_in=stand_in)
    R = REFERENCES
    sec_trace, sec_pp = "2. Causal tracing: where do the decisive states sit?", \
        "4. Argument passing: which heads move the country to \"is\"?"
    sec_gain, sec_func = "5. The MLP as an \"activation function\"", \
        "6. Function application: which MLP writes \"Paris\"?"
    sec_anti, sec_ko = "7. Anti-overconfidence in the final layer", \
        "3. Attention knockout: when does the last token read the subject?"
    mid = f"{n_layers // 6}–{2 * n_layers // 3}"
    card.sign(f"MLP indirect effect at the last subject token, windows centred {mid} "
              "(MLP0 outside every window)", CLAIMS["rome_mlp_site"],
              get("mlp_mid_ie"), sign=1, se=get("mlp_mid_ie_se"), section=sec_trace)
    card.ordering("MLP effect in middle layers: last subject token > first subsequent token",
                  CLAIMS["rome_mlp_site"],
                  greater=("last subject token", get("mlp_mid_ie"), get("mlp_mid_ie_se")),
                  lesser=("first subsequent token", get("mlp_mid_ie_next"),
                          get("mlp_mid_ie_next_se")), section=sec_trace)
    card.ordering("attention effect at the last token: upper half > lower half",
                  CLAIMS["rome_attn_late"],
                  greater=("upper half", get("attn_upper_ie"), get("attn_upper_ie_se")),
                  lesser=("lower half", get("attn_lower_ie"), get("attn_lower_ie_se")),
                  section=sec_trace)
    card.ordering("subject knockout hurts more in the upper half (% change, lower − upper)",
                  CLAIMS["geva_subject_late"],
                  greater=("lower half", get("ko_subj_lower"), get("ko_subj_lower_se")),
                  lesser=("upper half", get("ko_subj_upper"), get("ko_subj_upper_se")),
                  section=sec_ko)
    card.ordering("lower half: relation knockout hurts more than subject knockout",
                  CLAIMS["geva_relation_before_subject"],
                  greater=("subject, lower half", get("ko_subj_lower"), get("ko_subj_lower_se")),
                  lesser=("relation, lower half", get("ko_rel_lower"), get("ko_rel_lower_se")),
                  section=sec_ko)
    card.at_least("top-3 path-patching heads with attention 'is' → country > 0.3",
                  CLAIMS["movers_attend_subject"], get("movers_attending"), 2, null=0,
                  section=sec_pp)
    card.top_k("head 9.8 among the 5 largest path-patching drops", CLAIMS["lead_9_8_in_top5"],
               get("head_ranking"), ["9.8"], 5, section=sec_pp)
    card.at_least("|causal gain| of MLP on the top mover (0 = pass-through)",
                  CLAIMS["mlp_gain"], get("abs_causal_gain"), 0.25, null=0,
                  se=get("abs_causal_gain_se"), section=sec_gain)
    card.at_least("capitals' percentile in the gain fit's intercept (0.5 = random)",
                  CLAIMS["intercept_task_aware"], get("intercept_percentile"), 0.9, null=0.5,
                  se=get("intercept_percentile_se"), section=sec_gain)
    card.at_least("share of countries the top MLP maps to their own capital (chance 1/15)",
                  CLAIMS["capital_map_share"], get("map_share"), 0.5,
                  null=1 / 15, section=sec_func)
    card.ordering("capital map margin: MLP output > the residual before it (echo control)",
                  CLAIMS["capital_map_share"],
                  greater=("MLP output", get("map_margin"), get("map_margin_se")),
                  lesser=("resid_mid", get("map_margin_resid"), get("map_margin_resid_se")),
                  section=sec_func)
    card.sign("Δ p(capital), zeroing the last layer's 3 most negative components "
              "(chosen on the other half)", CLAIMS["suppressors_raise_p"],
              get("dp_suppressors"), sign=1, se=get("dp_suppressors_se"), section=sec_anti)
    card.ordering("Δ p(capital): those 3 > 3 random last-layer components",
                  CLAIMS["suppressors_raise_p"],
                  greater=("most negative", get("dp_suppressors"), get("dp_suppressors_se")),
                  lesser=("random", get("dp_random"), get("dp_random_se")), section=sec_anti)
    card.ordering("Δ p(capital): those 3 > the middle layer's 3 most negative",
                  CLAIMS["suppressors_raise_p"],
                  greater=("last layer", get("dp_suppressors"), get("dp_suppressors_se")),
                  lesser=("middle layer", get("dp_mid"), get("dp_mid_se")), section=sec_anti)
    card.sign("specificity: their direct effect on the answer − on the top wrong token",
              CLAIMS["suppressors_raise_p"], get("specificity"), sign=-1,
              se=get("specificity_se"), section=sec_anti)
    card.sign("logit lens: p(capital) entering the last layer − the output's",
              CLAIMS["suppressors_raise_p"], get("lens_drop"), sign=1,
              se=get("lens_drop_se"), section=sec_anti)
    card.sign("ROME facts: Δ p(answer), zeroing the last layer's 3 most negative (held out)",
              CLAIMS["anti_universal"], get("dp_suppressors_rome"), sign=1,
              se=get("dp_suppressors_rome_se"), section=sec_anti)
    card.info("MLP0 alone (window 1) at the last subject token: indirect effect",
              CLAIMS["rome_mlp_site"], get("mlp0_ie"), se=get("mlp0_ie_se"),
              note="reported apart: MLP0 acts as an extended embedding and undoes "
                   "embedding noise directly", section=sec_trace)
    card.info("Δ p(capital), zeroing the last MLP's 3 most negative neurons (held out)",
              CLAIMS["suppressors_raise_p"], get("dp_neurons"), se=get("dp_neurons_se"),
              note="neuron level; Lv et al.'s neuron index is not in their released code",
              section=sec_anti)
    card.data_check("distinct capital-task prompts generated", R["capital_prompts"],
                    get("n_capital_prompts"))
    card.data_check("distinct ROME known facts shipped", R["rome_facts"], get("n_rome_facts"))
    return card


def meaning(holds, yes: str, no: str, *, stand_in: bool):
    """A "Meaning:" line conditioned on what this run measured: ``yes`` if ``holds``,
    ``no`` if not; on the stand-in (random weights) neither, since nothing can be read."""
    from IPython.display import Markdown

    if stand_in:
        text = ("the stand-in has random weights, so this run shows nothing about GPT-2 "
                "here; run with `weights=\"pretrained\"` to read it.")
    elif holds is None:
        text = "not measured at this size."
    else:
        text = yes if holds else no
    return Markdown(f"**Meaning (this run):** {text}")
