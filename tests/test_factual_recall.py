"""Factual recall chapter: data invariants on GPT-2's real tokenizer, planted-mechanism tests
of causal tracing and attention knockout, the head-gain fit on synthetic data, bad inputs."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest_patching import planted_task  # noqa: E402

from helpers import (  # noqa: E402
    attention_knockout,
    causal_trace,
    fit_head_gains,
    gpt2_tokenizer,
    layer_window,
    logit_lens,
    noise_scale,
    scale_hooks,
    trace_by_role,
)
from helpers.cases import factual_recall as fr  # noqa: E402

TOK = gpt2_tokenizer()


# ---------------------------------------------------------------- data


def test_capital_task_has_225_distinct_prompts_with_correct_positions():
    ps = fr.make_capital_prompts()
    assert len(ps) == fr.MAX_CAPITAL_PROMPTS == 225 == len(set(ps.prompts))
    is_, cap, of = TOK.encode(" is")[0], TOK.encode(" capital")[0], TOK.encode(" of")[0]
    for i in range(len(ps)):
        c = ps.fields["country"][i]
        row = ps.tokens[i]
        assert row[ps.positions["COUNTRY"][i]] == TOK.encode(" " + fr.CAPITALS[c][0])[0] == ps.wrong[i]
        assert ps.answers[i] == TOK.encode(" " + fr.CAPITALS[c][1])[0]
        assert row[ps.positions["END"][i]] == is_
        assert row[ps.positions["CAPITAL"][i]] == cap and row[ps.positions["OF"][i]] == of
        assert ps.positions["SUBJ_FIRST"][i] == ps.positions["SUBJ_LAST"][i] == ps.positions["COUNTRY"][i]
        assert ps.prompts[i].endswith(f"the capital of {fr.CAPITALS[c][0]} is")


def test_capital_task_refuses_more_prompts_than_exist():
    with pytest.raises(ValueError, match="at most 225"):
        fr.make_capital_prompts(226)


def test_country_flip_differs_exactly_at_the_country():
    ps = fr.make_capital_prompts(40, seed=3)
    flip = fr.flip_country(ps, seed=4)
    assert flip.tokens.shape == ps.tokens.shape
    diff = flip.tokens != ps.tokens
    expected = torch.zeros_like(diff)
    expected[torch.arange(len(ps)), ps.positions["COUNTRY"]] = True
    assert torch.equal(diff, expected)
    assert (flip.answers != ps.answers).all()


def test_one_shot_prompts_follow_the_authors_format():
    ps = fr.make_capital_prompts(30, shot=1, seed=1)
    for p, dc, city, c in zip(ps.prompts, ps.fields["demo_country"], ps.fields["demo_city"], ps.fields["country"]):
        assert p.startswith(f"The capital of {fr.CAPITALS[dc][0]} is {city}. ") and dc != c
        assert city == fr.CAPITALS[dc][1]


def test_lead_ins_are_the_authors_fifteen():
    # NC_TEMPLATES of trestad/Factual-Recall-Mechanism, easy_transformer/fact_dataset.py
    assert len(fr.LEAD_INS) == len(set(fr.LEAD_INS)) == 15
    assert fr.LEAD_INS[0] == "It's crucial to know that"
    assert fr.LEAD_INS[9] == "As we all know," and fr.LEAD_INS[-1] == "To emphasize,"
    ps = fr.make_capital_prompts()
    assert {t for t in ps.fields["template"]} == set(range(15))
    assert any(p.startswith("In case you didn't know, the capital of") for p in ps.prompts)


def test_rome_facts_ship_with_source_and_licence_and_single_token_answers():
    facts = fr.load_known_facts()
    assert len(facts) == 1209
    folder = Path(fr.__file__).parent / "data" / "rome-known-facts"
    assert (folder / "LICENSE").exists() and (folder / "SOURCE.md").exists()
    ps, dropped = fr.rome_fact_set()
    assert len(ps) + dropped == 1209
    for i in range(0, len(ps), 37):
        a, b = int(ps.positions["SUBJ_FIRST"][i]), int(ps.positions["SUBJ_LAST"][i])
        span = TOK.decode(ps.tokens[i, a : b + 1].tolist())
        assert ps.fields["subject"][i].strip() in span.strip() or span.strip() in ps.fields["subject"][i]
        assert b < int(ps.lengths[i]) - 1
    counts = fr.relation_counts(ps)
    assert counts["facts"].sum() == len(ps) and counts["facts"].iloc[0] == 50


def test_one_shot_facts_prefix_a_fact_of_the_same_relation():
    pool, _ = fr.rome_fact_set()
    ps = pool.subset(range(0, 300, 15))
    one = fr.one_shot_facts(ps, pool, seed=0)
    assert len(one) == len(ps) and torch.equal(one.answers, ps.answers)
    for i in range(len(ps)):
        j = pool.fields["known_id"].index(one.fields["demo_known_id"][i])
        assert one.prompts[i] == f"{pool.prompts[j]} {pool.fields['attribute'][j]}. {ps.prompts[i]}"
        assert pool.fields["relation"][j] == ps.fields["relation"][i]
        assert pool.fields["subject"][j] != ps.fields["subject"][i]
        # the subject span points at the query's subject, after the demonstration
        a, b = int(one.positions["SUBJ_FIRST"][i]), int(one.positions["SUBJ_LAST"][i])
        demo_len = len(TOK.encode(f"{pool.prompts[j]} {pool.fields['attribute'][j]}."))
        assert a >= demo_len and int(one.positions["END"][i]) == int(one.lengths[i]) - 1
        span = TOK.decode(one.tokens[i, a : b + 1].tolist()).strip()
        subj = ps.fields["subject"][i]
        assert subj in span and len(span) < len(subj) + 6
    lone = pool.subset([0])
    with pytest.raises(ValueError, match="no other fact of relation"):
        fr.one_shot_facts(lone, lone)


def test_bad_facts_give_clear_errors():
    good = {"prompt": "Beats Music is owned by", "subject": "Beats Music", "attribute": "Apple"}
    with pytest.raises(ValueError, match="must be one token"):
        fr.make_fact_set([{**good, "attribute": "Apple Music Inc"}])
    with pytest.raises(ValueError, match="not in the prompt"):
        fr.make_fact_set([{**good, "subject": "Spotify"}])
    with pytest.raises(ValueError, match="at least one"):
        fr.make_fact_set([])


# ---------------------------------------------------------------- causal tracing


@pytest.fixture(scope="module")
def task():
    return planted_task()


def _trace(task, kind, **kw):
    n = 2
    return causal_trace(task.model, task.clean[:n], task.answer[:n], torch.tensor([1] * n),
                        torch.tensor([1] * n), lengths=task.lengths[:n], kind=kind,
                        n_samples=4, noise=30.0, **kw)


def test_restoring_the_planted_state_recovers_the_answer(task):
    r = _trace(task, "resid")
    assert (r.clean > 0.99).all() and (r.corrupted < 0.5).all()
    # head 2.0 reads position 1 in layer 2: the clean state there (after layer 1) is enough
    assert torch.allclose(r.scores[:, 1, 1], r.clean, atol=1e-3)
    # the last layer's state at the last token is the whole output
    last = task.lengths[:2] - 1
    assert torch.allclose(r.scores[torch.arange(2), 2, last], r.clean, atol=1e-5)


def test_restoring_a_state_nothing_reads_does_nothing(task):
    # The last layer's hidden state at a position before the last token is computed by the
    # trace (it lies after the subject) but nothing downstream reads it: only the last
    # token's logits are scored. Restoring it must leave the noised probability unchanged;
    # a restoration leaking into another row or position would bring the answer back.
    r = _trace(task, "resid")
    m = _trace(task, "mlp", window=1)
    for i in range(2):
        last = int(task.lengths[i]) - 1
        for t in (r, m):
            row = t.scores[i, 2, 1:last]
            assert not row.isnan().any()
            assert torch.allclose(row, t.corrupted[i].expand_as(row), atol=1e-5)
        # ... while the same layer's state at the last token brings everything back
        assert abs(r.scores[i, 2, last] - r.clean[i]) < 1e-5
        assert r.corrupted[i] < r.clean[i] - 0.5
    ie = trace_by_role(r)
    assert ie.shape == (6, 3)


def test_mlp_and_attention_windows(task):
    assert list(layer_window(5, 10, 48)) == list(range(0, 10))
    assert list(layer_window(20, 10, 48)) == list(range(15, 25))
    assert list(layer_window(0, 1, 3)) == [0]
    m = _trace(task, "mlp", window=3)  # every layer's MLP at the subject: everything the MLPs added
    a = _trace(task, "attn", window=1)
    # restoring attention at the last token of the last layer brings back the planted head's output
    last = task.lengths[:2] - 1
    assert (a.scores[torch.arange(2), 2, last] > a.corrupted + 0.3).all()
    assert m.scores.shape == a.scores.shape == (2, 3, task.clean.shape[1])


def test_tracing_bad_inputs(task):
    with pytest.raises(ValueError, match="kind"):
        _trace(task, "neurons")
    with pytest.raises(ValueError, match="before its last token"):
        causal_trace(task.model, task.clean[:1], task.answer[:1], torch.tensor([8]), torch.tensor([8]))
    with pytest.raises(ValueError, match="no token"):
        noise_scale(task.model, task.clean[:1], torch.zeros_like(task.clean[:1], dtype=torch.bool))


# ---------------------------------------------------------------- attention knockout


def test_knocking_out_the_planted_edge_removes_the_answer(task):
    n, seq = 4, task.clean.shape[1]
    to_name = torch.zeros(n, seq, dtype=torch.bool)
    to_name[:, 1] = True
    to_other = torch.zeros(n, seq, dtype=torch.bool)
    to_other[:, 3] = True
    res = attention_knockout(task.model, task.clean[:n], task.answer[:n], to_name,
                             lengths=task.lengths[:n], window=1, batch_tokens=20)
    sure = res.clean > 0.9  # the planted model (non-zero biases) is sure on most prompts
    assert sure.sum() >= 2
    assert (res.knocked[sure, 2] < 0.25).all()  # layer 2 holds the planted head
    other = attention_knockout(task.model, task.clean[:n], task.answer[:n], to_other,
                               lengths=task.lengths[:n], window=1)
    assert (other.relative_change[:, 2].abs() < 0.05).all()
    # batching does not change the result
    assert torch.allclose(res.knocked, attention_knockout(
        task.model, task.clean[:n], task.answer[:n], to_name, lengths=task.lengths[:n],
        window=1).knocked, atol=1e-5)


# ---------------------------------------------------------------- head gains, lens, scaling


def test_fit_head_gains_recovers_known_gains():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 4, 32, generator=g)
    gains = torch.tensor([2.0, 0.0, -1.0, 0.5])
    b = torch.randn(32, generator=g)
    y = b + torch.einsum("k,nkd->nd", gains, X)
    fit = fit_head_gains(X, y, ["a", "b", "c", "d"])
    assert torch.allclose(fit.gains, gains, atol=1e-5) and fit.r2 > 0.999999
    assert torch.allclose(fit.intercept, b, atol=1e-4)
    noisy = fit_head_gains(X, y + 3 * torch.randn(50, 32, generator=g))
    assert 0 < noisy.r2 < 0.9 and torch.allclose(noisy.gains, gains, atol=0.3)
    with pytest.raises(ValueError, match=r"\[n, k, d\]"):
        fit_head_gains(X[:, 0], y)


def test_head_outputs_sum_to_the_attention_output(task):
    from helpers import capture, hook_name
    from helpers.tracing import head_outputs

    m = task.model
    x, pos = task.clean[:3], task.end[:3]
    labels = [f"{L}.{h}" for L in (1, 2) for h in range(m.cfg.n_heads)]
    out, extra = head_outputs(m, x, pos, labels, extra=[hook_name("attn_out", 2)])
    assert out.shape == (3, len(labels), m.cfg.d_model)
    total = out[:, 4:].sum(1) + m.b_O[2]
    assert torch.allclose(total, extra[hook_name("attn_out", 2)], atol=1e-4)
    _, acts = capture(m, x, [hook_name("attn_out", 1)])
    ref = acts[hook_name("attn_out", 1)][torch.arange(3), pos]
    assert torch.allclose(out[:, :4].sum(1) + m.b_O[1], ref, atol=1e-4)
    with pytest.raises(ValueError, match="no such head"):
        head_outputs(m, x, pos, ["5.0"])


def test_logit_lens_last_row_is_the_model_output(task):
    probs, ranks = logit_lens(task.model, task.clean[:1, :8], task.answer[:1])
    full = task.model(task.clean[:1, :8])[0, -1].softmax(-1)[task.answer[0]]
    assert probs.shape == (4, 1) and abs(probs[-1, 0].item() - full.item()) < 1e-5
    assert ranks[-1, 0] == 0


def test_scale_hooks(task):
    m = task.model
    x = task.clean[:2, :8]
    base = m(x)
    assert torch.allclose(m.run_with_hooks(x, fwd_hooks=scale_hooks(m, {"2.0": 1.0, "MLP 1": 1.0})), base, atol=1e-5)
    zero = m.run_with_hooks(x, fwd_hooks=scale_hooks(m, {"2.0": 0.0}))
    assert not torch.allclose(zero, base, atol=1e-3)
    with pytest.raises(ValueError, match="no such head"):
        scale_hooks(m, {"7.0": 0.5})


# ---------------------------------------------------------------- fast tracing, new analyses


@pytest.mark.parametrize("kind,window", [("resid", 1), ("mlp", 1), ("mlp", 2), ("attn", 3)])
def test_fast_tracing_equals_the_plain_reference(task, kind, window):
    # The planted model has non-zero biases and LayerNorm parameters; batch_tokens=40
    # forces several chunks per start layer (several start positions per chunk).
    n = 3
    first, last = torch.tensor([1, 0, 2]), torch.tensor([2, 1, 3])
    kw = dict(lengths=task.lengths[:n], kind=kind, window=window, n_samples=3, noise=3.0, seed=2)
    plain = causal_trace(task.model, task.clean[:n], task.answer[:n], first, last, method="plain", **kw)
    fast = causal_trace(task.model, task.clean[:n], task.answer[:n], first, last,
                        batch_tokens=40, **kw)
    assert torch.equal(plain.scores.isnan(), fast.scores.isnan())
    assert torch.allclose(plain.scores.nan_to_num(), fast.scores.nan_to_num(), atol=1e-4)
    assert torch.allclose(plain.corrupted, fast.corrupted, atol=1e-5)
    assert torch.allclose(plain.clean, fast.clean, atol=1e-6)
    # the noise moved something, so equality is not the trivial one
    assert (plain.scores.nan_to_num() - plain.corrupted[:, None, None]).abs().max() > 1e-3


def test_windowed_kinds_need_a_window(task):
    with pytest.raises(ValueError, match="needs a window"):
        causal_trace(task.model, task.clean[:1], task.answer[:1], [1], [1], kind="mlp")
    with pytest.raises(ValueError, match="window must be"):
        causal_trace(task.model, task.clean[:1], task.answer[:1], [1], [1], kind="mlp", window=9)
    with pytest.raises(ValueError, match="method"):
        causal_trace(task.model, task.clean[:1], task.answer[:1], [1], [1], method="quick")


def test_role_values_average_to_trace_by_role(task):
    from helpers.tracing import role_values

    r = _trace(task, "resid")
    per = role_values(r)
    assert per.shape == (2, 6, 3)
    assert torch.allclose(per.nanmean(0).nan_to_num(), trace_by_role(r).nan_to_num())
    # one-token subjects (1..1) have no first or middle subject token
    assert per[:, 0].isnan().all() and per[:, 1].isnan().all() and not per[:, 2].isnan().any()


def test_rome_noise_scale_is_over_every_subjects_tokens(task):
    from helpers.tracing import rome_noise_scale

    subjects = ["Beats Music", "Apple A5", "Paris"]
    ids = [i for s in subjects for i in TOK.encode(s)]
    want = 3 * task.model.W_E[torch.tensor(ids)].std()
    assert abs(rome_noise_scale(task.model, subjects, TOK) - float(want)) < 1e-6
    with pytest.raises(ValueError, match="at least one"):
        rome_noise_scale(task.model, [], TOK)


def test_neuron_effects_sum_to_the_mlp_direct_effect(task):
    from helpers.tracing import direct_effects, neuron_direct_effects

    m = task.model
    x, pos, ans = task.clean[:4], task.end[:4], task.answer[:4]
    mlp = direct_effects(m, x, pos, ans, ["MLP 2", "2.0"])
    neurons = neuron_direct_effects(m, x, pos, ans, 2)
    _, acts = __import__("helpers").capture(m, x, ["ln_final.hook_scale"])
    scale = acts["ln_final.hook_scale"][torch.arange(4), pos]
    b = m.b_out[2] - m.b_out[2].mean()
    d = (m.W_U[:, ans] - m.W_U.mean(-1, keepdim=True)).T
    b_term = ((b[None] * d).sum(-1) / scale[:, 0]).float()
    assert torch.allclose(neurons.sum(1) + b_term, mlp[:, 0], atol=1e-3)
    # the planted mover 2.0 writes the answer: a large positive direct effect
    assert (mlp[:, 1] > 1).all()
    with pytest.raises(ValueError, match="no such head"):
        direct_effects(m, x, pos, ans, ["7.1"])


def test_gain_by_scaling_reads_one_for_a_copy_and_zero_upstream(task):
    from helpers import hook_name
    from helpers.tracing import gain_by_scaling

    m = task.model
    x, pos = task.clean[:4], task.end[:4]
    # the layer's attention output contains the head's output once: g = 1
    same = gain_by_scaling(m, x, pos, "2.0", hook_name("attn_out", 2))
    assert torch.allclose(same, torch.ones(4), atol=1e-4)
    # an MLP before the head cannot respond to it: g = 0
    before = gain_by_scaling(m, x, pos, "2.0", hook_name("mlp_out", 1), factor=0.5)
    assert torch.allclose(before, torch.zeros(4), atol=1e-5)
    with pytest.raises(ValueError, match="differ from 1"):
        gain_by_scaling(m, x, pos, "2.0", hook_name("mlp_out", 2), factor=1)


def test_logit_lens_reads_resid_mid_before_the_mlp(task):
    from helpers import capture, hook_name

    m = task.model
    x = task.clean[:2, :8]
    pre, _ = logit_lens(m, x, task.answer[:2])
    mid, _ = logit_lens(m, x, task.answer[:2], site="resid_mid")
    assert torch.allclose(pre[-1], mid[-1])  # the last row is the output either way
    _, acts = capture(m, x, [hook_name("resid_mid", 1)])
    lg = m.unembed(m.ln_final(acts[hook_name("resid_mid", 1)][:, -1:]))[:, 0]
    want = lg.softmax(-1)[torch.arange(2), task.answer[:2]]
    assert torch.allclose(mid[1], want, atol=1e-5) and not torch.allclose(mid[1], pre[1])
    with pytest.raises(ValueError, match="site"):
        logit_lens(m, x, task.answer[:2], site="resid_post")


def test_decode_intercept_finds_the_planted_direction(task):
    m = task.model
    t = int(task.answer[0])
    vec = m.W_U[:, t] - m.W_U.mean(-1)
    pct, best = fr.decode_intercept(m, vec, [t, int(task.wrong[0])])
    assert pct[0] > 0.999 and best[0] == t


def test_split_halves_is_a_seeded_partition():
    a, b = fr.split_halves(11, seed=3)
    assert sorted(a + b) == list(range(11)) and len(a) == 6 and not set(a) & set(b)
    assert fr.split_halves(11, seed=3) == (a, b) != fr.split_halves(11, seed=4)
    with pytest.raises(ValueError, match="at least 2"):
        fr.split_halves(1)


def _measured(value_of):
    keys = ["mlp_mid_ie", "mlp_mid_ie_next", "attn_upper_ie", "attn_lower_ie", "ko_subj_lower",
            "ko_subj_upper", "ko_rel_lower", "abs_causal_gain", "intercept_percentile",
            "map_margin", "map_margin_resid", "dp_suppressors", "dp_random", "dp_mid",
            "specificity", "lens_drop", "dp_suppressors_rome", "mlp0_ie", "dp_neurons"]
    m = {k: value_of(k) for k in keys}
    m.update({k + "_se": 0.001 for k in keys})
    heads = [f"{L}.{h}" for L in range(12) for h in range(12)]
    m.update(movers_attending=3, map_share=0.8, n_capital_prompts=225, n_rome_facts=1209,
             head_ranking=["9.8"] + [h for h in heads if h != "9.8"])
    return m


def test_scorecard_rows_fail_at_their_nulls_and_can_pass():
    good = {"mlp_mid_ie": 0.2, "mlp_mid_ie_next": 0.05, "attn_upper_ie": 0.2,
            "attn_lower_ie": 0.01, "ko_subj_lower": -1, "ko_subj_upper": -20,
            "ko_rel_lower": -15, "abs_causal_gain": 0.6, "intercept_percentile": 0.97,
            "map_margin": 2.0, "map_margin_resid": 0.5, "dp_suppressors": 0.05,
            "dp_random": 0.001, "dp_mid": 0.002, "specificity": -0.5, "lens_drop": 0.1,
            "dp_suppressors_rome": 0.03, "mlp0_ie": 0.3, "dp_neurons": 0.01}
    card = fr.scorecard(_measured(good.get), stand_in=False)
    graded = [r for r in card.rows if r.role == "graded"]
    assert len(graded) >= 15
    assert all(v.startswith("✓") for r, v in zip(card.rows, card.verdicts()) if r.role != "info")
    null = card.null_run()
    assert all(v.startswith("✗") for r, v in zip(null.rows, null.verdicts()) if r.role == "graded")
    # each anti-overconfidence control can fail on its own: random zeroing as good
    bad = fr.scorecard(_measured(lambda k: good["dp_suppressors"] if k == "dp_random" else good[k]),
                       stand_in=False)
    row = [v for r, v in zip(bad.rows, bad.verdicts()) if "3 random" in r.quantity]
    assert row and not row[0].startswith("✓")
    stand = fr.scorecard(_measured(good.get), stand_in=True)
    assert all(v == "n/a (stand-in)" for r, v in zip(stand.rows, stand.verdicts()) if r.role == "graded")


def test_capital_map_reads_each_countrys_mean_output(tiny_model):
    from helpers import capture, hook_name

    m = tiny_model
    ps = fr.make_capital_prompts(30, seed=5)
    out = fr.capital_map(m, ps, 1)
    k = len(out["countries"])
    assert out["mlp"]["matrix"].shape == (k, k) == out["resid_mid"]["matrix"].shape
    _, acts = capture(m, ps.tokens, [hook_name("mlp_out", 1)])
    at_end = acts[hook_name("mlp_out", 1)][torch.arange(len(ps)), ps.positions["END"]]
    c0 = sorted(set(ps.fields["country"]))[0]
    rows = torch.tensor(ps.fields["country"]) == c0
    cap = TOK.encode(" " + fr.CAPITALS[c0][1])[0]
    want = at_end[rows].mean(0) @ (m.W_U[:, cap] - m.W_U.mean(-1))
    assert abs(float(out["mlp"]["matrix"][0, 0]) - float(want)) < 1e-4
    mat = out["mlp_countries"]["matrix"]
    assert torch.allclose(out["mlp_countries"]["margin"],
                          mat.diagonal() - (mat.sum(1) - mat.diagonal()) / (k - 1), atol=1e-5)
    assert 0 <= out["mlp"]["share"] <= 1


def test_anti_overconfidence_is_held_out_and_its_deltas_are_real_ablations(tiny_model):
    m = tiny_model
    ps = fr.make_capital_prompts(16, seed=1)
    res = fr.anti_overconfidence(m, ps, k=2, mid_layer=0, n_random=2, n_neurons=2, seed=3)
    assert not set(res["choose"]) & set(res["score"]) and len(res["score"]) == 8
    order = res["de_last"].argsort()[:2].tolist()
    assert res["suppressors"] == [res["components"][i] for i in order]
    scored = ps.subset(res["score"])
    base = fr.lv_metrics(m, scored)["prob"]
    from helpers import scale_hooks

    zeroed = fr.lv_metrics(m, scored, fwd_hooks=scale_hooks(m, {c: 0.0 for c in res["suppressors"]}))
    assert torch.allclose(res["dp_suppressors"], zeroed["prob"] - base, atol=1e-6)
    for key in ("dp_random", "dp_mid", "dp_neurons", "specificity", "lens_drop"):
        assert res[key].shape == (8,) and not res[key].isnan().any()
    with pytest.raises(ValueError, match="mid_layer"):
        fr.anti_overconfidence(m, ps, mid_layer=m.cfg.n_layers - 1)
