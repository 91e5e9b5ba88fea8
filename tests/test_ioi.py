"""The IOI case module (helpers.cases.ioi): the prompt builder on GPT-2's real tokenizer, the
published numbers and the circuit as data."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from helpers import check_single_tokens
from helpers.cases.ioi import (
    BABA_TEMPLATES,
    IOI,
    IOI_CIRCUIT,
    NAMES,
    OBJECTS,
    ORDERS,
    PLACES,
    POSITION_KEYS,
    make_ioi_dataset,
    render_template,
    template_text,
)
from helpers.models import gpt2_tokenizer

EOT = 50256
N_ALL = 60  # 4 prompts per template, 2 per (template, order)


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def clean(tok):
    return make_ioi_dataset(N_ALL, seed=0, tokenizer=tok)


@pytest.fixture(scope="module")
def corrupt(clean):
    return clean.corrupt_abc(seed=1)


# ----------------------------------------------------------------------------- word lists


@pytest.mark.parametrize("words", [NAMES, PLACES, OBJECTS], ids=["names", "places", "objects"])
def test_every_word_is_one_token_with_leading_space(tok, words):
    for w in words:
        ids = tok.encode(" " + w)
        assert len(ids) == 1, (w, ids)
        assert tok.decode(ids) == " " + w
    assert len(set(words)) == len(words)


def test_word_list_sizes():
    assert 95 <= len(NAMES) <= 110
    assert set(PLACES) == {"store", "garden", "restaurant", "school", "hospital", "office", "house", "station"}
    assert set(OBJECTS) == {"ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"}


def test_multi_token_name_fails_loudly(tok):
    assert len(tok.encode(" Zachary")) > 1  # premise of this test
    with pytest.raises(ValueError, match="Zachary"):
        check_single_tokens(["John", "Zachary"], tok)
    with pytest.raises(ValueError, match="Zachary"):
        make_ioi_dataset(4, names=["John", "Mary", "Zachary", "Lisa", "Emma"], tokenizer=tok)


# ----------------------------------------------------------------------------- templates


def test_templates_are_the_papers_fifteen():
    assert len(BABA_TEMPLATES) == 15
    for t in BABA_TEMPLATES:
        assert t.endswith(" to [A]") and t.count("[A]") == 2 and t.count("[B]") == 2
        assert t.index("[B]") < t.index("[A]")  # written BABA
    # the fact sheet's openings, in the paper's order
    assert all(BABA_TEMPLATES[i].startswith("Then, [B] and [A] ") for i in range(5))
    starts = ["After [B]", "When [B]", "When [B]", "While [B]", "While [B]", "After the lunch, [B]",
              "Afterwards, [B]", "Then, [B]", "The [PLACE] [B]", "Friends [B]"]
    assert [BABA_TEMPLATES[5 + i].startswith(s) for i, s in enumerate(starts)] == [True] * 10
    assert BABA_TEMPLATES[0] == "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert BABA_TEMPLATES[13] == "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]"
    assert BABA_TEMPLATES[14] == "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]"
    assert "[PLACE]" not in BABA_TEMPLATES[4] + BABA_TEMPLATES[12]
    assert "[OBJECT]" not in BABA_TEMPLATES[4] + BABA_TEMPLATES[12]


# The paper's App. E / Fig. 14 wordings, BABA form, rendered with B = John, A = Mary: pinned so
# an accidental edit of a template shows up here.
PAPER_PROMPTS = {
    1: "Then, John and Mary went to the store. John gave a drink to",
    2: "Then, John and Mary had a lot of fun at the store. John gave a drink to",
    3: "Then, John and Mary were working at the store. John decided to give a drink to",
    4: "Then, John and Mary were thinking about going to the store. John wanted to give a drink to",
    5: "Then, John and Mary had a long argument, and afterwards John said to",
    6: "After John and Mary went to the store, John gave a drink to",
    7: "When John and Mary got a drink at the store, John decided to give it to",
    8: "When John and Mary got a drink at the store, John decided to give the drink to",
    9: "While John and Mary were working at the store, John gave a drink to",
    10: "While John and Mary were commuting to the store, John gave a drink to",
    11: "After the lunch, John and Mary went to the store. John gave a drink to",
    12: "Afterwards, John and Mary went to the store. John gave a drink to",
    13: "Then, John and Mary had a long argument. Afterwards John said to",
    14: "The store John and Mary went to had a drink. John gave it to",
    15: "Friends John and Mary found a drink at the store. John gave it to",
}


@pytest.mark.parametrize("t", range(1, 16))
def test_template_wording(t):
    got = render_template(t, "BABA", io="Mary", s1="John", place="store", obj="drink")
    assert got == PAPER_PROMPTS[t]
    abba = render_template(t, "ABBA", io="Mary", s1="John", place="store", obj="drink")
    assert abba == PAPER_PROMPTS[t].replace("John and Mary", "Mary and John", 1)


def test_render_babas_and_abbas():
    kw = dict(io="Mary", s1="John", place="store", obj="drink")
    assert render_template(1, "BABA", **kw) == "Then, John and Mary went to the store. John gave a drink to"
    assert render_template(1, "ABBA", **kw) == "Then, Mary and John went to the store. John gave a drink to"
    assert render_template(6, "ABBA", **kw) == "After Mary and John went to the store, John gave a drink to"
    assert template_text(8, "BABA").count("{OBJECT}") == 2
    with pytest.raises(ValueError):
        template_text(16)
    with pytest.raises(ValueError):
        make_ioi_dataset(4, templates=[0])


def test_template_lengths(tok):
    lengths = {}
    for t in range(1, 16):
        for order in ORDERS:
            d = make_ioi_dataset(6, templates=[t], orders=(order,), seed=t, tokenizer=tok)
            assert d.lengths.unique().numel() == 1  # single-token words: one length per template
            lengths[t, order] = int(d.lengths[0])
            assert len(tok.encode(d.prompts[0])) == lengths[t, order]
        assert lengths[t, "BABA"] == lengths[t, "ABBA"]
    assert all(14 <= v <= 20 for v in lengths.values()), lengths
    assert lengths[1, "BABA"] == 15
    assert lengths[4, "BABA"] == 20
    assert min(lengths.values()) == 14 and max(lengths.values()) == 20


# ----------------------------------------------------------------------------- positions


def test_all_template_order_pairs_present(clean):
    pairs = Counter(zip(clean.template_ids.tolist(), clean.orders))
    assert set(pairs) == {(t, o) for t in range(1, 16) for o in ORDERS}
    assert set(pairs.values()) == {2}


def _char_oracle(tok, prompt, order, io, s):
    """Expected positions from character offsets (an independent route to the same answer)."""
    enc = tok(prompt, return_offsets_mapping=True)
    starts = [a for a, _ in enc["offset_mapping"]]
    first, second = (s, io) if order == "BABA" else (io, s)
    pair = f" {first} and {second}"
    assert prompt.count(pair) == 1
    first_char = prompt.index(pair)
    second_char = first_char + len(f" {first} and")
    s1_char, io_char = (first_char, second_char) if order == "BABA" else (second_char, first_char)
    s2_char = prompt.rindex(" " + s)
    assert s2_char > max(s1_char, io_char)
    return {k: starts.index(c) for k, c in (("IO", io_char), ("S1", s1_char), ("S2", s2_char))}


def test_positions_point_at_the_right_tokens(tok, clean):
    d = clean
    assert set(d.positions) == set(POSITION_KEYS)
    for i in range(len(d)):
        toks = d.tokens[i]
        p = {k: int(v[i]) for k, v in d.positions.items()}
        io, s = d.io_names[i], d.s_names[i]
        assert io != s
        assert tok.decode(toks[p["IO"]]) == " " + io
        assert tok.decode(toks[p["S1"]]) == " " + s
        assert tok.decode(toks[p["S2"]]) == " " + s
        assert int(toks[p["IO"]]) == int(d.io_tokens[i]) and int(toks[p["S2"]]) == int(d.s_tokens[i])
        assert p["S1+1"] == p["S1"] + 1
        assert p["S1"] < p["S2"] and p["IO"] < p["S2"]
        if d.orders[i] == "BABA":
            assert p["S1"] < p["IO"] and tok.decode(toks[p["S1+1"]]) == " and"
        else:
            assert p["IO"] < p["S1"]
        # END is the last real token; the answer would follow it
        assert p["END"] == int(d.lengths[i]) - 1
        assert tok.decode(toks[p["END"]]) == " to"
        with_answer = tok.encode(d.prompts[i] + " " + io)
        assert with_answer[:-1] == toks[: p["END"] + 1].tolist()
        assert with_answer[p["END"] + 1] == int(d.io_tokens[i])
        assert (toks[p["END"] + 1:] == EOT).all()
        assert {k: p[k] for k in ("IO", "S1", "S2")} == _char_oracle(tok, d.prompts[i], d.orders[i], io, s)
        assert d.prompts[i].endswith(" to") and not d.prompts[i].endswith(" " + io)


def test_tokens_and_mask_shapes(clean):
    n, L = clean.tokens.shape
    assert n == N_ALL and L == int(clean.lengths.max()) == 20
    assert clean.tokens.dtype == torch.long and clean.io_tokens.shape == (n,)
    assert torch.equal(clean.attention_mask.sum(1), clean.lengths)
    assert clean.answer_tokens.shape == (n, 2)
    for k in POSITION_KEYS:
        assert clean.positions[k].shape == (n,) and clean.positions[k].dtype == torch.long


# ----------------------------------------------------------------------------- p_ABC


def test_corruption_changes_only_the_name_slots(tok, clean, corrupt):
    assert corrupt.tokens.shape == clean.tokens.shape
    assert torch.equal(corrupt.lengths, clean.lengths)
    for k in POSITION_KEYS:
        assert torch.equal(corrupt.positions[k], clean.positions[k])
    slots = torch.zeros_like(clean.tokens, dtype=torch.bool)
    for k in ("IO", "S1", "S2"):
        slots[torch.arange(len(clean)), clean.positions[k]] = True
    assert torch.equal(corrupt.tokens[~slots], clean.tokens[~slots])
    assert (corrupt.tokens[slots] != clean.tokens[slots]).all()
    for i in range(len(clean)):
        x, y, z = (corrupt.slot_names[k][i] for k in ("IO", "S1", "S2"))
        assert len({x, y, z}) == 3
        assert not {x, y, z} & {clean.io_names[i], clean.s_names[i]}
        for k, name in (("IO", x), ("S1", y), ("S2", z)):
            assert tok.decode(corrupt.tokens[i, corrupt.positions[k][i]]) == " " + name
        assert len(tok.encode(corrupt.prompts[i])) == int(clean.lengths[i])


def test_corruption_keeps_template_and_clean_answers(clean, corrupt):
    assert corrupt.corruption == "ABC" and clean.corruption is None
    assert torch.equal(corrupt.io_tokens, clean.io_tokens) and torch.equal(corrupt.s_tokens, clean.s_tokens)
    assert corrupt.io_names == clean.io_names and corrupt.s_names == clean.s_names
    assert torch.equal(corrupt.template_ids, clean.template_ids) and corrupt.orders == clean.orders
    assert corrupt.places == clean.places and corrupt.objects == clean.objects
    assert not torch.equal(corrupt.slot_tokens["IO"], clean.io_tokens)


def test_corruption_is_seeded(clean):
    a, b, c = clean.corrupt_abc(seed=5), clean.corrupt_abc(seed=5), clean.corrupt_abc(seed=6)
    assert a.prompts == b.prompts
    assert a.prompts != c.prompts


# ----------------------------------------------------------------------------- seeds, BOS, mixing


def test_seeded_generation(tok):
    a = make_ioi_dataset(40, seed=3, tokenizer=tok)
    b = make_ioi_dataset(40, seed=3, tokenizer=tok)
    c = make_ioi_dataset(40, seed=4, tokenizer=tok)
    assert a.prompts == b.prompts and torch.equal(a.tokens, b.tokens)
    assert a.prompts != c.prompts
    assert sum(x != y for x, y in zip(a.prompts, c.prompts)) > 30


def test_prepend_bos_shifts_by_one(tok, clean):
    bos = make_ioi_dataset(N_ALL, seed=0, prepend_bos=True, tokenizer=tok)
    assert bos.prompts == clean.prompts
    assert (bos.tokens[:, 0] == EOT).all()
    assert torch.equal(bos.tokens[:, 1:], clean.tokens)
    assert torch.equal(bos.lengths, clean.lengths + 1)
    for k in POSITION_KEYS:
        assert torch.equal(bos.positions[k], clean.positions[k] + 1), k
    cb = bos.corrupt_abc(seed=1)
    assert torch.equal(cb.positions["S2"], bos.positions["S2"]) and (cb.tokens[:, 0] == EOT).all()


def test_balanced_orders_and_template_subsets(tok):
    d = make_ioi_dataset(101, templates=[2, 7, 13], seed=1, tokenizer=tok)
    assert set(d.template_ids.tolist()) == {2, 7, 13}
    counts = Counter(d.orders)
    assert abs(counts["BABA"] - counts["ABBA"]) <= 1 and len(d) == 101
    per_t = Counter(d.template_ids.tolist())
    assert max(per_t.values()) - min(per_t.values()) <= 1
    assert len(set(d.orders[:20])) == 2  # shuffled, not in blocks
    only = make_ioi_dataset(10, orders=("ABBA",), seed=1, tokenizer=tok)
    assert set(only.orders) == {"ABBA"}
    assert (only.positions["IO"] < only.positions["S1"]).all()


def test_groups(clean):
    g = clean.groups()
    assert sorted(g) == list(range(1, 16))
    assert sorted(torch.cat(list(g.values())).tolist()) == list(range(N_ALL))
    for t, idx in g.items():
        assert (clean.template_ids[idx] == t).all()
        for k in POSITION_KEYS:  # one template: one set of positions up to the order swap
            assert clean.positions[k][idx].unique().numel() <= 2
        assert clean.lengths[idx].unique().numel() == 1
    go = clean.groups(by="template_order")
    assert len(go) == 30 and all(len(v) == 2 for v in go.values())
    sub = clean.subset(g[5])
    assert set(sub.template_ids.tolist()) == {5} and sub.tokens.shape == (4, 15)


def test_symmetric_twins(tok):
    d = make_ioi_dataset(20, symmetric=True, seed=2, tokenizer=tok)
    for i in range(0, 20, 2):
        assert (d.io_names[i], d.s_names[i]) == (d.s_names[i + 1], d.io_names[i + 1])
        assert d.orders[i] == d.orders[i + 1] and d.places[i] == d.places[i + 1]
        assert int(d.template_ids[i]) == int(d.template_ids[i + 1])
    with pytest.raises(ValueError):
        make_ioi_dataset(5, symmetric=True, tokenizer=tok)


# --------------------------------------------------------------------------- published numbers


def test_ioi_circuit_has_26_heads_in_7_classes():
    heads = IOI_CIRCUIT.heads()
    assert len(IOI_CIRCUIT.classes) == 7 and len(heads) == 26 and len(set(heads)) == 26
    assert all(0 <= layer < 12 and 0 <= head < 12 for layer, head in heads)
    assert set(IOI_CIRCUIT.labels("name mover")) == {"9.9", "9.6", "10.0"}
    assert set(IOI_CIRCUIT.labels("negative name mover")) == {"10.7", "11.10"}
    assert "Wang et al. 2022" in IOI_CIRCUIT.source


def test_every_class_keeps_a_named_position():
    assert set(IOI_CIRCUIT.positions) == set(IOI_CIRCUIT.classes)
    assert set(IOI_CIRCUIT.positions.values()) <= set(POSITION_KEYS)
    # classes are causally ordered: earlier classes read earlier layers
    last_s_inhibition = max(layer for layer, _ in IOI_CIRCUIT.heads("s-inhibition"))
    first_name_mover = min(layer for layer, _ in IOI_CIRCUIT.heads("name mover"))
    assert last_s_inhibition < first_name_mover


def test_published_values_carry_sources_and_confidence():
    assert IOI["logit_diff"].value == 3.56 and IOI["io_beats_s"].value == 0.993
    for key, ref in IOI.items():
        assert ref.source.startswith("Wang et al. 2022"), key
        assert ref.confidence in {"paper text", "official code", "secondary source"}, key


def test_reference_sources_name_the_paper_version_and_sections():
    from helpers.cases.ioi import PAPER_VERSION

    assert "26 heads" in PAPER_VERSION and "arXiv" in PAPER_VERSION
    assert "§4.2" in IOI["minimality_min_share"].source and "Fig. 7" in IOI["minimality_min_share"].source
    assert "authors' code" in IOI["logit_diff"].source
    assert "App. C" in IOI_CIRCUIT.source
    assert IOI["negative_movers_removed_rise"].value == pytest.approx(4.07 - 2.62)
    assert "at END" in IOI["name_movers_knocked_out_drop"].source


# --------------------------------------------------------------------------- minimality K sets


def test_minimality_k_sets_cover_all_26_heads_exactly_once():
    from helpers.cases.ioi import MINIMALITY_F, MINIMALITY_SETS, minimality_k_sets

    labels = IOI_CIRCUIT.labels()
    assert Counter(list(MINIMALITY_SETS)) == Counter(labels) and len(MINIMALITY_SETS) == 26
    assert set(MINIMALITY_F) == set(labels)
    for v, K in MINIMALITY_SETS.items():
        assert v not in K and set(K) <= set(labels) and len(set(K)) == len(K), v
    # spot checks against App. K / Fig. 20
    assert MINIMALITY_SETS["9.9"] == () and MINIMALITY_SETS["10.0"] == ("9.9",)
    assert set(MINIMALITY_SETS["9.6"]) == {"9.9", "10.0"}
    assert set(MINIMALITY_SETS["9.7"]) == {"9.9", "10.0", "9.6", "10.10", "10.6", "10.2", "10.1", "11.2"}
    assert len(MINIMALITY_SETS["9.0"]) == 12 and "11.9" in MINIMALITY_SETS["9.0"]
    assert set(MINIMALITY_SETS["5.8"]) == {"10.7", "11.10"}
    assert set(MINIMALITY_SETS["5.5"]) == {"5.8", "5.9", "6.9"}
    assert MINIMALITY_F["9.9"] == (2.62, 2.26) and MINIMALITY_F["10.7"][1] == 4.07
    ks = minimality_k_sets()
    assert list(ks) == IOI_CIRCUIT.heads() and ks[(10, 0)] == [(9, 9)]


def test_path_patching_experiments_mark_their_own_findings():
    from helpers.cases.ioi import PATH_PATCHING

    labels = set(IOI_CIRCUIT.labels())
    for name, exp in PATH_PATCHING.items():
        assert exp.source.startswith("Wang et al. 2022"), name
        assert exp.receivers == "logits" or exp.receivers in IOI_CIRCUIT.classes
        for heads in exp.found.values():
            assert set(heads) <= labels, name
    values, keys = PATH_PATCHING["s-inhibition values"], PATH_PATCHING["s-inhibition keys"]
    assert (values.receiver_input, values.sender_positions) == ("v", "S2")
    assert (keys.receiver_input, keys.sender_positions) == ("k", "S2")
    assert {h for hs in values.found.values() for h in hs} == {"5.5", "6.9", "0.1", "3.0"}
    assert {h for hs in keys.found.values() for h in hs} == {"5.8", "5.9", "0.10", "0.1", "3.0"}
    assert "App. C" in keys.source


def test_path_patching_experiment_runs_on_a_tiny_model(tiny_model, tok):
    from helpers import LogitDiffMetric, path_patch
    from helpers.cases.ioi import PathPatchingExperiment

    ds = make_ioi_dataset(4, seed=0, tokenizer=tok)
    abc = ds.corrupt_abc(seed=1)
    metric = LogitDiffMetric(ds.io_tokens, ds.s_tokens, ds.positions["END"])
    exp = PathPatchingExperiment("t", "logits", "q", "S2", {"x": ("1.0",)}, "Wang et al. 2022")
    got = exp.run(tiny_model, ds, abc, metric)
    want = path_patch(tiny_model, ds.tokens, abc.tokens, metric, sender_positions="S2",
                      named_positions=ds.positions)
    assert torch.allclose(got, want, equal_nan=True)
    clean = metric(tiny_model(ds.tokens)).item()
    fig = exp.heatmap(got, clean)
    assert fig.layout.title.text == "t" and len(fig.data) == 2


def test_copy_score_inputs_read_the_name_slots_in_context(tiny_model, tok):
    from helpers import capture
    from helpers.cases.ioi import copy_score_inputs

    ds = make_ioi_dataset(6, seed=0, tokenizer=tok)
    resid, ids = copy_score_inputs(tiny_model, ds)
    assert resid.shape == (18, tiny_model.cfg.d_model) and ids.shape == (18,)
    assert torch.equal(ids[:6].cpu(), ds.io_tokens) and torch.equal(ids[6:12].cpu(), ds.s_tokens)
    assert torch.equal(ids[12:].cpu(), ds.s_tokens)
    _, acts = capture(tiny_model, ds.tokens, ["blocks.0.hook_resid_post"])
    full = acts["blocks.0.hook_resid_post"]
    assert torch.allclose(resid[6:12], full[torch.arange(6), ds.positions["S1"]], atol=1e-5)
    with pytest.raises(ValueError, match="slots"):
        copy_score_inputs(tiny_model, ds, slots=("END",))


# --------------------------------------------------------------------------- copy score (issue 27)


def _biased_model_and_hf_copy(seed: int = 7):
    """A 2-layer GPT-2 whose every bias and LayerNorm parameter is random and non-zero, as a
    bridge in compatibility mode, and an untouched copy of its Hugging Face weights
    (compatibility mode rewrites the bridge's own in place)."""
    import copy

    from conftest_patching import boot, seeded_hf_gpt2
    from helpers.models import ModelSpec

    spec = ModelSpec("tiny-biased", "openai-community/gpt2", n_layers=2, n_heads=4, d_model=64)
    hf = seeded_hf_gpt2(spec, seed, initializer_range=0.05)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name or "ln_f" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    reference = copy.deepcopy(hf).eval()
    return boot(hf, spec, seed), reference


@torch.no_grad()
def _hf_copy_logits(hf, head, rows, sign):
    """The authors' copy-score logits written on the Hugging Face modules directly: the
    head's layer's ln_1 (weight and bias), c_attn's value slice with its bias, the head's
    rows of c_proj (no b_O), sign, ln_f (weight and bias), lm_head."""
    L, h = head
    d = hf.config.n_embd
    dh = d // hf.config.n_head
    block = hf.transformer.h[L]
    v = block.attn.c_attn(block.ln_1(rows))[:, 2 * d + h * dh : 2 * d + (h + 1) * dh]
    out = v @ block.attn.c_proj.weight[h * dh : (h + 1) * dh]
    return hf.lm_head(hf.transformer.ln_f(sign * out))


@pytest.fixture(scope="module")
def biased():
    return _biased_model_and_hf_copy()


def test_copy_score_equals_the_authors_recipe_on_hugging_face_weights(biased, tok):
    from helpers import copy_score
    from helpers.cases.ioi import copy_score_inputs
    from helpers.heads import copy_logits

    model, hf = biased
    assert model.b_V.abs().max() == 0 and model.casebook_value_bias.abs().min() > 0
    assert model.b_U.abs().max() > 0.05  # ln_f's bias through W_U: b_U matters here
    ds = make_ioi_dataset(12, seed=0, tokenizer=tok)
    resid, ids = copy_score_inputs(model, ds)
    # the residual after block 0, read from the Hugging Face model itself
    hidden = hf(ds.tokens, output_hidden_states=True).hidden_states[1]
    pos = torch.cat([ds.positions[s] for s in ("IO", "S1", "S2")])
    rows = hidden[torch.arange(len(ds)).repeat(3), pos]
    assert torch.equal(ids.cpu(), ds.tokens[torch.arange(len(ds)).repeat(3), pos])
    heads = [(L, h) for L in range(2) for h in range(4)]
    differs = 0
    for sign in (1, -1):
        for head in heads:
            want = _hf_copy_logits(hf, head, rows, sign)
            got = copy_logits(model, head, resid, sign=sign)
            # compatibility mode centres the unembedding: equal up to one constant per row
            torch.testing.assert_close(got - got.mean(-1, keepdim=True),
                                       want - want.mean(-1, keepdim=True), atol=2e-4, rtol=1e-4)
            bare = copy_logits(model, head, resid, sign=sign, include_bias=False,
                               unembed_bias=False)
            assert ((bare - bare.mean(-1, keepdim=True))
                    - (want - want.mean(-1, keepdim=True))).abs().max() > 0.05
        for k in (5, 500, 5000):
            got = copy_score(model, heads, resid, ids, k=k, sign=sign)
            bare = copy_score(model, heads, resid, ids, k=k, sign=sign, include_bias=False,
                              unembed_bias=False)
            for head in heads:
                top = _hf_copy_logits(hf, head, rows, sign).topk(k, dim=-1).indices
                want = (top == ids[:, None].cpu()).any(-1).float().mean().item()
                assert got[f"{head[0]}.{head[1]}"] == pytest.approx(want, abs=1e-6)
                differs += bare[f"{head[0]}.{head[1]}"] != got[f"{head[0]}.{head[1]}"]
    assert differs > 0  # the biases change some head's share: the test can tell


def test_copy_score_needs_the_recorded_value_biases(biased):
    from helpers import copy_score

    model, _ = biased
    resid = torch.randn(3, model.cfg.d_model)
    saved = model.casebook_value_bias
    try:
        del model.casebook_value_bias
        with pytest.raises(ValueError, match="value bias"):
            copy_score(model, ["1.0"], resid, [1, 2, 3])
        assert copy_score(model, ["1.0"], resid, [1, 2, 3], include_bias=False)["1.0"] >= 0
    finally:
        model.casebook_value_bias = saved
    with pytest.raises(ValueError, match="sign"):
        copy_score(model, ["1.0"], resid, [1, 2, 3], sign=2)


# --------------------------------------------------------------------------- completeness, minimality, scorecard (issue 27)


def test_per_prompt_scores_average_to_the_evaluators_scores(tiny_model, tok):
    from helpers import CircuitEvaluator, LogitDiffMetric, head_means
    from helpers.ablation import circuit_scores_per_prompt

    ds = make_ioi_dataset(6, seed=2, tokenizer=tok)
    abc = ds.corrupt_abc(seed=3)
    metric = LogitDiffMetric(ds.io_tokens, ds.s_tokens, ds.positions["END"])
    circuit = {(1, 0): "END", (0, 2): "S2", (1, 3): "END"}
    ev = CircuitEvaluator(tiny_model, ds.tokens, metric, head_means(tiny_model, abc.tokens, abc.groups()),
                          circuit, named_positions=ds.positions)
    removals = [None, [(1, 0)], [(0, 2), (1, 3)], [(0, 1)]]
    for in_circuit in (False, True):
        got = circuit_scores_per_prompt(ev, removals, circuit=in_circuit, batch_tokens=40)
        assert got.shape == (4, 6)
        want = ev.scores(removals, circuit=in_circuit)
        torch.testing.assert_close(got.mean(1), torch.tensor(want), atol=1e-5, rtol=1e-5)
    clean = metric(tiny_model(ds.tokens)).item()
    assert circuit_scores_per_prompt(ev, [None])[0].mean().item() == pytest.approx(clean, abs=1e-5)
    with pytest.raises(TypeError, match="LogitDiffMetric"):
        bad = CircuitEvaluator(tiny_model, ds.tokens, lambda lg: lg.mean(), ev.means, circuit)
        circuit_scores_per_prompt(bad, [None])


class _AdditiveEvaluator:
    """F(M \\ K) = 0 and F(C \\ K) = 1 + the sum of the heads' weights: the incompleteness of K
    is |1 + Σ w|, known in closed form."""

    def __init__(self, weights):
        self.w = weights

    def F(self, *, circuit=False, remove=None):
        return 1.0 + sum(self.w[h] for h in remove or []) if circuit else 0.0

    def scores(self, configs, *, circuit=False, progress=False):
        return [self.F(circuit=circuit, remove=k) for k in configs]


def test_greedy_runs_add_a_head_only_when_the_gap_grows():
    from helpers import greedy_incompleteness
    from helpers.ablation import greedy_incompleteness_runs

    weights = {(0, i): w for i, w in enumerate([0.5, -0.3, 0.2, -0.9, 0.1, 0.0])}
    ev = _AdditiveEvaluator(weights)
    heads = list(weights)
    runs = greedy_incompleteness_runs(ev, heads, runs=3, steps=6, sample=6, seed=0)
    assert len(runs) == 3
    for run in runs:  # every candidate tried each step: the positive heads, largest first
        assert run["K"] == [(0, 0), (0, 2), (0, 4)]
        assert run["gap"] == pytest.approx(1.8) and run["accepted"] == [0, 1, 2]
        assert run["F_C_minus_K"] == pytest.approx(1.8) and run["F_M_minus_K"] == 0.0
    # the older search adds a head at every step, even when the gap shrinks
    old = greedy_incompleteness(ev, heads, 6)
    assert len(old[-1]["K"]) == 6 and old[-1]["gap"] < 1.8
    # with 2 candidates a step, K still only ever grows the gap, and draws are seeded
    a = greedy_incompleteness_runs(ev, heads, runs=4, steps=5, sample=2, seed=1)
    b = greedy_incompleteness_runs(ev, heads, runs=4, steps=5, sample=2, seed=1)
    assert [r["K"] for r in a] == [r["K"] for r in b]
    for run in a:
        assert all(weights[h] > 0 for h in run["K"]) and run["gap"] >= 1.0
        assert len(run["K"]) == len(run["accepted"])
    with pytest.raises(ValueError, match="runs"):
        greedy_incompleteness_runs(ev, heads, runs=0)


def test_completeness_classes_follow_the_authors_code():
    from helpers.cases.ioi import NAIVE_CIRCUIT, completeness_classes

    six = completeness_classes()
    assert len(six) == 6 and sum(len(v) for v in six.values()) == 26
    movers = six["name mover (with backups)"]
    assert len(movers) == 11 and set(movers) == set(IOI_CIRCUIT.heads(["name mover", "backup name mover"]))
    naive = completeness_classes(NAIVE_CIRCUIT)
    assert list(naive) == ["name mover", "s-inhibition", "induction", "duplicate token", "previous token"]
    assert set(NAIVE_CIRCUIT.labels()) == {"9.6", "9.9", "10.0", "7.3", "7.9", "8.6", "8.10", "5.5", "5.9",
                                           "3.0", "0.10", "2.2", "4.11"}
    full = IOI_CIRCUIT.nodes()
    for head, pos in NAIVE_CIRCUIT.nodes().items():  # same heads keep the same positions
        assert full[head] == pos


def test_discovery_rows_rank_senders_with_a_path():
    from helpers.cases.ioi import DISCOVERY, PATH_PATCHING, discovery_ranking

    labels = set(IOI_CIRCUIT.labels())
    assert set(DISCOVERY) == set(PATH_PATCHING)
    for exp, rows in DISCOVERY.items():
        for _, members, k, order in rows:
            assert set(members) <= labels and len(members) < k <= 8 and order in (
                "negative", "positive", "magnitude")
    scores = torch.full((3, 2), float("nan"))
    scores[0] = torch.tensor([1.0, 3.0])  # clean value 2: % change -50, +50
    scores[1] = torch.tensor([0.0, 2.2])  # -100, +10
    ranked = {o: discovery_ranking(scores, 2.0, o) for o in ("negative", "positive", "magnitude")}
    assert ranked["negative"] == ["1.0", "0.0", "1.1", "0.1"]
    assert ranked["positive"] == ["0.1", "1.1", "0.0", "1.0"]
    assert ranked["magnitude"] == ["1.0", "0.0", "0.1", "1.1"]  # ties broken by head order
    with pytest.raises(ValueError, match="order"):
        discovery_ranking(scores, 2.0, "largest")


def test_minimality_table_shares_errors_and_near_threshold():
    from helpers.cases.ioi import minimality_configs, minimality_table

    v1, v2, a = (9, 9), (10, 0), (5, 5)
    k_sets = {v1: [], v2: [v1], a: []}
    configs = minimality_configs(k_sets)
    assert len(configs) == 4 and frozenset() in configs and frozenset({v1, v2}) in configs
    n = 400
    g = torch.Generator().manual_seed(0)
    base = 3.0 + torch.randn(n, generator=g)
    per = {frozenset(): base, frozenset({v1}): base - 0.9, frozenset({v1, v2}): base - 0.9 - 0.031
           + 0.05 * torch.randn(n, generator=g), frozenset({a}): base + 0.3}
    table = minimality_table(torch.stack([per[c] for c in configs]), configs, k_sets, f_m=3.0)
    row = table.set_index("head")
    assert row.loc["9.9", "change"] == pytest.approx(-0.9) and row.loc["9.9", "passes"]
    assert row.loc["5.5", "share of F(M)"] == pytest.approx(0.1)
    near = row.loc["10.0"]
    assert near["share of F(M)"] == pytest.approx(0.031 / 3, abs=0.002)
    assert near["SE of share"] == pytest.approx(0.05 / 3 / n ** 0.5, rel=0.2)
    assert bool(near["near threshold"]) and not bool(row.loc["9.9", "near threshold"])


def _fake_results(null: bool = False):
    """Results shaped like the notebook's, for a card that should hold (GPT-2-like values)."""
    import pandas as pd

    g = torch.Generator().manual_seed(0)
    n = 100
    f_m = 3.5 + 0.5 * torch.randn(n, generator=g)
    pp = {exp: torch.zeros(12, 12) + 2.0 for exp in ("logits", "name mover queries", "s-inhibition values",
                                                    "s-inhibition keys", "induction keys")}
    for exp, rows in __import__("helpers.cases.ioi", fromlist=["DISCOVERY"]).DISCOVERY.items():
        for _, members, _, order in rows:
            for i, m in enumerate(members):
                L, h = map(int, m.split("."))
                pp[exp][L, h] = 2.0 + (1.0 + i / 10) * (1 if order == "positive" else -1)
    mini = pd.DataFrame({"head": IOI_CIRCUIT.labels(), "share of F(M)": [0.05] * 26,
                         "SE of share": [0.005] * 26, "passes": [True] * 26})
    return {
        "n_heads_circuit": 26, "share_of_nodes": 26 / (144 * 17),
        "baseline_lds": 3.56 + torch.randn(1000, generator=g),
        "baseline_probs": (0.49 + 0.1 * torch.randn(1000, generator=g)).clamp(0, 1),
        "f_c": 0.87 * f_m, "f_m": f_m, "f_m_minus_nm": 0.95 * f_m, "nm_direct": 0.6 * f_m,
        "f_c_minus_negative": 0.87 * f_m + 1.45, "nm_attention": torch.full((n, 3), 0.59),
        "sinh_attention": torch.full((n, 4), 0.51),
        "copy_scores": {"9.9": 0.97, "9.6": 0.98, "10.0": 0.99},
        "negative_copy_scores": {"10.7": 0.98, "11.10": 0.99}, "copy_rows": 300,
        "minimality": mini, "greedy_best": 2.5 + 0.5 * torch.randn(n, generator=g),
        "naive_gap": 0.1 + 0.3 * torch.randn(n, generator=g), "path_patching": pp, "clean_ld": 2.0,
    }


def test_scorecard_rows_hold_on_paper_like_values_and_fail_at_their_nulls():
    from types import SimpleNamespace

    from helpers.cases.ioi import DISCOVERY, build_scorecard
    from helpers.scorecard import DIFFERS, HOLDS, NOT_APPLICABLE

    card = build_scorecard(SimpleNamespace(is_stand_in=False), _fake_results())
    graded = [r for r in card.rows if r.role == "graded"]
    data = [r for r in card.rows if r.role == "data"]
    assert {r.quantity for r in data} == {"circuit heads", "circuit share of (head, position) pairs"}
    assert sum(r.criterion["kind"] == "top_k" for r in graded) == sum(len(v) for v in DISCOVERY.values())
    kinds = {r.quantity: r.criterion["kind"] for r in graded}
    assert kinds["worst incompleteness found by the greedy search"] == "at_least"
    assert kinds["heads passing minimality (paper's K, ≥ 1% of F(M))"] == "at_least"
    assert all(kind == "at_least" for q, kind in kinds.items() if "copy score" in q)
    verdicts = dict(zip([r.quantity for r in card.rows], card.verdicts()))
    assert all(v == HOLDS for v in verdicts.values()), {q: v for q, v in verdicts.items() if v != HOLDS}
    assert all(v == DIFFERS for r, v in zip(card.null_run().rows, card.null_run().verdicts())
               if r.role == "graded")
    stand_in = build_scorecard(SimpleNamespace(is_stand_in=True), _fake_results())
    assert {v for r, v in zip(stand_in.rows, stand_in.verdicts()) if r.role == "graded"} == {NOT_APPLICABLE}
    assert all(v == HOLDS for r, v in zip(stand_in.rows, stand_in.verdicts()) if r.role == "data")
    # a smoke build that skipped everything: rows are "not run", nothing raises
    empty = build_scorecard(SimpleNamespace(is_stand_in=False), {})
    assert DIFFERS not in empty.verdicts()


def test_scorecard_sections_are_headings_of_the_chapter():
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from helpers.cases.ioi import build_scorecard

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "01_ioi.ipynb").read_text())
    headings = {line.lstrip("#").strip() for cell in nb["cells"] if cell["cell_type"] == "markdown"
                for line in "".join(cell["source"]).splitlines() if line.startswith("#")}
    card = build_scorecard(SimpleNamespace(is_stand_in=True), {})
    missing = {r.section for r in card.rows} - headings
    assert not missing, missing


def test_scorecard_takes_per_prompt_values_from_the_accelerator():
    from types import SimpleNamespace

    from helpers.cases.ioi import build_scorecard
    from helpers.devices import DeviceHarness
    from helpers.scorecard import HOLDS

    results = _fake_results()
    with DeviceHarness():
        moved = {k: v.to("cuda") if isinstance(v, torch.Tensor) and k != "path_patching" else v
                 for k, v in results.items()}
        card = build_scorecard(SimpleNamespace(is_stand_in=False), moved)
    assert set(card.verdicts()) == {HOLDS}
