"""Activation patching and path patching (helpers.patching, helpers.path_patching) on a tiny
planted GPT-2."""

import math

import pytest
import torch

from conftest_patching import PLANTED, planted  # noqa: F401  (fixture)
from helpers import (
    LogitDiffMetric,
    dla_by_head,
    logit_diff,
    PositionMetric,
    all_heads,
    capture,
    logits_at_positions,
    patch_heads,
    patch_resid_by_layer,
    patch_resid_by_position,
    path_patch,
    path_patch_reference,
    position_mask,
    run_with_patches,
)


def _ld(task):
    return LogitDiffMetric(task.answer, task.wrong, task.end)


# ---------------------------------------------------------------- positions


def test_position_mask_forms():
    b, s = 3, 5
    assert position_mask(None, b, s).all()
    m = position_mask(-1, b, s)
    assert m[:, 4].all() and m.sum() == 3
    per = torch.tensor([0, 2, 4])
    m = position_mask(per, b, s)
    assert m.sum() == 3 and m[1, 2] and not m[1, 0]
    m = position_mask(torch.tensor([[0, 1], [2, 3], [3, 4]]), b, s)
    assert m.sum() == 6 and m[2, 4] and not m[0, 2]
    m = position_mask(["END", 0], b, s, named_positions={"END": per})
    assert m[:, 0].all() and m[2, 4] and m.sum() == 5
    with pytest.raises(KeyError):
        position_mask("S2", b, s, named_positions={"END": per})
    with pytest.raises(ValueError):
        position_mask(torch.tensor([1, 2]), b, s)  # not one per prompt


# ---------------------------------------------------------------- activation patching


def test_patch_nothing_and_everything(planted):
    m, A, B = planted.model, planted.clean, planted.corrupt
    with torch.no_grad():
        la, lb = m(A), m(B)
    assert (la - lb).abs().max() > 1.0  # the two runs differ a lot
    # nothing patched: run A's logits exactly
    assert torch.equal(run_with_patches(m, A, B, heads=()), la)
    # the full residual stream of any one layer carries the whole of run B
    for L in range(m.cfg.n_layers):
        out = run_with_patches(m, A, B, hooks=[f"blocks.{L}.hook_resid_pre"])
        assert torch.allclose(out, lb, atol=1e-5), L
    # every component that writes to the residual stream: token embedding, all heads, all MLPs
    mlps = [f"blocks.{L}.hook_mlp_out" for L in range(m.cfg.n_layers)]
    out = run_with_patches(m, A, B, heads=None, hooks=["hook_embed", *mlps])
    assert torch.allclose(out, lb, atol=1e-4)
    # all heads alone do not carry B (the embeddings and MLPs still see A) ...
    heads_only = run_with_patches(m, A, B, heads=None)
    assert (heads_only - lb).abs().max() > 1e-2
    # ... but equal patching every attention output
    attn = run_with_patches(m, A, B, hooks=[f"blocks.{L}.hook_attn_out" for L in range(m.cfg.n_layers)])
    assert torch.allclose(heads_only, attn, atol=1e-5)


def test_patch_resid_by_layer_both_directions(planted):
    m, A, B = planted.model, planted.clean, planted.corrupt
    metric = _ld(planted)
    with torch.no_grad():
        fa, fb = metric(m(A)).item(), metric(m(B)).item()
    noising = patch_resid_by_layer(m, A, B, metric, direction="corrupted->clean")
    denoising = patch_resid_by_layer(m, A, B, metric, direction="clean->corrupted")
    assert noising.shape == (m.cfg.n_layers,)
    assert torch.allclose(noising, torch.full_like(noising, fb), atol=1e-4)
    assert torch.allclose(denoising, torch.full_like(denoising, fa), atol=1e-4)
    # at END only: the last layer's output there is the whole answer; layer 0's is not
    end_only = patch_resid_by_layer(m, A, B, metric, positions=planted.end, hook="resid_post")
    assert abs(end_only[-1].item() - fb) < 1e-3 and abs(end_only[0].item() - fa) < abs(fa - fb) / 2


def test_patch_resid_by_position(planted):
    m, A, B = planted.model, planted.clean, planted.corrupt
    metric = _ld(planted)
    out = patch_resid_by_position(m, A, B, metric, batch_tokens=4 * A.numel())
    assert out.shape == (m.cfg.n_layers, A.shape[1])
    with torch.no_grad():
        fa, fb = metric(m(A)).item(), metric(m(B)).item()
    # A and B differ only at position 1: patching any other position at layer 0 does nothing
    others = [p for p in range(A.shape[1]) if p != 1]
    assert torch.allclose(out[0, others], torch.full((len(others),), fa), atol=1e-5)
    # position 1 at layer 0 is the whole difference between the runs
    assert abs(out[0, 1].item() - fb) < 1e-4
    # one entry against a direct patched run
    direct = run_with_patches(m, A, B, hooks=["blocks.2.hook_resid_pre"], positions=1)
    assert abs(out[2, 1].item() - metric(direct).item()) < 1e-5


@pytest.mark.parametrize("direction", ["corrupted->clean", "clean->corrupted"])
def test_patch_heads_matches_direct_runs(planted, direction):
    m, A, B = planted.model, planted.clean, planted.corrupt
    metric = _ld(planted)
    target, source = (A, B) if direction == "corrupted->clean" else (B, A)
    for positions in (None, planted.end):
        out = patch_heads(m, A, B, metric, direction=direction, positions=positions, batch_tokens=5 * A.numel())
        assert out.shape == (m.cfg.n_layers, m.cfg.n_heads)
        for head in [(0, 1), (1, 3), PLANTED]:
            direct = metric(run_with_patches(m, target, source, heads=[head], positions=positions))
            assert abs(out[head].item() - direct.item()) < 1e-4, (direction, head)
    # the planted head carries the answer: patching it alone moves the metric most
    noise = patch_heads(m, A, B, metric)
    with torch.no_grad():
        fa = metric(m(A)).item()
    drop = (fa - noise).flatten()
    assert drop.argmax().item() == PLANTED[0] * m.cfg.n_heads + PLANTED[1]


def test_patch_heads_subset_is_nan_elsewhere(planted):
    out = patch_heads(planted.model, planted.clean, planted.corrupt, _ld(planted), heads=[(1, 2)])
    assert not math.isnan(out[1, 2].item()) and out.isnan().sum() == out.numel() - 1


# ---------------------------------------------------------------- path patching


def _compare(task, metric, **kw):
    m = task.model
    fast = path_patch(m, task.clean, task.corrupt, metric, **kw)
    ref = path_patch_reference(m, task.clean, task.corrupt, metric, **kw)
    assert fast.shape == (m.cfg.n_layers, m.cfg.n_heads)
    assert torch.equal(fast.isnan(), ref.isnan())
    scored = ~ref.isnan()
    assert scored.any()
    diff = (fast - ref)[scored].abs().max().item()
    with torch.no_grad():
        base = metric(m(task.clean)).item()
    effect = (ref[scored] - base).abs().max().item()
    return diff, effect, ref


@pytest.mark.parametrize("positions", ["all", "end", "two"])
def test_path_patch_final_residual_matches_reference(planted, positions):
    sp = {"all": None, "end": planted.end, "two": torch.stack([torch.ones_like(planted.end), planted.end], 1)}[positions]
    diff, effect, ref = _compare(planted, _ld(planted), receivers="logits", sender_positions=sp)
    assert diff < 1e-4 and effect > 1.0
    assert not ref.isnan().any()  # every head reaches the logits


@pytest.mark.parametrize(
    "receivers, which",
    [
        ([(2, 1), (1, 3)], "q"),
        ([(1, 1), (2, 3)], "k"),
        ([(1, 2), (2, 1)], "v"),
        ([(2, 0), (1, 0)], "kv"),
    ],
)
@pytest.mark.parametrize("positions", ["all", "end", "two"])
def test_path_patch_heads_matches_reference(planted, receivers, which, positions):
    sp = {"all": None, "end": planted.end, "two": torch.stack([torch.ones_like(planted.end), planted.end - 1], 1)}[positions]
    diff, effect, ref = _compare(planted, _ld(planted), receivers=receivers, receiver_input=which, sender_positions=sp)
    assert diff < 1e-4, diff
    assert effect > 5e-3, effect  # the comparison is not between two constant maps
    last = max(L for L, _ in receivers)
    assert ref[last:].isnan().all() and not ref[:last].isnan().any()


@pytest.mark.parametrize("kind", ["position", "callable"])
def test_path_patch_other_metrics(planted, kind):
    rows = torch.arange(len(planted.answer))
    if kind == "position":
        metric = PositionMetric(lambda lg: lg.log_softmax(-1)[rows, planted.wrong].mean(), planted.end)
    else:
        metric = lambda lg: logit_diff(lg, planted.answer, planted.wrong, planted.end) + lg[:, 0, :50].std()  # noqa: E731
    for kw in (dict(receivers="logits"), dict(receivers=[(2, 1), (1, 2)], receiver_input="v")):
        diff, effect, _ = _compare(planted, metric, **kw)
        assert diff < 1e-4 and effect > 1e-3, (kw, diff, effect)


def test_path_patch_senders_and_locality(planted):
    m = planted.model
    metric = _ld(planted)
    with torch.no_grad():
        base = metric(m(planted.clean)).item()
    # senders patched away from END cannot reach END's logits when every head is frozen
    away = path_patch(m, planted.clean, planted.corrupt, metric, sender_positions=planted.end - 1)
    assert torch.allclose(away, torch.full_like(away, base), atol=1e-5)
    # a subset of senders: NaN elsewhere, same values as the full run
    full = path_patch(m, planted.clean, planted.corrupt, metric)
    sub = path_patch(m, planted.clean, planted.corrupt, metric, senders=[(0, 2), PLANTED])
    assert sub.isnan().sum() == sub.numel() - 2
    assert abs(sub[PLANTED] - full[PLANTED]) < 1e-5 and abs(sub[0, 2] - full[0, 2]) < 1e-5


@pytest.mark.parametrize("kind", ["ld", "callable"])
def test_path_patch_heads_after_the_metric_position_change_nothing(planted, kind):
    """Senders only in the padding after END: pass D cannot change END, for head receivers too."""
    m = planted.model
    seq = planted.clean.shape[1]
    after_end = torch.arange(seq)[None, :] > planted.end[:, None]
    assert after_end.any() and not after_end.all(1).any()
    corrupt = planted.corrupt.clone()
    corrupt[after_end] = 1000  # the corrupted run differs after END as well
    metric = _ld(planted) if kind == "ld" else (lambda lg: logit_diff(lg, planted.answer, planted.wrong, planted.end))
    with torch.no_grad():
        base = metric(m(planted.clean)).item()
    kw = dict(receivers=[(2, 1), (1, 2)], receiver_input="kv", sender_positions=after_end)
    fast = path_patch(m, planted.clean, corrupt, metric, **kw)
    ref = path_patch_reference(m, planted.clean, corrupt, metric, **kw)
    scored = ~ref.isnan()
    assert torch.equal(fast.isnan(), ref.isnan()) and scored.any()
    assert torch.allclose(fast[scored], torch.full_like(fast[scored], base), atol=1e-5)
    assert torch.allclose(ref[scored], fast[scored], atol=1e-4)


# ---------------------------------------------------------------- known answer


def test_planted_head_ranked_first_by_dla_and_path_patching(planted):
    m = planted.model
    n_heads = m.cfg.n_heads
    planted_index = PLANTED[0] * n_heads + PLANTED[1]
    _, cache = m.run_with_cache(planted.clean)
    dla = dla_by_head(m, cache, planted.answer, planted.wrong, planted.end).mean(-1).flatten()
    top2 = dla.abs().topk(2)
    assert top2.indices[0].item() == planted_index
    assert dla[planted_index] > 10 * top2.values[1]  # clear margin

    metric = _ld(planted)
    with torch.no_grad():
        base = metric(m(planted.clean)).item()
    drop = (base - path_patch(m, planted.clean, planted.corrupt, metric)).flatten()
    top2 = drop.abs().topk(2)
    assert top2.indices[0].item() == planted_index
    assert drop[planted_index] > 10 * top2.values[1]
    # and the head's effect is most of the clean-vs-corrupted gap
    with torch.no_grad():
        corrupted = metric(m(planted.corrupt)).item()
    assert drop[planted_index] > 0.8 * (base - corrupted)


def test_all_heads_and_capture(planted):
    m = planted.model
    assert len(all_heads(m)) == m.cfg.n_layers * m.cfg.n_heads
    logits, acts = capture(m, planted.clean, ["blocks.1.attn.hook_z"])
    assert acts["blocks.1.attn.hook_z"].shape == (*planted.clean.shape, m.cfg.n_heads, m.cfg.d_head)
    assert torch.allclose(logits, m(planted.clean))


def test_logits_at_positions_equals_full_logits_and_leaves_no_hooks(planted):
    m = planted.model
    with torch.no_grad():
        full = m(planted.clean)
    rows = torch.arange(len(planted.end))
    at_end = logits_at_positions(m, planted.clean, planted.end)
    assert at_end.shape == (len(planted.end), m.cfg.d_vocab)
    assert torch.allclose(at_end, full[rows, planted.end], atol=1e-5, rtol=1e-5)
    assert torch.allclose(logits_at_positions(m, planted.clean), full[:, -1], atol=1e-5, rtol=1e-5)
    # with hooks: the same as the hooked full run
    zero_head = [("blocks.2.attn.hook_z", lambda z, hook: z * 0)]
    with torch.no_grad():
        hooked = m.run_with_hooks(planted.clean, fwd_hooks=zero_head)
    assert torch.allclose(logits_at_positions(m, planted.clean, planted.end, fwd_hooks=zero_head),
                          hooked[rows, planted.end], atol=1e-5, rtol=1e-5)
    # the early stop removed its hooks: a plain run is unchanged
    assert all(not hp._forward_hooks for hp in m.hook_dict.values())
    with torch.no_grad():
        assert torch.equal(m(planted.clean), full)
    with pytest.raises(ValueError, match="one per prompt"):
        logits_at_positions(m, planted.clean, planted.end[:2])
