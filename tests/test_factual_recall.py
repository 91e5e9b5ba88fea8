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
