"""Mean ablation and circuit evaluation (helpers.ablation) on a tiny planted GPT-2."""

import pytest
import torch

from conftest_patching import PLANTED, planted  # noqa: F401  (fixture)
from helpers import (
    CircuitEvaluator,
    LogitDiffMetric,
    all_heads,
    capture,
    circuit_score,
    head_means,
    hook_name,
    logit_diff,
    node_mask,
    run_with_mean_ablation,
)


def _ld(task):
    return LogitDiffMetric(task.answer, task.wrong, task.end)


def test_f_of_m_is_the_models_metric_exactly(planted):
    m = planted.model
    means = head_means(m, planted.reference)
    with torch.no_grad():
        expected = _ld(planted)(m(planted.clean)).item()
    # equal up to float rounding: circuit_score unembeds only the END rows (logits_at_positions)
    assert circuit_score(m, planted.clean, _ld(planted), means) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # the whole model as the circuit: nothing is outside it
    everything = {h: None for h in all_heads(m)}
    assert circuit_score(m, planted.clean, _ld(planted), means, circuit=everything) == pytest.approx(
        expected, rel=1e-6, abs=1e-6
    )
    # and the same as the plain metric on full logits when the metric is a bare callable
    bare = lambda lg: logit_diff(lg, planted.answer, planted.wrong, planted.end)  # noqa: E731
    assert circuit_score(m, planted.clean, bare, means) == expected


def test_means_of_the_prompt_itself_change_nothing(planted):
    m = planted.model
    one = planted.clean[:1]
    means = head_means(m, one)  # reference = the clean prompt
    ablate = torch.ones(1, one.shape[1], m.cfg.n_layers, m.cfg.n_heads, dtype=torch.bool)
    with torch.no_grad():
        plain = m(one)
    assert torch.allclose(run_with_mean_ablation(m, one, means, ablate), plain, atol=1e-6)
    # but means over other prompts do change it
    other = head_means(m, planted.reference[1:2])
    assert (run_with_mean_ablation(m, one, other, ablate) - plain).abs().max() > 1e-2


def test_group_means_are_per_group_position_means(planted):
    m = planted.model
    ref = planted.reference
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    means = head_means(m, ref, groups, batch_size=4)  # two batches
    _, acts = capture(m, ref, [hook_name("z", L) for L in range(m.cfg.n_layers)])
    z = torch.stack([acts[hook_name("z", L)] for L in range(m.cfg.n_layers)], 2)
    for g in (0, 1):
        expected = z[groups == g].mean(0)
        for i in (groups == g).nonzero().flatten():
            assert torch.allclose(means[i], expected, atol=1e-6)
    assert not torch.allclose(means[0], means[1], atol=1e-4)
    # the dict form and target groups
    as_dict = head_means(m, ref, {"a": torch.tensor([0, 2, 4]), "b": torch.tensor([1, 3, 5])}, target_groups=["b", "b", "a"])
    assert torch.allclose(as_dict[0], means[1], atol=1e-6) and torch.allclose(as_dict[2], means[0], atol=1e-6)
    # no groups: one mean for everyone
    pooled = head_means(m, ref)
    assert torch.allclose(pooled[3], z.mean(0), atol=1e-6)


def test_node_mask_per_prompt_positions(planted):
    m = planted.model
    b, s = planted.clean.shape
    circuit = {PLANTED: "END", (1, 2): [1, "END"], (0, 0): None}
    mask = node_mask(circuit, m, b, s, named_positions={"END": planted.end})
    assert mask[:, :, 2, 0].sum() == b and mask[torch.arange(b), planted.end, 2, 0].all()
    assert mask[:, :, 1, 2].sum() == 2 * b and mask[:, 1, 1, 2].all()
    assert mask[:, :, 0, 0].all()
    assert mask.sum() == b + 2 * b + b * s


def test_planted_circuit_is_faithful_and_its_complement_is_not(planted):
    m = planted.model
    metric = _ld(planted)
    means = head_means(m, planted.reference)
    named = {"END": planted.end}
    circuit = {PLANTED: "END"}
    f = CircuitEvaluator(m, planted.clean, metric, means, circuit, named_positions=named).faithfulness()
    assert f["F_M"] > 5
    assert f["ratio"] > 0.8 and f["gap"] < 0.2 * f["F_M"]
    # every other head at every position, but not the planted one: the answer is gone
    rest = {h: None for h in all_heads(m) if h != PLANTED}
    f_rest = circuit_score(m, planted.clean, metric, means, circuit=rest)
    assert abs(f_rest) < 0.2 * f["F_M"]
    # knocking the planted head out of the full model (at END) also kills it
    f_ko = circuit_score(m, planted.clean, metric, means, remove={PLANTED: planted.end})
    assert abs(f_ko) < 0.2 * f["F_M"]
    # knocking out an unimportant head barely matters
    f_ko_other = circuit_score(m, planted.clean, metric, means, remove=[(0, 1)])
    assert abs(f_ko_other - f["F_M"]) < 0.1 * f["F_M"]


def test_completeness_and_minimality(planted):
    m = planted.model
    metric = _ld(planted)
    means = head_means(m, planted.reference)
    named = {"END": planted.end}
    full = {h: None for h in all_heads(m)}
    # C = M: F(C \ K) = F(M \ K) for any K, so the completeness gap is 0
    c = CircuitEvaluator(m, planted.clean, metric, means, full, named_positions=named).completeness([(1, 1), PLANTED])
    assert c["gap"] < 1e-5 and abs(c["F_M_minus_K"]) < 0.5 * abs(circuit_score(m, planted.clean, metric, means))
    # the planted circuit plus one filler head: the filler is not minimal, the planted head is
    circuit = {PLANTED: "END", (0, 3): None}
    ev = CircuitEvaluator(m, planted.clean, metric, means, circuit, named_positions=named)
    planted_v = ev.minimality(PLANTED)
    filler_v = ev.minimality((0, 3))
    assert planted_v["score"] > 10 * filler_v["score"]
    assert planted_v["F_C_minus_K"] == pytest.approx(ev.F(circuit=True))
    # F(C) by the evaluator equals circuit_score; minimality's F(C \ K) is F(C \ K)
    assert ev.faithfulness()["F_C"] == pytest.approx(
        circuit_score(m, planted.clean, metric, means, circuit=circuit, named_positions=named)
    )
    mk = ev.minimality((0, 3), [PLANTED])
    assert mk["F_C_minus_K"] == pytest.approx(ev.F(circuit=True, remove=[PLANTED]))
    # the batched scores equal one-by-one F values
    assert ev.scores([[PLANTED], None], circuit=True) == pytest.approx(
        [ev.F(circuit=True, remove=[PLANTED]), ev.F(circuit=True)], abs=1e-5
    )
    # completeness with K = the planted head, from the class
    comp = ev.completeness([PLANTED])
    assert comp["F_M_minus_K"] == pytest.approx(ev.F(remove=[PLANTED]))


def test_k_nodes_are_the_circuit_positions_of_k(planted):
    """F(C \\ K) and F(M \\ K) ablate exactly the nodes they should (checked by hand-built masks)."""
    m = planted.model
    metric = _ld(planted)
    means = head_means(m, planted.reference)
    b, s = planted.clean.shape
    named = {"END": planted.end}
    circuit = {PLANTED: "END", (1, 1): [1, 3]}
    K = [(1, 1)]
    c = CircuitEvaluator(m, planted.clean, metric, means, circuit, named_positions=named).completeness(K)
    # F(M \ K): only head 1.1 at positions 1 and 3 ablated
    mk = torch.zeros(b, s, m.cfg.n_layers, m.cfg.n_heads, dtype=torch.bool)
    mk[:, [1, 3], 1, 1] = True
    expected_mk = metric(run_with_mean_ablation(m, planted.clean, means, mk)).item()
    assert c["F_M_minus_K"] == pytest.approx(expected_mk, abs=1e-5)
    # ablating 1.1 everywhere is a different number (so the positions matter here)
    mk_all = torch.zeros_like(mk)
    mk_all[:, :, 1, 1] = True
    assert abs(metric(run_with_mean_ablation(m, planted.clean, means, mk_all)).item() - expected_mk) > 1e-3
    # F(C \ K): everything ablated except the planted head at each prompt's END
    ck = torch.ones_like(mk)
    ck[torch.arange(b), planted.end, PLANTED[0], PLANTED[1]] = False
    expected_ck = metric(run_with_mean_ablation(m, planted.clean, means, ck)).item()
    assert c["F_C_minus_K"] == pytest.approx(expected_ck, abs=1e-5)
    assert c["gap"] == pytest.approx(abs(expected_ck - expected_mk), abs=1e-5)


def test_batched_circuit_scores_equal_one_by_one(planted):
    from helpers import circuit_scores

    m, A, B = planted.model, planted.clean, planted.corrupt
    metric = LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    means = head_means(m, B)
    circuit = {(1, 0): None, (0, 1): None}
    removals = [None, [(1, 0)], [(0, 1)], [(1, 0), (0, 1)], [(0, 0)]]
    one_by_one = [circuit_score(m, A, metric, means, circuit=circuit, remove=r) for r in removals]
    batched = circuit_scores(m, A, metric, means, removals, circuit=circuit, batch_tokens=1)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(x, 4) for x in one_by_one)) > 1  # the removals really differ
    batched_all = circuit_scores(m, A, metric, means, removals, circuit=circuit)
    assert batched_all == pytest.approx(one_by_one, abs=1e-5)
