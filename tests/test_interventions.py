"""Attention edits run as conditions (helpers.interventions.edited_logits): the cached re-run of
the query position equals full runs with the same hooks, on a random tiny GPT-2."""

import pytest
import torch

from helpers import attention_edit_hooks, edited_logits, hook_name, logits_at_positions

N, SEQ = 7, 10
QUERY = torch.tensor([9, 9, 6, 7, 9, 6, 8])  # differs across prompts, as IOI's END does
HEADS = ["0.1", "1.2"]


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(100, 5000, (N, SEQ), generator=torch.Generator().manual_seed(0))


def _rows():
    """[N, SEQ]: all attention on position 1 and the query itself, half each."""
    rows = torch.zeros(N, SEQ)
    rows[:, 1] = 0.5
    rows[torch.arange(N), QUERY] += 0.5
    return rows


def _block():
    block = torch.zeros(N, SEQ, dtype=torch.bool)
    block[:, 1:4] = True
    return block


def _conditions(model):
    rows, block = _rows(), _block()
    return {
        "none": (),
        "rows": lambda idx: attention_edit_hooks(model, HEADS, QUERY[idx], rows=rows[idx]),
        "block": lambda idx: attention_edit_hooks(model, HEADS, QUERY[idx], block=block[idx]),
    }


def _reference(model, tokens):
    """Each condition as one full run of every prompt, read at the query."""
    return {
        "none": logits_at_positions(model, tokens, QUERY),
        "rows": logits_at_positions(model, tokens, QUERY, fwd_hooks=attention_edit_hooks(model, HEADS, QUERY, rows=_rows())),
        "block": logits_at_positions(model, tokens, QUERY, fwd_hooks=attention_edit_hooks(model, HEADS, QUERY, block=_block())),
    }


def _spy(shapes):
    return [(hook_name("pattern", L), lambda t, hook: shapes.append(tuple(t.shape))) for L in (0, 1)]


def test_edited_logits_equal_full_runs_and_rerun_only_the_query(tiny_model, tokens):
    want = _reference(tiny_model, tokens)
    assert (want["rows"] - want["none"]).abs().max() > 1e-2  # the edits reach the output
    assert (want["block"] - want["none"]).abs().max() > 1e-2
    shapes = []
    conditions = _conditions(tiny_model)
    conditions["spied"] = lambda idx: _spy(shapes)
    got = edited_logits(tiny_model, tokens, QUERY, conditions, batch_size=3)
    assert set(got) == {"none", "rows", "block", "spied"}
    for name in want:
        assert got[name].shape == (N, tiny_model.cfg.d_vocab)
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    assert torch.allclose(got["spied"], want["none"], atol=1e-5)
    # the cached path ran: each condition saw one query row, all keys up to the query
    assert shapes and all(s[2] == 1 for s in shapes)
    assert sorted({s[3] for s in shapes}) == sorted({int(q) + 1 for q in QUERY})


def test_edited_logits_fall_back_to_full_runs_when_the_cache_check_fails(tiny_model, tokens, monkeypatch):
    from transformers import DynamicCache

    import helpers._sweeps as sweeps

    monkeypatch.setattr(sweeps, "_kv_cache", lambda *a, **k: DynamicCache())  # a cache that forgets
    shapes = []
    conditions = _conditions(tiny_model)
    conditions["spied"] = lambda idx: _spy(shapes)
    got = edited_logits(tiny_model, tokens, QUERY, conditions, batch_size=4)
    want = _reference(tiny_model, tokens)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    assert all(s[2] == s[3] for s in shapes)  # full runs: every query row


def test_attention_edit_for_positions_not_run_is_refused(tiny_model, tokens):
    hooks = attention_edit_hooks(tiny_model, ["1.0"], torch.tensor([8, 8]), rows=torch.eye(SEQ)[[0, 0]])
    with pytest.raises(ValueError, match="query positions"):
        tiny_model.run_with_hooks(tokens[:2, :5], fwd_hooks=hooks)
    with pytest.raises(ValueError, match="batch_size"):
        edited_logits(tiny_model, tokens, QUERY, {"none": ()}, batch_size=0)
