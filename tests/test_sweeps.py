"""The fast activation-patching sweeps (helpers._sweeps behind helpers.patching) against the
plain computation: one full hooked forward pass per configuration (``run_with_patches``).

Two models: the planted 3-layer model (conftest_patching) and a random 3-layer one with large
weights (initializer range 0.3) so that every patch moves the metric, both with GPT-2's kinds
of non-zero biases and LayerNorm parameters; both directions, every sweep, three kinds of
metric.
"""

from functools import lru_cache

import pytest
import torch

from conftest_patching import boot, planted  # noqa: F401  (fixture)
from helpers import (
    LogitDiffMetric,
    ModelSpec,
    PositionMetric,
    hook_name,
    logit_diff,
    patch_heads,
    patch_heads_by_position,
    patch_resid_by_layer,
    patch_resid_by_position,
    run_with_patches,
)

TOL = 1e-5
BIG = ModelSpec("tiny-big", "openai-community/gpt2", n_layers=3, n_heads=4, d_model=64)


@lru_cache(maxsize=1)
def big_model():
    from conftest_patching import seeded_hf_gpt2

    # biases and LayerNorm parameters non-zero (gpt2_like), so a sweep that drops a bias
    # disagrees with the plain hooked pass
    hf = seeded_hf_gpt2(BIG, 11, initializer_range=0.3, gpt2_like=True)
    return boot(hf, BIG, 11)


class Task:
    def __init__(self, model, clean, corrupt, end, answer, wrong):
        self.model, self.clean, self.corrupt, self.end = model, clean, corrupt, end
        self.answer, self.wrong = answer, wrong


def big_task() -> Task:
    """6 right-padded prompts; the corrupted ones differ at position 0 (prompt 0), 2, 3 or 5."""
    g = torch.Generator().manual_seed(5)
    batch, seq = 6, 7
    clean = torch.randint(1000, 30000, (batch, seq), generator=g)
    corrupt = clean.clone()
    for b, p in enumerate([0, 2, 3, 5, 2, 3]):
        corrupt[b, p] = (clean[b, p] + 17) % 30000
    lengths = torch.tensor([7, 6, 7, 6, 7, 5])
    pad = torch.arange(seq)[None] >= lengths[:, None]
    clean[pad] = corrupt[pad] = 50256
    answer = torch.randint(1000, 30000, (batch,), generator=g)
    wrong = torch.randint(1000, 30000, (batch,), generator=g)
    return Task(big_model(), clean, corrupt, lengths - 1, answer, wrong)


def metrics(task):
    rows = torch.arange(len(task.answer))
    return {
        "ld": LogitDiffMetric(task.answer, task.wrong, task.end),
        "pos": PositionMetric(lambda lg: lg.log_softmax(-1)[rows, task.answer].mean(), task.end),
        "bare": lambda logits: logit_diff(logits, task.answer, task.wrong, task.end) ** 2,
    }


def _pair(task, direction):
    return (task.clean, task.corrupt) if direction == "corrupted->clean" else (task.corrupt, task.clean)


def _plain_all(model, target, source, metric_list, **kw) -> list[float]:
    """Every metric on ONE plain hooked forward pass with the configuration's patch."""
    logits = run_with_patches(model, target, source, **kw)
    return [float(mt(logits)) for mt in metric_list]


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= TOL * max(1.0, abs(want))


def _tasks(planted):  # noqa: F811
    t = planted
    return {"planted": Task(t.model, t.clean, t.corrupt, t.end, t.answer, t.wrong), "big": big_task()}


@pytest.mark.parametrize("which", ["planted", "big"])
@pytest.mark.parametrize("direction", ["corrupted->clean", "clean->corrupted"])
def test_head_sweeps_equal_one_forward_per_configuration(planted, which, direction):  # noqa: F811
    task = _tasks(planted)[which]
    m = task.model
    target, source = _pair(task, direction)
    # every head is computed; checked against plain runs: one head per layer (and 2.0, planted)
    heads = [(L, (L + 1) % m.cfg.n_heads) for L in range(m.cfg.n_layers)] + [(2, 0)]
    ms = metrics(task)
    for positions in (None, task.end):
        fast = {k: patch_heads(m, task.clean, task.corrupt, mt, direction=direction, positions=positions) for k, mt in ms.items()}
        for L, h in heads:
            want = _plain_all(m, target, source, ms.values(), heads=[(L, h)], positions=positions)
            for k, w in zip(ms, want):
                assert _close(fast[k][L, h].item(), w), (k, positions, L, h)
    # by position: column 0 (before most prompts' first difference), 2 and the last
    seq = task.clean.shape[1]
    cols = [0, 2, seq - 1]
    fast = {
        k: patch_heads_by_position(m, task.clean, task.corrupt, mt, direction=direction, positions=cols)
        for k, mt in ms.items()
    }
    assert fast["ld"].shape == (m.cfg.n_layers, seq, m.cfg.n_heads)
    assert fast["ld"][:, 1].isnan().all()
    for L, h in heads:
        for p in cols:
            want = _plain_all(m, target, source, ms.values(), heads=[(L, h)], positions=p)
            for k, w in zip(ms, want):
                assert _close(fast[k][L, p, h].item(), w), (k, L, p, h)


NOISE, DENOISE = "corrupted->clean", "clean->corrupted"


@pytest.mark.parametrize(
    "which, direction, hook",
    [
        ("planted", NOISE, "resid_pre"),
        ("planted", DENOISE, "resid_mid"),
        ("planted", NOISE, "resid_post"),
        ("big", DENOISE, "resid_pre"),
        ("big", NOISE, "resid_mid"),
        ("big", DENOISE, "resid_post"),
    ],
)
def test_resid_sweeps_equal_one_forward_per_configuration(planted, which, direction, hook):  # noqa: F811
    task = _tasks(planted)[which]
    m = task.model
    target, source = _pair(task, direction)
    seq = task.clean.shape[1]
    ms = metrics(task)
    fast = {k: patch_resid_by_position(m, task.clean, task.corrupt, mt, direction=direction, hook=hook) for k, mt in ms.items()}
    for L in range(m.cfg.n_layers):
        for p in range(seq):
            want = _plain_all(m, target, source, ms.values(), hooks=[hook_name(hook, L)], positions=p)
            for k, w in zip(ms, want):
                assert _close(fast[k][L, p].item(), w), (k, L, p)
    for positions in (None, task.end, [0, 3]):
        layer = {
            k: patch_resid_by_layer(m, task.clean, task.corrupt, mt, direction=direction, hook=hook, positions=positions)
            for k, mt in ms.items()
        }
        for L in range(m.cfg.n_layers):
            want = _plain_all(m, target, source, ms.values(), hooks=[hook_name(hook, L)], positions=positions)
            for k, w in zip(ms, want):
                assert _close(layer[k][L].item(), w), (k, positions, L)


def test_effects_are_large_on_the_random_model():
    """The equality tests above mean something only if patches move the metric a lot."""
    task = big_task()
    metric = metrics(task)["ld"]
    with torch.no_grad():
        base = metric(task.model(task.clean)).item()
    heads = patch_heads(task.model, task.clean, task.corrupt, metric)
    resid = patch_resid_by_position(task.model, task.clean, task.corrupt, metric)
    assert (heads - base).abs().max() > 0.2 and (resid - base).abs().max() > 0.2  # vs a tolerance of 1e-5


@pytest.mark.parametrize("direction", ["corrupted->clean", "clean->corrupted"])
def test_configurations_that_patch_nothing_give_the_unpatched_metric(direction):
    task = big_task()
    m = task.model
    metric = metrics(task)["ld"]
    target, _ = _pair(task, direction)
    with torch.no_grad():
        base = metric(m(target)).item()
    # an empty position set
    empty = torch.zeros_like(task.clean, dtype=torch.bool)
    out = patch_heads(m, task.clean, task.corrupt, metric, direction=direction, positions=empty)
    assert torch.allclose(out, torch.full_like(out, base), atol=TOL)
    out = patch_resid_by_layer(m, task.clean, task.corrupt, metric, direction=direction, positions=empty)
    assert torch.allclose(out, torch.full_like(out, base), atol=TOL)
    # source = target: every configuration patches an activation by itself
    same = patch_heads(m, target, target.clone(), metric, direction=direction)
    assert torch.allclose(same, torch.full_like(same, base), atol=TOL)
    same = patch_resid_by_position(m, target, target.clone(), metric, direction=direction, hook="resid_mid")
    assert torch.allclose(same, torch.full_like(same, base), atol=TOL)
    # column 1 precedes the first difference of prompts 1.. but not of prompt 0: not skipped
    by_pos = patch_heads_by_position(m, task.clean, task.corrupt, metric, direction=direction, positions=[1])
    assert by_pos[:, 0].isnan().all() and (by_pos[:, 1] - base).abs().max() > 1e-3


def test_positions_before_the_first_difference_are_not_run(planted):  # noqa: F811
    m, metric = planted.model, LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    with torch.no_grad():
        base = metric(m(planted.clean)).item()
    calls = []
    handles = [b.register_forward_pre_hook(lambda mod, a: calls.append(1)) for b in m.blocks]
    try:
        out = patch_heads_by_position(m, planted.clean, planted.corrupt, metric, positions=[0])
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], base), atol=TOL)
    assert len(calls) <= 2 * m.cfg.n_layers + 1  # the two captures and the self-check only


def test_copies_give_the_same_values(planted):  # noqa: F811
    m, metric = planted.model, LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    one = patch_heads(m, planted.clean, planted.corrupt, metric, batch_tokens=1)  # one per pass
    n = planted.clean.numel()
    default = patch_heads(m, planted.clean, planted.corrupt, metric)  # stacked up to 512 tokens
    assert torch.allclose(one, default, atol=TOL)
    four = patch_heads(m, planted.clean, planted.corrupt, metric, batch_tokens=4 * n)
    assert torch.allclose(one, four, atol=TOL)
    one = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_post", batch_tokens=1)
    three = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_post", batch_tokens=3 * n)
    assert torch.allclose(one, three, atol=TOL)


def test_prompt_groups_give_the_same_values(planted, monkeypatch):  # noqa: F811
    """Prompts run in groups cut after their metric position (forced: a group per length)."""
    from helpers import _sweeps

    m, metric = planted.model, LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    parts = _sweeps._partition(planted.end + 1, 0)
    assert len(parts) == len(set(planted.end.tolist())) > 1
    one = patch_heads(m, planted.clean, planted.corrupt, metric)
    resid = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_mid")
    monkeypatch.setattr(_sweeps, "GROUP_OVERHEAD_ROWS", 0)
    assert torch.allclose(patch_heads(m, planted.clean, planted.corrupt, metric), one, atol=TOL)
    again = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_mid")
    assert torch.allclose(again, resid, atol=TOL)


def test_the_engine_runs_only_the_layers_after_the_patch(planted):  # noqa: F811
    """Counts block executions: a head in layer L runs blocks L.. only (planted: 3 layers)."""
    m = planted.model
    metric = LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    calls = []
    handles = [b.register_forward_pre_hook(lambda mod, a, i=i: calls.append(i)) for i, b in enumerate(m.blocks)]
    try:
        patch_heads(m, planted.clean, planted.corrupt, metric, heads=[(2, 1)])
    finally:
        for h in handles:
            h.remove()
    # target capture (3 blocks), source capture (up to layer 2), self-check (block 2), the head (block 2)
    assert calls.count(2) == 4 and calls.count(0) == 2, calls


def test_the_bridge_forward_fallback_gives_the_same_values(planted, monkeypatch):  # noqa: F811
    """``forward(start_at_layer=L)`` (used when the block self-check fails) is exact too."""
    from helpers import _sweeps

    m, metric = planted.model, LogitDiffMetric(planted.answer, planted.wrong, planted.end)
    blocks = patch_heads(m, planted.clean, planted.corrupt, metric)
    resid = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_mid")
    monkeypatch.setattr(_sweeps, "FORCE_MODE", "start_at_layer")
    assert torch.allclose(patch_heads(m, planted.clean, planted.corrupt, metric), blocks, atol=TOL)
    again = patch_resid_by_position(m, planted.clean, planted.corrupt, metric, hook="resid_mid")
    assert torch.allclose(again, resid, atol=TOL)


def _positions_run(model, fn) -> list[tuple[int, int]]:
    """(block index, positions in its input) of every block execution during ``fn()``."""
    seen = []

    def note(mod, args, kwargs, i):
        x = args[0] if args else kwargs["hidden_states"]
        seen.append((i, x.shape[1]))

    handles = [
        b.register_forward_pre_hook(lambda mod, a, kw, i=i: note(mod, a, kw, i), with_kwargs=True)
        for i, b in enumerate(model.blocks)
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_a_patch_at_column_p_runs_positions_from_p_only():
    """By position: the columns before the patched one are read from the key-value cache."""
    task = big_task()
    m = task.model
    metric = metrics(task)["ld"]
    seq = task.clean.shape[1]
    # head 1.2 at column 3 only: blocks 1 and 2 run on positions 3..6 (cut after the last END)
    seen = _positions_run(m, lambda: patch_heads_by_position(m, task.clean, task.corrupt, metric, heads=[(1, 2)], positions=[3]))
    runs = seen[-2:]  # after the two captures and the self-check
    assert runs == [(1, seq - 3), (2, seq - 3)], seen
    # every head at every position starts at the first column where any prompt differs (0 here)
    seen = _positions_run(m, lambda: patch_heads(m, task.clean, task.corrupt, metric, heads=[(2, 0)]))
    assert seen[-1] == (2, seq), seen
    # the corrupted prompts of the planted-free big task differ first at column 2 once prompt 0 is dropped
    seen = _positions_run(m, lambda: patch_heads(m, task.clean[1:], task.corrupt[1:], LogitDiffMetric(task.answer[1:], task.wrong[1:], task.end[1:]), heads=[(2, 0)]))
    assert seen[-1] == (2, seq - 2), seen


@pytest.mark.parametrize("direction", [NOISE, DENOISE])
def test_the_key_value_cache_changes_no_value(planted, monkeypatch, direction):  # noqa: F811
    """Every sweep gives the same values with the position cut switched off."""
    from helpers import _sweeps

    task = big_task()
    m = task.model
    ms = metrics(task)
    cols = [1, 3, 6]

    def all_sweeps():
        out = []
        for mt in ms.values():
            out.append(patch_heads(m, task.clean, task.corrupt, mt, direction=direction))
            out.append(patch_heads_by_position(m, task.clean, task.corrupt, mt, direction=direction, positions=cols)[:, cols])
            out.append(patch_resid_by_position(m, task.clean, task.corrupt, mt, direction=direction, hook="resid_mid"))
            out.append(patch_resid_by_layer(m, task.clean, task.corrupt, mt, direction=direction, positions=task.end))
        return out

    cut = all_sweeps()
    monkeypatch.setattr(_sweeps, "USE_KV_CACHE", False)
    for a, b in zip(cut, all_sweeps()):
        assert torch.allclose(a, b, atol=TOL, rtol=TOL)
