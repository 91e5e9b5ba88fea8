"""Circuit reuse (helpers.cases.circuit_reuse): Colored Objects data on GPT-2's real tokenizer,
the attention intervention, the top-2% overlap, and path patching on GPT-2 medium's shape."""

import pytest
import torch

from helpers import (
    LogitDiffMetric,
    attention_edit_hooks,
    capture,
    hook_name,
    load_model,
    path_patch,
    path_patch_reference,
    top_fraction_heads,
)
from helpers.cases.circuit_reuse import (
    COLOR_POSITIONS,
    COLORS,
    PROMPT_TOKENS,
    accuracies,
    flip_s2_to_io,
    make_colored_objects,
    wrong_color_rows,
)
from helpers.cases.ioi import make_ioi_dataset
from helpers.models import gpt2_tokenizer


@pytest.fixture(scope="module")
def cobj():
    return make_colored_objects(60, seed=3)


def test_every_prompt_is_62_tokens_with_colors_at_41_45_50(cobj):
    tok = gpt2_tokenizer()
    assert cobj.tokens.shape == (60, PROMPT_TOKENS) and (cobj.lengths == 62).all()
    for i in range(len(cobj)):
        for j, pos in enumerate(COLOR_POSITIONS):
            assert tok.decode([int(cobj.tokens[i, pos])]) == " " + cobj.colors[i][j]
        answer = tok.decode([int(cobj.answers[i])])
        assert answer == " " + cobj.colors[i][int(cobj.asked[i])].capitalize()  # Title case
        assert cobj.prompts[i].endswith(f"What color is the {cobj.objects[i][int(cobj.asked[i])]}?\nA:")
        assert len(set(cobj.colors[i])) == 3 and len(set(cobj.objects[i])) == 3
    assert {c for cs in cobj.colors for c in cs} <= set(COLORS)


def test_the_counterfactual_changes_only_the_asked_object_and_the_answer(cobj):
    cf = cobj.counterfactual()
    differs = (cf.tokens != cobj.tokens)
    assert differs.sum(1).eq(1).all() and differs[:, cobj.positions["Q_OBJ"][0]].all()
    assert torch.equal(cf.answers, cobj.wrong) and torch.equal(cf.wrong, cobj.answers)
    assert (cf.answers != cobj.answers).all()
    assert torch.equal(cf.counterfactual().tokens, cobj.tokens)


def test_bad_sizes_fail_clearly():
    with pytest.raises(ValueError, match="at least 1"):
        make_colored_objects(0)


def test_wrong_color_rows_put_half_on_each_wrong_color(cobj):
    rows = wrong_color_rows(cobj)
    assert torch.allclose(rows.sum(1), torch.ones(len(cobj)))
    for i in range(5):
        right = COLOR_POSITIONS[int(cobj.asked[i])]
        assert rows[i, right] == 0 and sorted(rows[i].nonzero().flatten().tolist()) == sorted(
            set(COLOR_POSITIONS) - {right})


def test_flip_s2_to_io_changes_only_s2():
    ioi = make_ioi_dataset(12, seed=1)
    flip = flip_s2_to_io(ioi)
    differs = flip.tokens != ioi.tokens
    assert differs.sum(1).eq(1).all()
    assert differs[torch.arange(12), ioi.positions["S2"]].all()
    assert torch.equal(flip.tokens[torch.arange(12), ioi.positions["S2"]], ioi.io_tokens)


def _patterns(model, tokens, hooks=()):
    names = [hook_name("pattern", L) for L in range(model.cfg.n_layers)]
    logits, acts = capture(model, tokens, names, fwd_hooks=hooks)
    return logits, acts


def test_attention_edit_changes_only_the_chosen_heads_at_the_query(tiny_model):
    m = tiny_model
    tokens = torch.randint(100, 5000, (3, 7), generator=torch.Generator().manual_seed(0))
    query = torch.tensor([6, 5, 4])
    rows = torch.zeros(3, 7)
    rows[torch.arange(3), query - 2] = 0.25
    rows[torch.arange(3), 0] = 0.75
    logits0, base = _patterns(m, tokens)
    logits1, edited = _patterns(m, tokens, attention_edit_hooks(m, ["1.2"], query, rows=rows))
    p0, p1 = base[hook_name("pattern", 1)], edited[hook_name("pattern", 1)]
    b = torch.arange(3)
    assert torch.allclose(p1[b, 2, query], rows) and torch.allclose(p1[b, 2, query].sum(-1), torch.ones(3))
    changed = (p1 - p0).abs() > 0
    assert changed[:, [0, 1, 3]].sum() == 0  # other heads untouched
    mask = torch.ones_like(changed[:, 2])
    mask[b, query] = False
    assert changed[:, 2][mask].sum() == 0  # other query positions untouched
    assert torch.equal(base[hook_name("pattern", 0)], edited[hook_name("pattern", 0)])
    assert not torch.allclose(logits0, logits1)  # the new pattern reaches the output
    # a no-op edit (the model's own rows) changes nothing; nor does blocking nothing
    own = p0[b, 2, query]
    same, _ = _patterns(m, tokens, attention_edit_hooks(m, ["1.2"], query, rows=own))
    assert torch.allclose(same, logits0, atol=1e-5)
    none, _ = _patterns(m, tokens, attention_edit_hooks(m, ["1.2"], query, block=torch.zeros(3, 7, dtype=torch.bool)))
    assert torch.allclose(none, logits0, atol=1e-5)


def test_blocking_keys_zeroes_them_and_renormalises(tiny_model):
    m = tiny_model
    tokens = torch.randint(100, 5000, (2, 6), generator=torch.Generator().manual_seed(1))
    query = torch.tensor([5, 5])
    block = torch.zeros(2, 6, dtype=torch.bool)
    block[:, 1:3] = True
    _, base = _patterns(m, tokens)
    _, edited = _patterns(m, tokens, attention_edit_hooks(m, [(0, 1)], query, block=block))
    row0, row1 = base[hook_name("pattern", 0)][:, 1, 5], edited[hook_name("pattern", 0)][:, 1, 5]
    assert (row1[:, 1:3] == 0).all() and torch.allclose(row1.sum(-1), torch.ones(2))
    kept = row0.clone()
    kept[:, 1:3] = 0
    assert torch.allclose(row1, kept / kept.sum(-1, keepdim=True), atol=1e-6)


def test_attention_edit_rejects_impossible_rows(tiny_model):
    q = torch.tensor([3])
    with pytest.raises(ValueError, match="sums to"):
        attention_edit_hooks(tiny_model, ["1.0"], q, rows=torch.full((1, 5), 0.5))
    with pytest.raises(ValueError, match="not causal"):
        attention_edit_hooks(tiny_model, ["1.0"], q, rows=torch.tensor([[0, 0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="does not exist"):
        attention_edit_hooks(tiny_model, ["7.0"], q, rows=torch.tensor([[1.0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="exactly one"):
        attention_edit_hooks(tiny_model, ["1.0"], q)


def test_top_two_percent_per_stage_and_overlap_on_hand_made_maps():
    a = torch.zeros(24, 16)
    b = torch.zeros(24, 16)
    top_a = [(19, 1), (15, 14), (16, 15), (17, 4), (18, 5), (19, 15), (12, 3), (13, 4)]
    for i, (L, h) in enumerate(top_a):
        a[L, h] = -(10 + i)  # large negative effects count by their size
    for i, (L, h) in enumerate(top_a[2:] + [(11, 6), (11, 7)]):
        b[L, h] = 5 + i
    ta, tb = top_fraction_heads(a, 0.02), top_fraction_heads(b, 0.02)
    assert len(ta) == len(tb) == 8  # ceil(2% of 384)
    assert set(ta) == {f"{L}.{h}" for L, h in top_a}
    assert len(set(ta) & set(tb)) == 6
    a[0, :] = float("nan")  # unscored heads never count
    assert len(top_fraction_heads(a, 0.02)) == 8 and "0.0" not in top_fraction_heads(a, 0.02)
    with pytest.raises(ValueError):
        top_fraction_heads(a, 0)


def test_accuracies_match_a_hand_count(tiny_model, cobj):
    ds = cobj.subset(range(6))
    from helpers import logits_at_positions

    logits = logits_at_positions(tiny_model, ds.tokens, ds.positions["END"])
    full = (logits.argmax(-1) == ds.answers).float().mean().item()
    cand = ds.color_tokens
    choice = (cand[torch.arange(6), logits.gather(1, cand).argmax(-1)] == ds.answers).float().mean().item()
    got = accuracies(tiny_model, ds, choices=cand, batch_size=4)
    assert got == {"full": pytest.approx(full), "choice": pytest.approx(choice)}


def test_mover_color_attention_batched_equals_one_full_run(tiny_model, cobj):
    from helpers.cases.circuit_reuse import mover_color_attention

    ds = cobj.subset(range(7))
    movers = [(0, 1), (1, 0), (1, 2)]
    end, rows = ds.positions["END"], torch.arange(7)
    rows_hooks = attention_edit_hooks(tiny_model, [(1, 0)], end, rows=wrong_color_rows(ds))

    def by_hand(hooks):
        _, acts = capture(tiny_model, ds.tokens, [hook_name("pattern", L) for L in (0, 1)], fwd_hooks=hooks)
        at = torch.stack([acts[hook_name("pattern", L)][rows, h, end][:, list(COLOR_POSITIONS)]
                          for L, h in movers])  # [movers, n, 3]
        asked = torch.nn.functional.one_hot(ds.asked, 3).bool()
        return at[:, asked].mean(-1).mean().item(), at[:, ~asked].mean(-1).mean().item()

    batch_hooks = lambda idx: attention_edit_hooks(tiny_model, [(1, 0)], end[idx], rows=wrong_color_rows(ds)[idx])
    got = mover_color_attention(tiny_model, ds, movers, {"before": (), "after": batch_hooks}, batch_size=3)
    for name, hooks in (("before", ()), ("after", rows_hooks)):
        right, wrong = by_hand(hooks)
        assert got[name] == {"right color": pytest.approx(right, abs=1e-6), "each wrong color": pytest.approx(wrong, abs=1e-6)}
    assert got["before"] != got["after"]
    edited = mover_color_attention(tiny_model, ds, [(1, 0)], {"after": batch_hooks}, batch_size=3)
    assert edited == {"after": {"right color": pytest.approx(0.0, abs=1e-6), "each wrong color": pytest.approx(0.5)}}


def test_path_patching_on_gpt2_medium_shape_matches_the_reference(cobj):
    model = load_model("gpt2-medium", weights="random", seed=0, device="cpu")
    ds = cobj.subset(range(2))
    cf = ds.counterfactual()
    metric = LogitDiffMetric(ds.answers, ds.wrong, ds.positions["END"])
    senders = [(3, 5), (12, 3), (20, 15)]
    for kw in (dict(receivers="logits", sender_positions="END"),
               dict(receivers=[(21, 4)], receiver_input="q", sender_positions=None)):
        fast = path_patch(model, ds.tokens, cf.tokens, metric, senders=senders, named_positions=ds.positions, **kw)
        ref = path_patch_reference(model, ds.tokens, cf.tokens, metric, senders=senders,
                                   named_positions=ds.positions, **kw)
        assert torch.equal(fast.isnan(), ref.isnan()) and (~fast.isnan()).sum() == 3
        assert torch.allclose(fast[~fast.isnan()], ref[~ref.isnan()], atol=1e-4)


# ----------------------------------------------------------------------------- exercises


def _todo(*args):
    raise NotImplementedError


def test_wrong_color_rows_check_names_known_mistakes():
    from helpers.cases.circuit_reuse import COLOR_POSITIONS
    from helpers.exercises.circuit_reuse import check_wrong_color_rows, reference_wrong_color_rows

    assert check_wrong_color_rows(reference_wrong_color_rows).passed
    assert check_wrong_color_rows(_todo).status == "todo"
    rows = reference_wrong_color_rows(torch.tensor([2]), 62, COLOR_POSITIONS)
    assert rows.sum() == 1 and rows[0, 41] == rows[0, 45] == 0.5 and rows[0, 50] == 0

    def on_answer(a, s, c):
        return torch.stack([torch.zeros(s).index_fill(0, torch.tensor(c[int(x)]), 1.0) for x in a])

    assert "*wrong* colors" in check_wrong_color_rows(on_answer).message
    assert "sum to 1" in check_wrong_color_rows(lambda *a: 2 * reference_wrong_color_rows(*a)).message


def test_block_keys_check_names_known_mistakes():
    from helpers.exercises.circuit_reuse import check_block_keys, reference_block_keys

    assert check_block_keys(reference_block_keys).passed
    assert check_block_keys(_todo).status == "todo"

    def no_renorm(p, q, b):
        out = p.clone()
        r = torch.arange(len(q))
        out[r, :, q] = out[r, :, q].masked_fill(b[:, None, :], 0.0)
        return out

    assert "renormalise" in check_block_keys(no_renorm).message

    def everywhere(p, q, b):
        out = p.masked_fill(b[:, None, None, :], 0.0)
        return out / out.sum(-1, keepdim=True).clamp_min(1e-12)

    assert "every query position" in check_block_keys(everywhere).message
    assert check_block_keys(lambda p, q, b: p).status == "fail"


# ----------------------------------------------------------------------------- data checks


def test_question_span_is_located_and_covers_the_question(cobj):
    tok = gpt2_tokenizer()
    mask = cobj.question_mask()
    assert mask.shape == cobj.tokens.shape and (mask.sum(1) == 6).all()
    assert (cobj.positions["Q_START"] == 53).all()  # the paper's format: 53..58
    for i in range(len(cobj)):
        text = tok.decode(cobj.tokens[i][mask[i]].tolist())
        assert text == f" What color is the {cobj.objects[i][int(cobj.asked[i])]}?"
    assert torch.equal(cobj.counterfactual().question_mask(), mask)
    assert torch.equal(cobj.subset([0, 1]).question_mask(), mask[:2])


def _moved_list(surface, opening, colors, objects, asked):
    """62 tokens still, but the surface moves after the list: the colors move 3 earlier."""
    items = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {o}" for c, o in zip(colors, objects)]
    return (f"Q: {opening} {items[0]}, {items[1]}, and {items[2]} here on the {surface}. "
            f"What color is the {objects[asked]}?\nA:")


def _which_color(surface, opening, colors, objects, asked):
    """Same length, but the question no longer reads ' What color is the'."""
    items = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {o}" for c, o in zip(colors, objects)]
    return (f"Q: On the {surface}, {opening} {items[0]}, {items[1]}, and {items[2]}. "
            f"Which color is the {objects[asked]}?\nA:")


def _longer(surface, opening, colors, objects, asked):
    items = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {o}" for c, o in zip(colors, objects)]
    return (f"Q: On the big {surface}, {opening} {items[0]}, {items[1]}, and {items[2]}. "
            f"What color is the {objects[asked]}?\nA:")


@pytest.mark.parametrize("template, message", [
    (_longer, "not 62"),
    (_moved_list, "not at position 41"),
    (_which_color, "no ' What color is the' question"),
])
def test_a_template_change_that_breaks_the_token_facts_raises(monkeypatch, template, message):
    import helpers.cases.circuit_reuse as cr

    make_colored_objects(5, seed=0)  # the real template passes
    monkeypatch.setattr(cr, "_question", template)
    with pytest.raises(ValueError, match=message):
        make_colored_objects(5, seed=0)


def test_moved_color_positions_raise(monkeypatch):
    import helpers.cases.circuit_reuse as cr

    monkeypatch.setattr(cr, "COLOR_POSITIONS", (40, 45, 50))
    with pytest.raises(ValueError, match="color 1 is not at position 40"):
        make_colored_objects(5, seed=0)


def test_capitals_control_is_aligned_and_compares_two_capitals():
    from helpers.cases.circuit_reuse import capitals_control

    clean, cf = capitals_control(20, seed=2)
    assert clean.tokens.shape == cf.tokens.shape
    differs = clean.tokens != cf.tokens
    assert differs.sum(1).eq(1).all() and differs[torch.arange(20), clean.positions["COUNTRY"]].all()
    assert torch.equal(clean.wrong, cf.answers) and (clean.answers != clean.wrong).all()
    with pytest.raises(ValueError, match="at most 225"):
        capitals_control(226)


# ----------------------------------------------------------------------------- overlap


def _stage_maps():
    """Two hand-made circuits, three stages; the later stages score fewer senders, as path
    patching does (senders below the last receiver layer only)."""
    a = {"logits": torch.zeros(24, 16), "queries": torch.zeros(24, 16), "values": torch.zeros(24, 16)}
    a["queries"][19:] = float("nan")  # 304 senders
    a["values"][13:] = float("nan")  # 208 senders
    b = {s: v.clone() for s, v in a.items()}
    movers = [(19, 1), (15, 14), (16, 15), (17, 4), (18, 5), (19, 15), (10, 0), (10, 1)]
    for i, (L, h) in enumerate(movers):
        a["logits"][L, h] = -(10 + i)
    for i, (L, h) in enumerate(movers[1:6] + [(9, 0), (9, 1), (9, 2)]):
        b["logits"][L, h] = 5 + i
    inhib = [(12, 3), (13, 4), (13, 13), (8, 0), (8, 1), (8, 2), (8, 3)]
    for i, (L, h) in enumerate(inhib):
        a["queries"][L, h] = 3 + i
        b["queries"][L, h] = (3 + i) if i < 3 else 0.0
    for i, (L, h) in enumerate([(11, 6), (11, 7), (12, 15), (5, 0)]):
        b["queries"][L, h] = -(20 + i)
    for i, (L, h) in enumerate([(9, 3), (6, 4), (1, 0), (1, 1), (1, 2)]):
        a["values"][L, h] = 2 + i
        b["values"][L, h] = 2 + i
    return a, b


def test_stage_overlap_keeps_two_percent_of_the_heads_each_stage_scores():
    from helpers.cases.circuit_reuse import stage_overlap

    a, b = _stage_maps()
    t = stage_overlap(a, b)
    assert t["senders"].tolist() == [384, 304, 208]
    assert t["kept"].tolist() == [8, 7, 5]  # ceil(2% of the senders), not 8 everywhere
    assert t["n shared"].tolist() == [5, 3, 5]
    assert t.loc[1, "shared"] == "13.13, 13.4, 12.3"  # in the first circuit's rank order
    assert t["chance"].tolist() == pytest.approx([64 / 384, 49 / 304, 25 / 208])
    fixed = stage_overlap(a, b, k=8)
    assert fixed["kept"].tolist() == [8, 8, 8]
    b["values"][12] = float("nan")
    with pytest.raises(ValueError, match="same senders"):
        stage_overlap(a, b)
    with pytest.raises(ValueError, match="different stages"):
        stage_overlap(a, {"logits": b["logits"]})


def test_role_overlap_sorts_the_union_of_stages_by_role():
    from helpers.cases.circuit_reuse import MEDIUM_ROLES, role_overlap

    a, b = _stage_maps()
    t = role_overlap(a, b, MEDIUM_ROLES).set_index("role")
    assert t.loc["mover", "IOI"] == "15.14, 16.15, 17.4, 18.5, 19.15"
    assert t.loc["mover", "n shared"] == 5
    assert t.loc["negative mover", "IOI"] == "19.1" and t.loc["negative mover", "n shared"] == 0
    assert t.loc["content gatherer", "IOI"] == ""
    assert t.loc["content gatherer", "Colored Objects"] == "11.6, 11.7, 12.15"
    assert t.loc["inhibition", "n shared"] == 3
    assert t.loc["induction", "shared"] == "9.3" and t.loc["duplicate token", "shared"] == "6.4"
    assert "10.0" in t.loc["other", "IOI"] and "10.0" not in t.loc["other", "Colored Objects"]
    assert t["n shared"].sum() == 5 + 3 + 2 + 3  # movers, inhibition, 9.3/6.4, 1.0-1.2


def test_top_changes_rank_by_size_and_keep_the_sign():
    from helpers.cases.circuit_reuse import top_changes

    d = torch.zeros(3, 4)
    d[2, 1], d[0, 3], d[1, 0] = -5.0, 3.0, -1.0
    d[0, 0] = float("nan")
    assert top_changes(d, 3) == [("2.1", -5.0), ("0.3", 3.0), ("1.0", -1.0)]


def test_circuit_stages_rejects_unknown_stages():
    from helpers.cases.circuit_reuse import MEDIUM_ROLES, circuit_stages

    with pytest.raises(ValueError, match="unknown stages"):
        circuit_stages(None, None, None, MEDIUM_ROLES, only=["logit"])


def test_stage_choice_is_checked():
    from helpers.cases.circuit_reuse import STAGES, check_stage_choice

    every = [name for name, *_ in STAGES]
    assert check_stage_choice(every[::-1], ["logits"]) == every  # the paper's order back
    assert check_stage_choice(["movers' queries", "logits"], []) == every[:2]
    with pytest.raises(ValueError, match="leaves out 'logits'"):
        check_stage_choice(every[1:], [])
    with pytest.raises(ValueError, match="does not run"):
        check_stage_choice(["logits"], ["logits", "movers' queries"])
    with pytest.raises(ValueError, match="unknown stages \\['logit'\\]"):
        check_stage_choice(["logit"], [])


# ----------------------------------------------------------------------------- issue 31


def _lists(line):
    """(colors, objects) named in one 'Q: ...' line, in order, read from the text."""
    words = line.replace(",", " ").replace(".", " ").replace("?", " ").split()
    from helpers.cases.circuit_reuse import OBJECTS

    listing = words[: words.index("What")]
    return ([w for w in listing if w in COLORS], [w for w in listing if w in OBJECTS])


def test_the_query_avoids_the_example_colors_and_objects():
    """As in the authors' cobjs_data_42.json: no query shares a color or an object with its
    solved example (read back from the prompt text, not from the generator's fields)."""
    ds = make_colored_objects(1000, seed=42)
    for i, prompt in enumerate(ds.prompts):
        ex_line, ex_answer, q_line, _ = prompt.split("\n")
        ex_colors, ex_objects = _lists(ex_line)
        q_colors, q_objects = _lists(q_line)
        assert len(ex_colors) == len(q_colors) == 3 and len(ex_objects) == len(q_objects) == 3
        assert not set(ex_colors) & set(q_colors), (i, prompt)
        assert not set(ex_objects) & set(q_objects), (i, prompt)
        assert ex_answer[3:].lower() in ex_colors and ex_answer[3:].lower() not in q_colors
        assert tuple(q_colors) == ds.colors[i] and tuple(ex_colors) == ds.example_colors[i]
    assert not ds.shared_with_example().any()
    # the check can fail: a prompt set whose example shares a color is caught
    bad = ds.subset([0, 1])
    bad.example_colors = [bad.colors[0], bad.example_colors[1]]
    assert bad.shared_with_example().tolist() == [True, False]
    # every color still answers (8 colors, 5 left for the query after the example's 3)
    assert {c for cs in ds.colors for c in cs} == set(COLORS)


def test_stage_senders_follow_the_authors_sets():
    from helpers.cases.circuit_reuse import MEDIUM_ROLES, stage_senders

    assert len(stage_senders(24, 16, "logits")) == 384
    movers = stage_senders(24, 16, MEDIUM_ROLES.heads("mover"))
    assert len(movers) == 16 * 16 - 1 and max(L for L, _ in movers) == 15
    assert not set(movers) & set(MEDIUM_ROLES.heads("mover"))
    assert (15, 0) in movers and (16, 0) not in movers
    inhibition = stage_senders(24, 16, MEDIUM_ROLES.heads("inhibition"))
    assert len(inhibition) == 13 * 16 - 1 and (12, 3) not in inhibition and (12, 4) in inhibition
    assert stage_senders(4, 2, ["2.1", (3, 0)]) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    with pytest.raises(ValueError, match="at least one receiver"):
        stage_senders(4, 2, [])


def test_circuit_stages_passes_the_authors_senders(monkeypatch, cobj):
    import types

    import helpers.path_patching as pp
    from helpers.cases.circuit_reuse import MEDIUM_ROLES, circuit_stages, stage_senders

    calls = {}

    def fake(model, clean, corrupt, metric, *, receivers, senders, **kw):
        calls[str(receivers)[:20]] = (receivers, senders)
        return torch.zeros(24, 16)

    monkeypatch.setattr(pp, "path_patch", fake)
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=24, n_heads=16))
    ds = cobj.subset(range(2))
    circuit_stages(model, ds, ds.counterfactual(), MEDIUM_ROLES)
    assert len(calls) == 3
    for receivers, senders in calls.values():
        assert senders == stage_senders(24, 16, receivers)
    assert sorted(len(s) for _, s in calls.values()) == [207, 255, 384]


def _tiny_reference(model, ds, hooks):
    from helpers import logits_at_positions

    return logits_at_positions(model, ds.tokens, ds.positions["END"], fwd_hooks=hooks)


def test_zero_value_hooks_silence_the_head_everywhere_and_nothing_else(tiny_model, cobj):
    from helpers.interventions import zero_value_hooks

    ds = cobj.subset(range(3))
    _, base = _patterns(tiny_model, ds.tokens)
    names = [hook_name("z", L) for L in (0, 1)]
    _, plain = capture(tiny_model, ds.tokens, names)
    _, zeroed = capture(tiny_model, ds.tokens, names, fwd_hooks=zero_value_hooks(tiny_model, ["1.2"]))
    z0, z1 = plain[hook_name("z", 1)], zeroed[hook_name("z", 1)]
    assert (z1[:, :, 2] == 0).all() and (z0[:, :, 2] != 0).any()  # every position
    assert torch.allclose(z1[:, :, [0, 1, 3]], z0[:, :, [0, 1, 3]])  # other heads untouched
    assert torch.equal(zeroed[hook_name("z", 0)], plain[hook_name("z", 0)])  # earlier layer too
    with pytest.raises(ValueError, match="does not exist"):
        zero_value_hooks(tiny_model, ["5.0"])


def test_layer_edited_logits_equal_full_runs(tiny_model, monkeypatch):
    from helpers.interventions import layer_edited_logits, zero_value_hooks

    tokens = torch.randint(100, 5000, (7, 10), generator=torch.Generator().manual_seed(4))
    query = torch.tensor([9, 9, 6, 7, 9, 6, 8])
    conditions = {"none": (), "1.2": zero_value_hooks(tiny_model, ["1.2"]),
                  "0.1+1.3": zero_value_hooks(tiny_model, ["0.1", "1.3"])}
    from helpers import logits_at_positions

    want = {name: logits_at_positions(tiny_model, tokens, query, fwd_hooks=h) for name, h in conditions.items()}
    assert (want["1.2"] - want["none"]).abs().max() > 1e-3  # the ablations reach the output
    got = layer_edited_logits(tiny_model, tokens, query, conditions, batch_size=3)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    top = layer_edited_logits(tiny_model, tokens, query, conditions, batch_size=4,
                              reduce=lambda lg, idx: lg.argmax(-1))
    for name in want:
        assert torch.equal(top[name], want[name].argmax(-1))
    # a cached residual that does not reproduce the run: every condition runs in full
    import helpers._sweeps as sweeps

    real = sweeps._capture

    def spoiled(model, toks, names, until=None):
        acts = real(model, toks, names, until=until)
        return {k: (v + 1.0 if "resid_pre" in k else v) for k, v in acts.items()}

    monkeypatch.setattr(sweeps, "_capture", spoiled)
    fallback = layer_edited_logits(tiny_model, tokens, query, conditions, batch_size=3)
    for name in ("1.2", "0.1+1.3"):
        assert torch.allclose(fallback[name], want[name], atol=1e-5), name
    with pytest.raises(ValueError, match="inside the blocks"):
        layer_edited_logits(tiny_model, tokens, query, {"x": [(hook_name("embed"), lambda t, hook: t)]})


def test_condition_results_match_full_runs_and_count_new_mistakes(tiny_model, cobj):
    from helpers.cases.circuit_reuse import (accuracy_table, condition_results, placebo_color_rows,
                                             repair_conditions)
    from helpers import Circuit

    ds = cobj.subset(range(8))
    roles = Circuit.from_labels("tiny", {"inhibition": ("1.0",), "negative mover": ("1.3",),
                                         "content gatherer": ("0.2",), "mover": ("1.1",)}, "END", "test")
    conditions = repair_conditions(tiny_model, ds, random_sets=[[(0, 1)]], roles=roles)
    assert list(conditions) == ["vanilla", "inhibition only", "negative mover only", "both", "placebo",
                                "random heads 0", "gatherers knocked out"]
    res = condition_results(tiny_model, ds, conditions, movers=[(1, 1)], batch_size=3,
                            choices=ds.color_tokens)
    end = ds.positions["END"]
    wrong, third = wrong_color_rows(ds), placebo_color_rows(ds)
    assert torch.allclose(third.sum(1), torch.ones(8)) and (third[:, list(COLOR_POSITIONS)] == 1 / 3).all()
    refs = {"vanilla": [], "both": attention_edit_hooks(tiny_model, ["1.0", "1.3"], end, rows=wrong),
            "placebo": attention_edit_hooks(tiny_model, ["1.0", "1.3"], end, rows=third),
            "gatherers knocked out": attention_edit_hooks(tiny_model, ["0.2"], end,
                                                          block=ds.question_mask())}
    for name, hooks in refs.items():
        logits = _tiny_reference(tiny_model, ds, hooks)
        assert torch.equal(res[name]["correct"], (logits.argmax(-1) == ds.answers).float()), name
    _, acts = capture(tiny_model, ds.tokens, [hook_name("pattern", 1)])
    seen = acts[hook_name("pattern", 1)][torch.arange(8), 1, end][:, list(COLOR_POSITIONS)]
    asked = torch.nn.functional.one_hot(ds.asked, 3).bool()
    assert torch.allclose(res["vanilla"]["right color"], seen[asked], atol=1e-6)
    assert torch.allclose(res["vanilla"]["each wrong color"], seen[~asked].view(8, 2).mean(-1), atol=1e-6)
    # every-position conditions: the authors' ablation, checked against full runs
    from helpers.cases.circuit_reuse import ablation_conditions
    from helpers.interventions import zero_value_hooks

    abl = condition_results(tiny_model, ds, ablation_conditions(tiny_model, roles=roles), every_position=True)
    logits = _tiny_reference(tiny_model, ds, zero_value_hooks(tiny_model, ["0.2"]))
    assert torch.equal(abl["content gatherers"]["correct"], (logits.argmax(-1) == ds.answers).float())
    with pytest.raises(ValueError, match="END only"):
        condition_results(tiny_model, ds, {}, movers=[(1, 1)], every_position=True)
    # the table counts new mistakes and fixes prompt by prompt
    made = {"vanilla": {"correct": torch.tensor([1.0, 1, 0, 0, 1])},
            "edit": {"correct": torch.tensor([1.0, 0, 1, 1, 1])}}
    t = accuracy_table(made, paper={"vanilla": 0.5})
    assert t.loc["edit", "new mistakes"] == 1 and t.loc["edit", "fixed"] == 2
    assert t.loc["edit", "accuracy"] == pytest.approx(0.8)
    assert t.loc["edit", "SE"] == pytest.approx((0.8 * 0.2 / 5) ** 0.5)
    assert t.loc["vanilla", "new mistakes"] == 0 and t.loc["vanilla", "paper"] == 0.5
    with pytest.raises(ValueError, match="baseline"):
        accuracy_table(made, baseline="none")


def test_random_heads_are_layer_matched_seeded_and_avoid_the_excluded():
    from helpers.cases.circuit_reuse import MEDIUM_ROLES, random_heads

    named = MEDIUM_ROLES.heads()
    draws = random_heads(24, 16, 4, 50, layers=[12, 13, 13, 19], exclude=named, seed=1)
    assert draws == random_heads(24, 16, 4, 50, layers=[12, 13, 13, 19], exclude=named, seed=1)
    for d in draws:
        assert [L for L, _ in d] == [12, 13, 13, 19] and len(set(d)) == 4
        assert not set(d) & set(named)
    assert len({tuple(d) for d in draws}) > 40
    anywhere = random_heads(24, 16, 3, 20, seed=0)
    assert len({L for d in anywhere for L, _ in d}) > 5
    with pytest.raises(ValueError, match="one layer per head"):
        random_heads(24, 16, 3, 1, layers=[11, 12])
    with pytest.raises(ValueError, match="no head left"):
        random_heads(2, 1, 2, 1, layers=[0, 0])


def _measured_card_inputs():
    g = torch.Generator().manual_seed(0)

    def hits(p, n):
        return (torch.rand(n, generator=g) < p).float()

    attn = {"right color": torch.rand(500, generator=g), "each wrong color": torch.rand(500, generator=g)}
    repair = {"vanilla": {"correct": hits(0.5, 500), **attn},
              "both": {"correct": hits(0.93, 500), **attn},
              "inhibition only": {"correct": hits(0.8, 500)}, "negative mover only": {"correct": hits(0.78, 500)},
              "placebo": {"correct": hits(0.5, 500)}, "random heads 0": {"correct": hits(0.5, 500)}}
    ablation = {"vanilla": {"correct": hits(0.5, 200)}, "content gatherers": {"correct": hits(0.33, 200)},
                "random heads 0": {"correct": hits(0.5, 200)}}
    every = [f"{L}.{h}" for L in range(24) for h in range(16)]
    first = ["19.1", "15.14", "16.15", "17.4", "18.5", "19.15"]
    logits_rank = first + [h for h in every if h not in first]
    q = [f"{L}.{h}" for L in range(16) for h in range(16) if f"{L}.{h}" != "15.14"]
    queries_rank = ["12.3", "13.4", "13.13"] + [h for h in q if h not in ("12.3", "13.4", "13.13")]
    ioi = ["19.1", "15.14", "16.15", "17.4", "18.5", "12.3", "13.4"]
    return dict(prompt_tokens=62, shared_with_example=0,
                senders={"logits": 384, "movers' queries": 255, "inhibition heads' values": 207},
                ioi_rankings={"logits": logits_rank, "movers' queries": queries_rank},
                repair=repair, ablation=ablation,
                circuits={"IOI": ioi, "Colored Objects": ioi[1:] + ["11.6"]},
                control={"IOI": ioi, "Colored Objects": ioi[1:], "capitals": ["1.1", "19.1"]},
                per_stage_8=(20, 24))


def test_scorecard_rows_fail_at_their_nulls_and_secondary_numbers_are_not_graded():
    from helpers.cases.circuit_reuse import build_scorecard
    from helpers.scorecard import DIFFERS, FOR_COMPARISON, HOLDS, NOT_APPLICABLE, NOT_RUN

    card = build_scorecard(False, _measured_card_inputs())
    graded = [r for r in card.rows if r.role == "graded"]
    assert len(graded) == 10
    assert all(v in (HOLDS, FOR_COMPARISON) for v in card.verdicts())  # a run like the paper's
    null = card.null_run()
    assert all(v == DIFFERS for r, v in zip(null.rows, null.verdicts()) if r.role == "graded")
    info = {r.reference.value for r in card.rows if r.role == "info"}
    assert {0.815, 0.781, -8.7, 2.7, 0, 0.35, 0.499, 0.25} <= info
    assert all(r.reference.confidence != "secondary source" for r in card.rows
               if r.role == "graded" and r.criterion["kind"] == "band")
    # a wrong data fact is caught; on the stand-in graded rows are n/a, data checks still judged
    bad = dict(_measured_card_inputs(), shared_with_example=3)
    stand_in = build_scorecard(True, bad)
    verdicts = dict(zip([r.quantity for r in stand_in.rows], stand_in.verdicts()))
    assert verdicts["queries sharing a color or object with the example"] == DIFFERS
    assert all(v == NOT_APPLICABLE for r, v in zip(stand_in.rows, stand_in.verdicts()) if r.role == "graded")
    # nothing measured (a smoke build): not run, never a failure
    empty = build_scorecard(False, {})
    assert all(v in (NOT_RUN, FOR_COMPARISON) for v in empty.verdicts())
