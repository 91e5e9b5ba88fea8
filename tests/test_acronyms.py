"""The acronyms chapter (helpers.cases.acronyms): the data rules on GPT-2's real tokenizer,
the per-letter metric, a planted letter mover found by the chapter's analyses, the add-back
curve, and the positional interventions (helpers.positional)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from conftest_acronyms import MOVER, build_letter_mover
from helpers import (
    CircuitEvaluator,
    PositionMetric,
    attention_between,
    bos_swap_sweep,
    capture,
    copy_score,
    head_means,
    hook_name,
    logit_diff_vs_rivals,
    strongest_rival,
    patch_heads,
    swap_bos_attention_hooks,
    swap_pos_embed_hooks,
    top_heads,
)
from helpers.cases.acronyms import (
    ACRONYM_CIRCUIT,
    ACRONYMS,
    ADD_BACK_ORDER,
    CORRUPTIONS,
    LETTER_IDS,
    POSITION_NAMES,
    SWAP_PAIRS,
    check_nouns,
    corruption_columns,
    filter_correct,
    letter_distribution,
    letter_logit_diffs,
    letter_metric,
    load_nouns,
    make_acronym_dataset,
    valid_acronyms,
)
from helpers.models import gpt2_tokenizer
from helpers.positional import bos_column_swap_hooks


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def ds(tok):
    return make_acronym_dataset(40, seed=0, tokenizer=tok)


@pytest.fixture(scope="module")
def mover():
    return build_letter_mover()


# ----------------------------------------------------------------------------- data rules


def test_letter_tokens_are_32_to_57(tok):
    assert [tok.decode([i]) for i in LETTER_IDS] == [chr(65 + i) for i in range(26)]


def test_every_shipped_noun_is_spaced_capital_plus_one_token(tok):
    nouns = load_nouns()
    ids = check_nouns(nouns, tok)
    assert len(nouns) == len(ids) == 375
    for w, (cap, rest) in ids.items():
        assert tok.decode([cap]) == " " + w[0] and tok.decode([rest]) == w[1:]
        assert tok.encode(" " + w) == [cap, rest]


def test_prompts_tokenize_to_the_template(ds, tok):
    assert ds.tokens.shape == (40, 11) and ds.prepend_bos
    assert (ds.tokens[:, 0] == 50256).all()
    for i in range(len(ds)):
        words, acr = ds.words[i], ds.acronyms[i]
        assert acr == "".join(w[0] for w in words) and acr in valid_acronyms(tok)
        row = ds.tokens[i].tolist()
        assert row[1:] == tok.encode(ds.prompts[i])  # the text is exactly these tokens
        assert tok.encode(ds.prompts[i] + acr[2]) == row[1:] + [int(ds.answers[i, 2])]
        for j, w in enumerate(words):
            c, t = ds.positions[f"C{j + 1}"][i], ds.positions[f"T{j + 1}"][i]
            assert tok.decode([row[c]]) == " " + w[0] and tok.decode([row[t]]) == w[1:]
        assert [tok.decode([a]) for a in ds.answers[i].tolist()] == list(acr)
        assert row[9:11] == ds.answers[i, :2].tolist()  # teacher forcing: A1 A2 are in the prompt
    for k, name in enumerate(POSITION_NAMES):
        assert (ds.positions[name] == k).all()
    assert [int(ds.positions[f"P{i}"][0]) for i in (1, 2, 3)] == [8, 9, 10]


def test_same_seed_same_prompts(tok):
    a, b = make_acronym_dataset(10, seed=3, tokenizer=tok), make_acronym_dataset(10, seed=3, tokenizer=tok)
    assert a.prompts == b.prompts and torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("letter", [1, 2, 3])
def test_corruptions_change_only_their_positions(ds, kind, letter):
    bad = ds.corrupt(kind, letter, seed=1)
    cols = corruption_columns(kind, letter)
    changed = (bad != ds.tokens).any(0).nonzero().flatten().tolist()
    assert set(changed) <= set(cols)
    if kind == "current word":
        assert set(changed) == set(cols)  # 40 permuted prompts: some word differs
    base = ds.corrupted_base(seed=1)
    assert torch.equal(bad[:, cols], base[:, cols])


def test_letter_distribution_is_skewed_like_the_papers(tok):
    dist = letter_distribution(make_acronym_dataset(300, seed=0, tokenizer=tok))
    assert dist["Q"] == dist["U"] == dist["X"] == 0
    assert sum(dist.values()) == 900


def test_bad_inputs_give_clear_errors(ds, tok, mover):
    with pytest.raises(ValueError, match="at least 1"):
        make_acronym_dataset(0)
    with pytest.raises(ValueError, match="letter must be"):
        ds.corrupt("current word", 4)
    with pytest.raises(ValueError, match="corruption kind"):
        ds.corrupt("next word", 1)
    with pytest.raises(ValueError, match="token rules"):
        check_nouns(["Bait", "Xylophonist"], tok)
    with pytest.raises(ValueError, match="fully right"):
        filter_correct(mover, ds, n=len(ds) + 1)
    with pytest.raises(KeyError, match="unknown position"):
        ds.position("C4")


# ----------------------------------------------------------------------------- metric


def test_rival_metric_on_hand_made_logits():
    logits = torch.zeros(2, 3, 60)  # [batch, seq, vocab]
    logits[0, 1, 35] = 5.0  # prompt 0: answer "D" (35) at 5, best rival "B" (33) at 2
    logits[0, 1, 33] = 2.0
    logits[0, 1, 10] = 9.0  # not a letter: ignored
    logits[1, 1, 40] = 1.0  # prompt 1: answer "I" (40) at 1, best rival "Z" (57) at 4
    logits[1, 1, 57] = 4.0
    answer = torch.tensor([35, 40])
    per = logit_diff_vs_rivals(logits, answer, torch.tensor(LETTER_IDS), 1, mean=False)
    assert per.tolist() == [3.0, -3.0]
    assert strongest_rival(logits, answer, torch.tensor(LETTER_IDS), 1).tolist() == [33, 57]
    metric = PositionMetric(lambda lg: logit_diff_vs_rivals(lg, answer, torch.tensor(LETTER_IDS)),
                            torch.tensor([1, 1]))
    assert metric(logits).item() == 0.0


def test_letter_metric_matches_per_prompt_values(ds, mover):
    per = letter_logit_diffs(mover, ds)
    logits = mover(ds.tokens)
    for i in (1, 2, 3):
        assert letter_metric(ds, i)(logits).item() == pytest.approx(per[:, i - 1].mean().item(), abs=1e-4)


# ----------------------------------------------------------------------------- planted letter mover


@pytest.mark.parametrize("letter", [1, 2, 3])
def test_head_patching_ranks_the_planted_mover_first(ds, mover, letter):
    metric = letter_metric(ds, letter)
    clean = metric(mover(ds.tokens)).item()
    assert clean > 5
    scores = patch_heads(mover, ds.tokens, ds.corrupt("current word", letter), metric)
    label, value = top_heads(scores - clean, k=1, largest=False)[0]
    assert label == "1.0" and value < -5


def test_attention_and_copy_score_rank_the_planted_mover_first(ds, mover):
    heads = [(L, h) for L in range(2) for h in range(2)]
    for i in (1, 2, 3):
        att = attention_between(mover, ds.tokens, heads, ds.positions[f"P{i}"], ds.positions[f"C{i}"])
        assert max(att, key=att.get) == "1.0" and att["1.0"] > 0.9
    spaced = torch.tensor([gpt2_tokenizer().encode(" " + chr(65 + i))[0] for i in range(26)])
    name = hook_name("resid_pre", 1)
    _, acts = capture(mover, spaced[:, None], [name])
    scores = copy_score(mover, heads, acts[name][:, 0], torch.tensor(LETTER_IDS))
    assert max(scores, key=scores.get) == "1.0" and scores["1.0"] == 1.0


# ----------------------------------------------------------------------------- add-back curve


def _plain_mean_ablated_logits(model, tokens, means, keep):
    """The mean-ablated run written out with plain TransformerLens hooks: every head not in
    ``keep`` has its ``z`` replaced, at every position, by ``means[pos, layer, head]``."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    def hook(z, hook, layer):
        z = z.clone()
        for h in range(n_heads):
            if (layer, h) not in keep:
                z[:, :, h, :] = means[:, layer, h, :].to(z.dtype)
        return z

    fwd = [(f"blocks.{L}.attn.hook_z", partial(hook, layer=L)) for L in range(n_layers)]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=fwd)


def test_add_back_curve_equals_hand_computed_values(ds, mover):
    sub = ds.subset(range(8))
    bad = sub.corrupt("current word", 2, seed=1)
    # the means, by hand: z of the corrupted batch, averaged over prompts, per position
    with torch.no_grad():
        _, cache = mover.run_with_cache(bad)
    n_layers = mover.cfg.n_layers
    hand_means = torch.stack([cache[f"blocks.{L}.attn.hook_z"].mean(0) for L in range(n_layers)], 1)
    # the metric, by hand: answer logit minus the best other capital, at A1, mean over prompts
    rivals = torch.tensor(LETTER_IDS)

    def hand_metric(logits):
        at = logits[:, 9].float()
        answer = sub.answers[:, 1]
        own = at.gather(1, answer[:, None])[:, 0]
        other = at[:, rivals].masked_fill(rivals[None] == answer[:, None], float("-inf"))
        return (own - other.max(1).values).mean().item()

    order = [(1, 1), (0, 1), (1, 0)]
    means = head_means(mover, bad)
    assert torch.allclose(means[0], hand_means, atol=1e-5)
    ev = CircuitEvaluator(mover, sub.tokens, letter_metric(sub, 2), means, {h: None for h in order})
    curve = ev.add_back(order)
    assert len(curve) == 4
    expected = [hand_metric(_plain_mean_ablated_logits(mover, sub.tokens, hand_means, set(order[:k])))
                for k in range(4)]
    assert curve == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        clean = hand_metric(mover(sub.tokens))
    assert abs(expected[0] - clean) > 1e-3  # the ablation does something, so the check can fail
    assert len({round(v, 4) for v in expected}) > 1
    assert curve[-1] == pytest.approx(ev.F(circuit=True), abs=1e-5)
    with pytest.raises(KeyError, match="not in the circuit"):
        ev.add_back([(0, 0)])


def test_paper_circuit_and_order():
    assert len(ACRONYM_CIRCUIT) == ACRONYMS["circuit_heads"].value == 8
    assert set(ADD_BACK_ORDER) == set(ACRONYM_CIRCUIT.heads())
    assert ACRONYM_CIRCUIT.labels("letter mover") == ["8.11", "9.9", "10.10", "11.4"]
    # every head-patching number on the fact sheet, and only those (no "small" made up)
    assert set(ACRONYMS["patch_114"]) == {1} and set(ACRONYMS["patch_99"]) == {1, 2}
    for key in ("prev_words_at_A_1010_letter2", "prev_words_at_C_10_letter2", "prev_words_at_C_22_letter2"):
        assert ACRONYMS[key].value < 0 and "read from a figure" in ACRONYMS[key].source


# ----------------------------------------------------------------------------- positional


def test_positional_swaps(ds, mover):
    tokens = ds.tokens[:6]
    clean = mover(tokens)
    assert torch.allclose(mover.run_with_hooks(tokens, fwd_hooks=swap_pos_embed_hooks(3, 3)), clean)
    # swapping the key markers of C1 and C2 sends P1's attention to C2: letter 1 gets letter 2
    logits = mover.run_with_hooks(tokens, fwd_hooks=swap_pos_embed_hooks(2, 4))
    assert (logits[:, 8].argmax(-1) == ds.answers[:6, 1]).all()
    name = hook_name("pattern", 1)
    _, plain = capture(mover, tokens, [name])
    _, swapped = capture(mover, tokens, [name], fwd_hooks=swap_bos_attention_hooks(mover, [MOVER], 8, 9))
    p, s = plain[name][:, 0], swapped[name][:, 0]
    assert torch.allclose(s[:, 8, 0], p[:, 9, 0]) and torch.allclose(s[:, 9, 0], p[:, 8, 0])
    assert torch.allclose(s.sum(-1), torch.ones_like(s.sum(-1)), atol=1e-5)
    assert torch.equal(swapped[name][:, 1], plain[name][:, 1])  # other heads untouched
    metric = letter_metric(ds.subset(range(6)), 1)
    noop = bos_swap_sweep(mover, tokens, metric, 8, 8)
    assert torch.allclose(noop, torch.full_like(noop, metric(clean).item()), atol=1e-4)


def test_mover_analyses_single_out_the_planted_head(ds, mover):
    from helpers.cases.acronyms import attention_and_dla, letter_copy_scores, ov_letter_matrix

    df = attention_and_dla(mover, ds.subset(range(8)), ["1.0", "1.1"])
    # batched over prompts (a full cache of the chapter's 256 prompts holds ~6 GB): the
    # same rows in the same order whatever the batch size
    pd.testing.assert_frame_equal(
        df, attention_and_dla(mover, ds.subset(range(8)), ["1.0", "1.1"], batch_size=3),
        atol=1e-5)
    means = df.groupby(["letter", "head"]).mean()
    for i in (1, 2, 3):
        assert means.loc[(i, "1.0"), "attention"] > 0.9 and means.loc[(i, "1.0"), "dla"] > 10
        assert abs(means.loc[(i, "1.1"), "dla"]) < 1
    # the paper's OV figure: raw W_E of " X" through OV to the logit of "X"
    assert torch.equal(ov_letter_matrix(mover, "1.0").argmax(-1), torch.arange(26))
    # spaced input to spaced output is not what the planted head writes
    assert not torch.equal(ov_letter_matrix(mover, "1.0", spaced_output=True).argmax(-1), torch.arange(26))
    # the paper's copy score: W_E + MLP0 as input, top 5 over the whole vocabulary
    scores = letter_copy_scores(mover, ["1.0", "1.1"])
    assert scores["1.0"]['top-5 has "X"'] == 1.0 and scores["1.1"]['top-5 has "X"'] < 0.5


@pytest.mark.parametrize("pair", SWAP_PAIRS)
def test_positional_conditions_per_letter_on_the_planted_mover(ds, mover, pair):
    from helpers.cases.acronyms import positional_conditions

    sub = ds.subset(range(8))
    table = positional_conditions(mover, sub, ["1.0"], pair=pair, watch=["1.0"])
    conditions = ["clean", "positions swapped", "BOS swapped", "both swapped",
                  "BOS swapped, rows rescaled (variant)"]
    assert list(dict.fromkeys(table["condition"])) == conditions
    assert len(table) == 5 * 3 and set(table["letter"]) == {1, 2, 3}
    a, b = pair
    at = table.set_index(["condition", "letter"])
    for i in (1, 2, 3):
        clean = at.loc[("clean", i)]
        assert clean[f"to C{i}"] > 0.9  # the planted head finds Ci by its position marker
        assert clean["to matching Ci"] == clean[f"to C{i}"]
        assert clean["logit diff."] == pytest.approx(letter_metric(sub, i)(mover(sub.tokens)).item(), abs=1e-4)
        # BOS swapped at the query rows Ca, Cb: the mover's rows Pi are untouched
        for c in ("BOS swapped", "BOS swapped, rows rescaled (variant)"):
            assert at.loc[(c, i), f"to C{i}"] == pytest.approx(clean[f"to C{i}"], abs=1e-5)
        swapped = at.loc[("positions swapped", i)]
        if i in pair:  # the markers moved: Pi now looks at the other capital of the pair
            other = b if i == a else a
            assert swapped[f"to C{other}"] > 0.9 and swapped[f"to C{i}"] < 0.1
            assert swapped["logit diff."] < clean["logit diff."] - 1
        else:  # the third letter is untouched
            assert swapped[f"to C{i}"] == pytest.approx(clean[f"to C{i}"], abs=1e-5)
    with pytest.raises(ValueError, match="two different"):
        positional_conditions(mover, sub, [MOVER], pair=(2, 2))


def test_select_bos_heads_takes_the_union_over_letters():
    from helpers.cases.acronyms import select_bos_heads

    e1, e2 = torch.zeros(2, 2), torch.zeros(2, 2)
    e1[0, 1], e2[1, 0], e2[1, 1] = -0.01, -0.02, -0.004  # -0.004: under the threshold
    e1[1, 1] = float("nan")
    assert select_bos_heads({1: e1, 2: e2}) == [(0, 1), (1, 0)]
    assert select_bos_heads({1: e1}, threshold=0.02) == []


def test_bos_swap_sweep_stacked_equals_one_head_at_a_time(ds, mover):
    tokens = ds.tokens[:4]
    metric = letter_metric(ds.subset(range(4)), 2)
    stacked = bos_swap_sweep(mover, tokens, metric, 4, 9)
    single = bos_swap_sweep(mover, tokens, metric, 4, 9, batch_tokens=1)
    sub = ds.subset(range(4))
    per_letter = bos_swap_sweep(mover, tokens, {i: letter_metric(sub, i) for i in (1, 2, 3)}, 4, 9)
    assert set(per_letter) == {1, 2, 3} and torch.equal(per_letter[2], stacked)
    rescaled = bos_swap_sweep(mover, tokens, metric, 4, 9, rescale=True)
    for L in range(2):
        for h in range(2):
            hooks = bos_column_swap_hooks(mover, tokens, [(L, h)], 4, 9)  # the paper's
            logits = mover.run_with_hooks(tokens, fwd_hooks=hooks)
            variant = mover.run_with_hooks(tokens, fwd_hooks=swap_bos_attention_hooks(mover, [(L, h)], 4, 9))
            assert rescaled[L, h].item() == pytest.approx(metric(variant).item(), abs=1e-4)
            plain = metric(logits).item()
            assert stacked[L, h].item() == pytest.approx(plain, abs=1e-4)
            assert single[L, h].item() == pytest.approx(plain, abs=1e-4)
            for i in (1, 3):
                want = letter_metric(sub, i)(logits).item()
                assert per_letter[i][L, h].item() == pytest.approx(want, abs=1e-4)
    # a plain callable (not a PositionMetric) takes the full-logits path: same numbers
    full = bos_swap_sweep(mover, tokens, lambda lg: metric(lg), 4, 9)
    assert torch.allclose(full, stacked, atol=1e-4)


# ----------------------------------------------------------------------------- exercises


def _todo(*args):
    raise NotImplementedError


def test_letter_metric_check_passes_the_reference_and_names_known_mistakes():
    from helpers.exercises.acronyms import check_letter_logit_diff, reference_letter_logit_diff

    assert check_letter_logit_diff(reference_letter_logit_diff).passed
    assert check_letter_logit_diff(_todo).status == "todo"

    def with_answer(lg, a, ids):
        return lg.gather(2, a[..., None])[..., 0] - lg[:, :, ids].max(-1).values

    assert "leave the answer out" in check_letter_logit_diff(with_answer).message
    whole = check_letter_logit_diff(
        lambda lg, a, ids: lg.gather(2, a[..., None])[..., 0]
        - lg.scatter(2, a[..., None], float("-inf")).max(-1).values)
    assert "whole vocabulary" in whole.message
    flipped = check_letter_logit_diff(lambda *a: -reference_letter_logit_diff(*a))
    assert flipped.status == "fail" and "sign is flipped" in flipped.message
    pooled = check_letter_logit_diff(lambda *a: reference_letter_logit_diff(*a).mean(1))
    assert "shape" in pooled.message


def test_mover_attention_check_passes_the_reference_and_names_known_mistakes():
    from helpers.exercises.acronyms import check_mover_attention, reference_mover_attention

    assert check_mover_attention(reference_mover_attention).passed
    assert check_mover_attention(_todo).status == "todo"
    # query and key swapped reads above the causal mask: all zeros, which the checks never
    # call a known mistake (helpers.exercises)
    swapped = check_mover_attention(lambda p: p[:, :, [2, 4, 6], [8, 9, 10]].mean(0))
    assert swapped.status == "fail" and "all zeros" in swapped.message
    assert "Ti" in check_mover_attention(lambda p: p[:, :, [8, 9, 10], [3, 5, 7]].mean(0)).message
    assert "off by one" in check_mover_attention(lambda p: p[:, :, [7, 8, 9], [2, 4, 6]].mean(0)).message
    per_prompt = check_mover_attention(lambda p: p[:, :, [8, 9, 10], [2, 4, 6]])
    assert per_prompt.status == "fail" and "shape" in per_prompt.message


def test_scorecard_rows_name_published_numbers():
    """Every table-driven scorecard row points at a number in ACRONYMS and a real head."""
    from helpers.cases import acronyms as acr
    from helpers.scorecard import Reference

    for key, (L, H), tol in acr.HEAD_PATCH_ROWS:
        assert set(acr.ACRONYMS[key]) <= {1, 2, 3} and 0 <= L < 12 and 0 <= H < 12
        assert tol is None or tol > 0
        assert all(isinstance(r, Reference) for r in acr.ACRONYMS[key].values())
    for key, (L, H), where, tol in acr.PREVIOUS_WORD_ROWS:
        assert isinstance(acr.ACRONYMS[key], Reference) and where in ("C2", "P2")
        assert (where == "P2") == ("_at_A_" in key) and 0 <= L < 12 and 0 <= H < 12
        assert tol is None or tol > 0


# ----------------------------------------------------------------------------- the paper's BOS swap


def test_paper_bos_swap_overwrites_the_clean_column_without_rescaling(ds, mover):
    """bos_column_swap_hooks: the BOS column of every listed head comes from the clean,
    unhooked run with rows a and b exchanged, even downstream of another swapped head; the
    other entries are the run's own (rows are not rescaled); other heads are untouched."""
    tokens = ds.tokens[:6]
    names = [hook_name("pattern", L) for L in range(2)]
    _, clean = capture(mover, tokens, names)
    both = [(0, 0), (1, 0)]
    _, swapped = capture(mover, tokens, names, fwd_hooks=bos_column_swap_hooks(mover, tokens, both, 4, 9))
    for L, h in both:
        want = clean[names[L]][:, h, :, 0].clone()
        want[:, [4, 9]] = want[:, [9, 4]]
        assert torch.allclose(swapped[names[L]][:, h, :, 0], want, atol=1e-6)
    assert not torch.allclose(clean[names[0]][:, 0, 4, 0], clean[names[0]][:, 0, 9, 0])  # it can fail
    # layer 0 sees no upstream change: its non-BOS entries are the clean ones, so the swapped
    # rows no longer sum to one (no rescaling)
    assert torch.allclose(swapped[names[0]][:, 0, 4, 1:], clean[names[0]][:, 0, 4, 1:])
    assert (swapped[names[0]][:, 0, 4].sum(-1) - 1).abs().max() > 1e-3
    assert torch.equal(swapped[names[0]][:, 1], clean[names[0]][:, 1])  # head 0.1 untouched
    # a == b is a no-op; hooks built for one batch refuse another
    noop = mover.run_with_hooks(tokens, fwd_hooks=bos_column_swap_hooks(mover, tokens, both, 4, 4))
    assert torch.allclose(noop, mover(tokens), atol=1e-5)
    with pytest.raises(ValueError, match="build the hooks from the tokens"):
        mover.run_with_hooks(ds.tokens[:3], fwd_hooks=bos_column_swap_hooks(mover, tokens, both, 4, 9))
    with pytest.raises(IndexError, match="outside"):
        bos_column_swap_hooks(mover, tokens, both, 4, 11)


def test_both_swapped_takes_the_bos_column_from_the_unhooked_run(ds, mover):
    """In "both swapped" the position swap runs too, but the BOS column still comes from the
    clean run without hooks (the paper's code), not from the position-swapped run."""
    tokens = ds.tokens[:6]
    name = hook_name("pattern", 1)
    _, clean = capture(mover, tokens, [name])
    hooks = swap_pos_embed_hooks(2, 4) + bos_column_swap_hooks(mover, tokens, [(1, 0)], 2, 4)
    _, both = capture(mover, tokens, [name], fwd_hooks=hooks)
    want = clean[name][:, 0, :, 0].clone()
    want[:, [2, 4]] = want[:, [4, 2]]
    assert torch.allclose(both[name][:, 0, :, 0], want, atol=1e-6)


# ----------------------------------------------------------------------------- per-prompt rows


def test_per_prompt_head_and_resid_effects_equal_the_sweeps(ds, mover):
    from helpers import patch_resid_by_position
    from helpers.cases.acronyms import head_patch_effects, resid_patch_effects

    sub = ds.subset(range(12))
    bad = sub.corrupt("current word", 2, seed=1)
    metric = letter_metric(sub, 2)
    clean = metric(mover(sub.tokens)).item()
    sweep = patch_heads(mover, sub.tokens, bad, metric) - clean
    per = head_patch_effects(mover, sub, bad, 2, ["1.0", "0.1"], batch_size=5)
    assert per["1.0"].shape == (12,)
    assert per["1.0"].mean().item() == pytest.approx(sweep[1, 0].item(), abs=1e-3)
    assert per["0.1"].mean().item() == pytest.approx(sweep[0, 1].item(), abs=1e-3)
    assert per["1.0"].mean() < -5  # the planted mover: the check can fail
    at = patch_heads(mover, sub.tokens, bad, metric, positions="C2", named_positions=sub.positions) - clean
    per_c2 = head_patch_effects(mover, sub, bad, 2, ["0.0"], position="C2")
    assert per_c2["0.0"].mean().item() == pytest.approx(at[0, 0].item(), abs=1e-3)
    resid = patch_resid_by_position(mover, sub.tokens, bad, metric) - clean
    for layer, col in ((1, 4), (0, 9)):
        r = resid_patch_effects(mover, sub, bad, 2, layer, col, batch_size=7)
        assert r.mean().item() == pytest.approx(resid[layer, col].item(), abs=1e-3)
    with pytest.raises(ValueError, match="shape of the clean"):
        head_patch_effects(mover, sub, bad[:3], 2, ["1.0"])
    with pytest.raises(KeyError, match="unknown position"):
        head_patch_effects(mover, sub, bad, 2, ["1.0"], position="C9")


def test_add_back_values_equal_the_circuit_evaluator(ds, mover):
    from helpers.cases.acronyms import add_back_values

    sub = ds.subset(range(10))
    means = head_means(mover, sub.corrupted_base(seed=1))
    order = [(1, 0), (0, 1)]
    values = add_back_values(mover, sub, means, order, batch_size=4)
    assert values.shape == (3, 10, 3)
    for i in (1, 2, 3):
        ev = CircuitEvaluator(mover, sub.tokens, letter_metric(sub, i), means, {h: None for h in order})
        assert values[:, :, i - 1].mean(1).tolist() == pytest.approx(ev.add_back(order), abs=1e-3)
    assert values[1, :, 0].mean() - values[0, :, 0].mean() > 5  # restoring the mover matters


def test_corrupted_share_counts_changed_prompts(ds):
    from helpers.cases.acronyms import corrupted_share

    assert corrupted_share(ds, "previous words", 1) == 0.0  # BOS "The": the same everywhere
    assert corrupted_share(ds, "previous letters", 1) == 0.0  # " (": the same everywhere
    for kind, letter in (("current word", 2), ("previous letters", 3)):
        bad = ds.corrupt(kind, letter, seed=1)
        by_hand = sum(not torch.equal(bad[j], ds.tokens[j]) for j in range(len(ds))) / len(ds)
        assert corrupted_share(ds, kind, letter, seed=1) == pytest.approx(by_hand)
        assert 0.5 < by_hand <= 1


def test_positional_conditions_per_prompt_and_attention_shift(ds, mover):
    from helpers.cases.acronyms import CONDITIONS, attention_shift, positional_conditions

    sub = ds.subset(range(8))
    per = positional_conditions(mover, sub, ["1.0"], pair=(1, 2), watch=["1.0"], per_prompt=True,
                                batch_size=3)
    assert len(per) == len(CONDITIONS) * 3 * 8 and sorted(set(per["prompt"])) == list(range(8))
    mean = positional_conditions(mover, sub, ["1.0"], pair=(1, 2), watch=["1.0"])
    again = per.drop(columns="prompt").groupby(["swap", "condition", "letter", "head"], sort=False).mean()
    assert np.allclose(again["to C1"].to_numpy(), mean["to C1"].to_numpy(), atol=1e-6)
    assert np.allclose(again["logit diff."].to_numpy(), mean["logit diff."].to_numpy(), atol=1e-4)
    # the planted head finds C1 by its position marker: the position swap sends it to C2
    shift = attention_shift(per, condition="positions swapped", head="1.0")
    assert shift.shape == (8,) and shift.mean() < -0.9
    assert attention_shift(per, condition="BOS swapped", head="1.0").abs().max() < 1e-4
    with pytest.raises(ValueError, match="condition must be"):
        attention_shift(per, condition="clean", head="1.0")
    with pytest.raises(KeyError, match="watched"):
        attention_shift(per, condition="BOS swapped", head="0.0")


# ----------------------------------------------------------------------------- figures, tables


def test_facet_heatmap_and_most_negative_table():
    from helpers.cases.acronyms import POSITION_NAMES, facet_heatmap, most_negative_table

    a, b = torch.zeros(12, 12), torch.zeros(12, 12)
    a[8, 11], b[5, 8], b[1, 0] = -2.0, -0.6, -0.1
    fig = facet_heatmap({"letter 2": a, "letter 3": b}, title="t", marked={"movers": ["8.11"]})
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 2 and heat[0].zmin == -2.0 and heat[1].zmax == 2.0
    pos = facet_heatmap({"letter 1": torch.zeros(12, 11)}, title="t", positions=POSITION_NAMES)
    assert list(pos.data[0].x)[2] == "2: C1"
    with pytest.raises(ValueError, match="position names"):
        facet_heatmap({"x": torch.zeros(12, 10)}, title="t", positions=POSITION_NAMES)
    table = most_negative_table({"exp": {"letter 2": a, "letter 3": b}}, k=2)
    assert table.loc[("exp", "letter 2"), "#1"] == "8.11 -2.00"
    assert table.loc[("exp", "letter 3"), "#2"] == "1.0 -0.10"


def test_successor_comparison_verdicts_from_given_effects(ds, mover):
    from helpers.cases.acronyms import successor_comparison

    sub = ds.subset(range(20))
    g = torch.Generator().manual_seed(0)
    noise = lambda m: m + 0.01 * torch.randn(20, generator=g)  # noqa: E731
    movers = {"8.11": noise(-2.0), "9.9": noise(-0.5), "10.10": noise(-1.0), "11.4": noise(-0.8)}
    effects = {("current word", 2): {"9.1": noise(-0.01), **movers},
               ("current word", 3): {"9.1": noise(-1.5), **movers}}
    table = successor_comparison(mover, sub, letters=(2, 3), corruptions=("current word",),
                                 effects=effects).set_index("letter")
    assert table.loc[2, "weakest mover"] == "9.9" and table.loc[2, "9.1 smaller"] == True  # noqa: E712
    assert table.loc[3, "9.1 smaller"] == False  # noqa: E712
    # letter 1's previous letters change no prompt: skipped, computed otherwise
    computed = successor_comparison(mover, sub, letters=(1, 2), corruptions=("current word", "previous letters"),
                                    successor="0.1", movers=["1.0", "1.1"])
    assert list(computed["letter"]) == [1, 2, 2] and (computed["share corrupted"] > 0).all()
    cw = computed[computed["corruption"] == "current word"]
    # the planted mover matters, 1.1 does not: the weakest "mover" is 1.1, not smaller than 0.1
    assert set(cw["weakest mover"]) == {"1.1"}


# ----------------------------------------------------------------------------- scorecard


def _paper_results(n=64):
    """Per-prompt results at the paper's values (small spread), for the scorecard."""
    from helpers.cases import acronyms as acr

    R = acr.ACRONYMS
    g = torch.Generator().manual_seed(0)
    around = lambda m: m + 0.05 * torch.randn(n, generator=g)  # noqa: E731
    curves = torch.stack([
        torch.stack([around(R[k][i].value) for i in (1, 2, 3)], 1)
        for k in ("all_ablated_ld", "only_811_ld", "only_811_ld", "only_811_ld", "movers_ld",
                  "movers_ld", "movers_ld", "movers_ld", "circuit_ld")])
    head_rows = {i: {f"{L}.{H}": around(R[key][i].value if i in R[key] else -0.1)
                     for key, (L, H), _ in acr.HEAD_PATCH_ROWS} for i in (1, 2, 3)}
    prev = {(f"{L}.{H}", w): around(R[key].value) for key, (L, H), w, _ in acr.PREVIOUS_WORD_ROWS}
    ranking = ["8.11", "10.10", "11.4", "9.9"] + [f"{L}.{H}" for L in range(12) for H in range(12)
                                                   if f"{L}.{H}" not in ("8.11", "10.10", "11.4", "9.9")]
    return {
        "circuit_heads": 8, "accuracy3_candidates": torch.ones(n, dtype=torch.bool),
        "clean": torch.stack([around(R["clean_ld"][i].value) for i in (1, 2, 3)], 1),
        "curves": curves, "attention_811": {i: around(R["attn_811_to_ci"][i].value) for i in (1, 2, 3)},
        "head_rows": head_rows, "prev_rows": prev, "resid_c3": around(-6.0),
        "bos_shift": -0.06 + 0.01 * torch.randn(n, generator=g),
        "pos_shift": 0.005 * torch.randn(n, generator=g), "ranking": ranking,
    }


def test_scorecard_holds_at_the_paper_and_fails_at_every_null():
    from helpers.cases.acronyms import build_scorecard
    from helpers.scorecard import DIFFERS, HOLDS, NOT_APPLICABLE, NOT_RUN

    card = build_scorecard(_paper_results(), stand_in=False)
    graded = [(r.quantity, v) for r, v in zip(card.rows, card.verdicts()) if r.role == "graded"]
    assert len(graded) >= 30
    assert all(v == HOLDS for _, v in graded), [g for g in graded if g[1] != HOLDS]
    assert {r.role for r in card.rows} == {"graded", "data", "info"}
    null = card.null_run()
    assert all(v == DIFFERS for r, v in zip(null.rows, null.verdicts()) if r.role == "graded")
    # the stand-in: graded rows n/a, the data check holds
    stand_in = build_scorecard(_paper_results(), stand_in=True)
    for r, v in zip(stand_in.rows, stand_in.verdicts()):
        assert v == (NOT_APPLICABLE if r.role == "graded" else v)
        if r.role == "data":
            assert v == HOLDS
    # nothing run: every row says so, none fails
    empty = build_scorecard({}, stand_in=False)
    assert all(v in (NOT_RUN, "for comparison") for v in empty.verdicts())
    # a wrong sign on 9.9 is caught
    bad = _paper_results()
    bad["head_rows"][1]["9.9"] = -bad["head_rows"][1]["9.9"]
    card = build_scorecard(bad, stand_in=False)
    row = [v for r, v in zip(card.rows, card.verdicts()) if r.quantity.startswith("head patching 9.9, letter 1")]
    assert row == [DIFFERS]
