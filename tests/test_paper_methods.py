"""Generic helpers added to follow Wang et al.'s methods exactly, each on a planted model:
the "% change" normalisation, path patching into keys, copy scores read in context,
minimality with per-head K sets, completeness with random and greedy K."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from conftest_patching import PLANTED, SPEC, boot, build_planted, name_ids, planted  # noqa: F401
from helpers import (
    CircuitEvaluator,
    LogitDiffMetric,
    activations_at,
    capture,
    circuit_score,
    copy_score,
    greedy_incompleteness,
    head_means,
    minimality_scores,
    normalized_metric,
    path_patch,
    path_patch_reference,
    percent_change,
    random_subsets,
    run_with_mean_ablation,
    top_heads,
)
from helpers.models import gpt2_tokenizer

# ----------------------------------------------------------------------------- normalisation


def test_percent_change_on_known_numbers():
    assert percent_change(1.5, 2.0) == pytest.approx(-25.0)
    assert percent_change(3.0, 2.0) == pytest.approx(50.0)
    assert percent_change(0.0, 4.0) == pytest.approx(-100.0)  # metric falls to zero
    assert percent_change(-1.0, -2.0) == pytest.approx(-50.0)  # sign of clean kept
    scores = torch.tensor([[2.0, 1.0], [float("nan"), 4.0]])
    out = percent_change(scores, 2.0)
    assert torch.allclose(out[0], torch.tensor([0.0, -50.0])) and out[1, 0].isnan() and out[1, 1] == 100.0
    with pytest.raises(ZeroDivisionError, match="clean value is 0"):
        percent_change(1.0, 0.0)
    # the course convention is a different number on the same inputs
    assert normalized_metric(1.5, 2.0, 1.0) == pytest.approx(-0.5)


# ----------------------------------------------------------------------------- keys

BETA = 4.0
SENDER = (1, 1)


@lru_cache(maxsize=1)
def build_key_planted(seed: int = 3):
    """The planted model of conftest_patching (head 2.0 attends to position 1 through its key
    and copies the name there) plus a *key sender*: head 1.1 also attends to position 1
    (constant query, key on the marker, direction 63), reads the name there (+1 for Mary's
    direction 0, −1 for John's direction 1, after ln_1) and writes it, times ``BETA``, into
    direction 62, which 2.0's key reads beside 63. So at position 1 Mary raises 2.0's key
    and John lowers it: 1.1 matters for 2.0 only through 2.0's keys.

    Built on the GPT-2-like parameters (non-zero biases, LayerNorm weights ≠ 1 and biases ≠
    0), which forced two choices, each so that the sender's write is ±(the same vector):
    the sender writes into its own direction 62, not onto the marker's 63 (on 63, Mary's
    write added to the marker and John's cancelled it, so the residual's norm at position 1,
    hence the LayerNorm scale of 2.0's *values*, depended on the name: a value-path effect
    of a quarter of the key-path one); and its value weights and own value bias undo
    ln_1's scale and bias on directions 0 and 1 (what a hand-built head reading "the name"
    would define), so Mary and John give +1 and −1, not γ₀ + β₀ − β₁ and −γ₁ + β₀ − β₁.
    The layer's LayerNorm itself keeps its drawn parameters."""
    from conftest_patching import ALPHA, C, MARK, NAME_NORM, head_slices, seeded_hf_gpt2

    dh = SPEC.d_head
    hf = seeded_hf_gpt2(SPEC, seed, initializer_range=0.15, gpt2_like=True)
    mary, john = name_ids()
    with torch.no_grad():
        wte, wpe = hf.transformer.wte.weight, hf.transformer.wpe.weight
        wte[mary], wte[john] = 0.0, 0.0
        wte[mary, 0], wte[john, 1] = NAME_NORM, NAME_NORM
        wpe[1, 63] = MARK
        # receiver 2.0: constant query, key = directions 63 + 62, value = directions 0..15
        attn = hf.transformer.h[2].attn
        W, b, P = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight
        q, k, v = head_slices(0, SPEC)
        W[:, q], b[q], W[:, k], b[k], W[:, v], b[v] = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        b[q.start] = C
        W[63, k.start], W[62, k.start] = 1.0, 1.0
        for i in range(dh):
            W[i, v.start + i] = 1.0
        P[0:dh] = 0.0
        for i in range(dh):
            P[i, i] = ALPHA
        # sender 1.1: attends to the marker; value = name (+ Mary, − John); output → 62
        block = hf.transformer.h[SENDER[0]]
        gamma, beta = block.ln_1.weight, block.ln_1.bias
        attn = block.attn
        W, b, P = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight
        h = SENDER[1]
        q, k, v = head_slices(h, SPEC)
        W[:, q], b[q], W[:, k], b[k], W[:, v], b[v] = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        b[q.start] = C
        W[63, k.start] = 1.0
        W[0, v.start], W[1, v.start] = 1.0 / gamma[0], -1.0 / gamma[1]
        b[v.start] = beta[1] / gamma[1] - beta[0] / gamma[0]
        P[h * dh : (h + 1) * dh] = 0.0
        P[h * dh, 62] = BETA
    return boot(hf, SPEC, seed)


def _mary_task(batch: int = 6, seq: int = 8):
    mary, john = name_ids()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1000, 30000, (batch, seq), generator=g)
    clean[:, 1] = mary
    corrupt = clean.clone()
    corrupt[:, 1] = john
    metric = LogitDiffMetric(torch.full((batch,), mary), torch.full((batch,), john), seq - 1)
    return clean, corrupt, metric


def test_keys_experiment_recovers_a_planted_key_sender():
    model = build_key_planted()
    clean, corrupt, metric = _mary_task()
    clean_ld = metric(model(clean)).item()
    assert clean_ld > 2.0  # the receiver copies Mary from position 1
    kw = dict(receivers=[(2, 0)], sender_positions=1)
    keys = path_patch(model, clean, corrupt, metric, receiver_input="k", **kw)
    effect = percent_change(keys, clean_ld)
    (top, value), (second, value2) = top_heads(effect, 2, largest=False)
    assert top == "1.1" and value < -50 and abs(value2) < abs(value) / 3
    # the same sender does not act through the receiver's values nearly as much
    values = path_patch(model, clean, corrupt, metric, receiver_input="v", **kw)
    assert abs(percent_change(values[SENDER], clean_ld)) < abs(value) / 3
    # fast equals plain hooked passes
    ref = path_patch_reference(model, clean, corrupt, metric, receiver_input="k", **kw)
    assert torch.allclose(keys.nan_to_num(), ref.nan_to_num(), atol=1e-4)


# ----------------------------------------------------------------------------- copy score

COPY, ANTI = (1, 0), (1, 2)
NAMES8 = [" Mary", " John", " Alice", " Bob", " Carol", " David", " Emma", " Frank"]


@lru_cache(maxsize=1)
def build_copy_planted(seed: int = 5):
    """Eight names embedded on directions 0..7; head 1.0's OV is +identity on directions
    0..15 (a copying head), head 1.2's is −identity (an anti-copying head); the rest random.
    GPT-2 ties W_U to W_E, so copying direction i raises name i's logit."""
    from conftest_patching import head_slices, seeded_hf_gpt2

    dh = SPEC.d_head
    hf = seeded_hf_gpt2(SPEC, seed, n_layers=2, gpt2_like=True)
    tok = gpt2_tokenizer()
    with torch.no_grad():
        wte = hf.transformer.wte.weight
        for i, name in enumerate(NAMES8):
            (t,) = tok.encode(name)
            wte[t] = 0.0
            wte[t, i] = 8.0
        attn = hf.transformer.h[1].attn
        W, b, P = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight
        for (_, h), s in ((COPY, 1.0), (ANTI, -1.0)):
            v = head_slices(h, SPEC)[2]
            W[:, v], b[v] = 0.0, 0.0
            P[h * dh : (h + 1) * dh] = 0.0
            for i in range(dh):
                W[i, v.start + i] = 1.0
                P[h * dh + i, i] = 2.0 * s
    from helpers.models import ModelSpec

    return boot(hf, ModelSpec("tiny-copy", "openai-community/gpt2", n_layers=2, n_heads=4, d_model=64), seed)


def test_copy_score_in_context_ranks_the_planted_copier_first_and_anti_copier_last():
    model = build_copy_planted()
    tok = gpt2_tokenizer()
    ids = [tok.encode(n)[0] for n in NAMES8]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1000, 30000, (8, 7), generator=g)
    pos = torch.tensor([[1, 4]] * 8)
    for i in range(8):  # two names per prompt, read in context at positions 1 and 4
        tokens[i, 1], tokens[i, 4] = ids[i], ids[(i + 3) % 8]
    resid = activations_at(model, tokens, "blocks.0.hook_resid_post", pos)  # [8, 2, d]
    _, acts = capture(model, tokens, ["blocks.0.hook_resid_post"])
    assert torch.allclose(resid[:, 1], acts["blocks.0.hook_resid_post"][:, 4])
    rows, token_ids = resid.reshape(-1, 64), tokens.gather(1, pos).reshape(-1)
    heads = [(1, h) for h in range(4)]
    plus = copy_score(model, heads, rows, token_ids)
    minus = copy_score(model, heads, rows, token_ids, sign=-1)
    ranked = sorted(plus, key=plus.get, reverse=True)
    assert ranked[0] == "1.0" and plus["1.0"] == 1.0
    assert plus["1.2"] == min(plus.values()) == 0.0
    assert max(minus, key=minus.get) == "1.2" and minus["1.2"] == 1.0 and minus["1.0"] == 0.0
    with pytest.raises(ValueError, match="positions"):
        activations_at(model, tokens, "blocks.0.hook_resid_post", torch.tensor([[1, 9]] * 8))


# ----------------------------------------------------------------------------- minimality


def _evaluator(task, circuit):
    m = task.model
    metric = LogitDiffMetric(task.answer, task.wrong, task.end)
    means = head_means(m, task.reference)
    return CircuitEvaluator(m, task.clean, metric, means, circuit, named_positions={"END": task.end})


def _by_hand(task, ablate_nodes):
    """The metric with exactly ``ablate_nodes`` ``{(layer, head): mask [batch, seq]}`` ablated."""
    m = task.model
    b, s = task.clean.shape
    mask = torch.zeros(b, s, m.cfg.n_layers, m.cfg.n_heads, dtype=torch.bool)
    for (L, h), where in ablate_nodes.items():
        mask[:, :, L, h] = where
    logits = run_with_mean_ablation(m, task.clean, head_means(m, task.reference), mask)
    return LogitDiffMetric(task.answer, task.wrong, task.end)(logits).item()


def _circuit_by_hand(task, circuit_heads, removed):
    """F(C \\ removed) by hand: every node ablated except circuit heads not removed, at END."""
    m = task.model
    b, s = task.clean.shape
    at_end = torch.zeros(b, s, dtype=torch.bool)
    at_end[torch.arange(b), task.end] = True
    nodes = {}
    for L in range(m.cfg.n_layers):
        for h in range(m.cfg.n_heads):
            kept = (L, h) in circuit_heads and (L, h) not in removed
            nodes[(L, h)] = ~at_end if kept else torch.ones(b, s, dtype=torch.bool)
    return _by_hand(task, nodes)


def test_minimality_scores_with_per_head_k_sets(planted):
    heads = [PLANTED, (1, 1), (0, 3)]
    ev = _evaluator(planted, {h: "END" for h in heads})
    k_sets = {PLANTED: [], (1, 1): [PLANTED], (0, 3): [PLANTED, (1, 1)]}
    rows = minimality_scores(ev, k_sets)
    assert [r["head"] for r in rows] == heads
    for r in rows:
        K = set(r["K"])
        f_k = _circuit_by_hand(planted, heads, K)
        f_kv = _circuit_by_hand(planted, heads, K | {r["head"]})
        assert r["F_C_minus_K"] == pytest.approx(f_k, abs=1e-4)
        assert r["F_C_minus_K_v"] == pytest.approx(f_kv, abs=1e-4)
        assert r["score"] == pytest.approx(abs(f_kv - f_k), abs=1e-4)
        assert r["score"] == pytest.approx(ev.minimality(r["head"], r["K"])["score"], abs=1e-5)
    # the planted head matters far more than the filler heads
    assert rows[0]["score"] > 5 * max(rows[1]["score"], rows[2]["score"])
    with pytest.raises(ValueError, match="own K"):
        minimality_scores(ev, {PLANTED: [PLANTED]})


# ----------------------------------------------------------------------------- completeness


def test_random_subsets_are_seeded_and_use_p():
    items = list(range(26))
    a, b = random_subsets(items, 200, seed=3), random_subsets(items, 200, seed=3)
    assert a == b and a != random_subsets(items, 200, seed=4)
    assert all(draw and set(draw) <= set(items) for draw in a)
    share = sum(len(d) for d in a) / (200 * 26)
    assert 0.45 < share < 0.55
    assert all(len(d) == 26 for d in random_subsets(items, 3, p=1.0))
    with pytest.raises(ValueError):
        random_subsets(items, 3, p=0.0)


def test_greedy_incompleteness_picks_the_worst_head_by_hand(planted):
    m = planted.model
    heads = [PLANTED, (1, 1), (0, 3), (1, 0)]
    ev = _evaluator(planted, {h: "END" for h in heads})

    def gap(K):
        f_c = _circuit_by_hand(planted, heads, set(K))
        b, s = planted.clean.shape
        at_end = torch.zeros(b, s, dtype=torch.bool)
        at_end[torch.arange(b), planted.end] = True
        f_m = _by_hand(planted, {h: at_end for h in K})
        return f_c, f_m, abs(f_c - f_m)

    trace = greedy_incompleteness(ev, heads, 2)
    first = max(heads, key=lambda v: gap([v])[2])
    assert trace[0]["K"] == [first]
    second = max((v for v in heads if v != first), key=lambda v: gap([first, v])[2])
    assert trace[1]["K"] == [first, second]
    f_c, f_m, g = gap([first, second])
    assert trace[1]["F_C_minus_K"] == pytest.approx(f_c, abs=1e-4)
    assert trace[1]["F_M_minus_K"] == pytest.approx(f_m, abs=1e-4)
    assert trace[1]["gap"] == pytest.approx(g, abs=1e-4)
    # sampling tries only `sample` candidates per step; seeded
    sampled = greedy_incompleteness(ev, heads, 2, sample=2, seed=1)
    assert sampled == greedy_incompleteness(ev, heads, 2, sample=2, seed=1)
    assert circuit_score(m, planted.clean, ev.metric, ev.means) == pytest.approx(ev.F())
    with pytest.raises(ValueError, match="steps"):
        greedy_incompleteness(ev, heads, 5)


# ----------------------------------------------------------------------------- plots


def test_grouped_bars_and_grouped_scatter():
    from helpers import bar, scatter

    fig = bar([[1.0, 2.0], [3.0, 4.0]], ["a", "b"], title="t", xaxis="x", yaxis="y", names=["s1", "s2"])
    assert [d.name for d in fig.data] == ["s1", "s2"] and fig.layout.barmode == "group"
    with pytest.raises(ValueError, match="one name per series"):
        bar([[1.0, 2.0], [3.0, 4.0]], ["a", "b"], title="t", xaxis="x", yaxis="y")
    fig = scatter([1, 2, 3], [1, 2, 4], ["a", "b", "c"], title="t", xaxis="x", yaxis="y",
                  groups=["class", "random", "class"], diagonal=True)
    assert [d.name for d in fig.data] == ["class", "random", "y = x"]
    assert list(fig.data[0].text) == ["a", "c"]
    with pytest.raises(ValueError, match="groups"):
        scatter([1], [1], ["a"], title="t", xaxis="x", yaxis="y", groups=["g", "h"])
