"""Successor heads chapter: the dataset on the real tokenizer, the screen on planted heads,
the SAE trainer on planted features, vector arithmetic on a planted mod-10 structure."""

from __future__ import annotations

import pytest
import torch

from conftest_patching import boot
from helpers import (
    argmax_score,
    dla_by_head,
    effective_ov_logits,
    gpt2_tokenizer,
    head_direct_effects,
    hook_name,
    match_features,
    ov_logits,
    token_inputs,
    top_heads,
    train_probe,
    train_sae,
)
from helpers.cases import successor_heads as sh
from helpers.models import ModelSpec

# --------------------------------------------------------------------------- the data


def test_dataset_294_single_tokens_on_real_tokenizer():
    tok = gpt2_tokenizer()
    data = sh.make_succession_dataset(tokenizer=tok)
    assert len(data) == 294
    table = data.table()
    assert table["tokens"].tolist() == [200, 20, 10, 7, 7, 12, 12, 26]
    for i in range(len(data)):
        word = data.fields["word"][i]
        assert tok.encode(" " + word) == [int(data.token_ids[i])]
    assert data.token_ids.unique().numel() == 293  # " May": a month and a month prefix
    # wrap-around: Sunday → Monday, Dec → Jan; no successor for 200, twenty, tenth, Z
    ids = {w: tok.encode(" " + w)[0] for w in ("Sunday", "Monday", "Dec", "Jan", "12", "13")}
    ans = dict(zip(data.token_ids.tolist(), data.answers.tolist()))
    assert ans[ids["Sunday"]] == ids["Monday"] and ans[ids["Dec"]] == ids["Jan"]
    assert ans[ids["12"]] == ids["13"]
    last = [w for w, h in zip(data.fields["word"], data.has_successor) if not h]
    assert last == ["200", "twenty", "tenth", "Z"]
    assert int(data.has_successor.sum()) == 290


def test_title_case_number_words_are_not_single_tokens():
    with pytest.raises(ValueError, match="Thirteen"):
        sh.check_single_tokens(["Thirteen"], gpt2_tokenizer())


def test_unknown_task_and_bad_inputs():
    with pytest.raises(ValueError, match="unknown"):
        sh.make_succession_dataset(tasks=["weekdays"])
    data = sh.make_succession_dataset(tasks=["days"])
    with pytest.raises(KeyError, match="unknown task"):
        data.task_rows("months")
    with pytest.raises(ValueError, match="logits must be"):
        sh.scores_from_logits(torch.zeros(3, 3), data)
    with pytest.raises(ValueError, match="restrict"):
        sh.scores_from_logits(torch.zeros(7, 7), data, restrict="ordinal")
    with pytest.raises(ValueError, match="newline"):
        sh.make_numbered_lists(["no list here"])


def test_numbered_lists_tokenize():
    tok = gpt2_tokenizer()
    lists = sh.make_numbered_lists(tokenizer=tok)
    assert len(lists) == len(sh.NUMBERED_LISTS)
    for p, a, k in zip(lists.prompts, lists.answers.tolist(), lists.fields["next"]):
        assert tok.decode([a]) == str(k) and p.endswith("\n")


def test_text_sample_ships_with_licence():
    docs, source = sh.load_text_sample(100)
    assert len(docs) >= 8 and "CC0" in source
    assert "CC0" in sh._TEXT_FILE.read_text().split("---")[0]


# --------------------------------------------------------------------------- scoring


def _perm_logits(data, successor: bool) -> torch.Tensor:
    n = len(data)
    logits = torch.zeros(n, n)
    for i, j in enumerate(data.successor_row.tolist()):
        logits[i, j if (successor and j >= 0) else i] = 1.0
    return logits


@pytest.mark.parametrize("restrict", ["task", "all"])
def test_succession_score_perfect_successor_is_1_identity_is_0(restrict):
    data = sh.make_succession_dataset()
    both = torch.stack([_perm_logits(data, True), _perm_logits(data, False)])
    out = sh.scores_from_logits(both, data, restrict=restrict)
    assert out["score"].tolist() == [1.0, 0.0]
    for task, s in out["per_task"].items():
        assert s.tolist() == [1.0, 0.0], task


def test_argmax_score_valid_and_errors():
    logits = torch.eye(3)[None]
    assert argmax_score(logits, torch.tensor([0, 1, 0]), torch.tensor([True, True, False])).item() == 1.0
    with pytest.raises(ValueError, match="targets must be"):
        argmax_score(logits, torch.tensor([0, 1]))


TINY2 = ModelSpec("tiny-successor", "openai-community/gpt2", n_layers=2, n_heads=2, d_model=64)
PLANTED = (1, 1)
ANTI = (1, 0)
CLASS_DIM = 40


def _planted_successor_model(data):
    """Head 1.1's OV maps each task token (embedding e_k + 2·e_class) to its successor's
    direction. Head 1.0 is an anti-successor with a class boost: it writes mostly along
    the direction every task token shares, and a little towards the predecessor."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d, dh = TINY2.d_model, TINY2.d_head
    config = GPT2Config(n_layer=2, n_head=2, n_embd=d, n_positions=32, vocab_size=TINY2.d_vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        hf = GPT2LMHeadModel(config)
    ids = data.token_ids.tolist()
    k_of = {t: k for k, t in enumerate(ids)}
    L, h = PLANTED
    with torch.no_grad():
        wte = hf.transformer.wte.weight
        for k, t in enumerate(ids):
            wte[t] = 0.0
            wte[t, k] = 8.0
            wte[t, CLASS_DIM] = 16.0
        attn = hf.transformer.h[L].attn
        for head in (h, ANTI[1]):
            attn.c_attn.weight[:, 2 * d + head * dh: 2 * d + (head + 1) * dh] = 0.0
            attn.c_attn.bias[2 * d + head * dh: 2 * d + (head + 1) * dh] = 0.0
            attn.c_proj.weight[head * dh:(head + 1) * dh] = 0.0
        a0 = ANTI[1] * dh
        for k, t in enumerate(ids):
            attn.c_attn.weight[k, 2 * d + h * dh + k] = 1.0
            attn.c_attn.weight[k, 2 * d + a0 + k] = 1.0
            a = int(data.answers[k])
            if a >= 0:
                attn.c_proj.weight[h * dh + k, k_of[a]] = 4.0
            prev = [j for j in range(len(ids)) if int(data.successor_row[j]) == k]
            if prev:
                attn.c_proj.weight[a0 + k, prev[0]] = 1.0
        # the class boost reads the shared direction itself (value slot dh − 1 is free)
        attn.c_attn.weight[CLASS_DIM, 2 * d + a0 + dh - 1] = 1.0
        attn.c_proj.weight[a0 + dh - 1, CLASS_DIM] = 6.0
    return boot(hf, TINY2, seed=5)


@pytest.fixture(scope="module")
def planted():
    data = sh.make_succession_dataset(tasks=["days", "months", "ordinals"])
    assert len(data) < TINY2.d_head
    return data, _planted_successor_model(data)


def test_planted_successor_head_ranked_first(planted):
    data, model = planted
    out = sh.succession_scores(model, data, inputs="embed")
    assert top_heads(out["score"], 1)[0][0] == "1.1"
    assert out["score"][PLANTED].item() == 1.0
    for task in data.task_names:
        assert out["per_task"][task][PLANTED].item() == 1.0
    others = out["score"].clone()
    others[PLANTED] = float("nan")
    assert torch.nan_to_num(others, nan=0).max() < 0.6
    all_restrict = sh.succession_scores(model, data, inputs="embed", restrict="all")
    assert all_restrict["score"][PLANTED].item() == 1.0


def test_naive_score_ranks_the_anti_successor_first_within_task_does_not(planted):
    data, model = planted
    out = sh.succession_scores(model, data, inputs="embed")
    assert top_heads(out["naive"], 1)[0][0] == "1.0"  # the class boost wins the naive score
    assert out["score"][ANTI].item() == 0.0  # ... but the successor never wins in its task
    x = token_inputs(model, data.token_ids, "embed")
    logits = effective_ov_logits(model, x, columns=data.token_ids)
    shares = sh.offset_shares(logits, data)
    torch.testing.assert_close(shares[1], out["score"])  # +1 is the succession score
    n_first = sum(1 for t in data.task_names if t not in sh.WRAPS)  # " first" has no predecessor
    assert shares[-1][ANTI].item() == pytest.approx(1 - n_first / out["n_scored"])
    assert shares[1][PLANTED].item() == 1.0 and shares[-1][PLANTED].item() == 0.0
    assert sh.head_rank(out["naive"], "1.0") == 1 and sh.head_rank(out["score"], "1.1") == 1


def test_offset_shares_on_permutations():
    data = sh.make_succession_dataset()
    n = len(data)
    pred = torch.zeros(n, n)
    for j, i in enumerate(data.successor_row.tolist()):
        if i >= 0:
            pred[i, j] = 1.0
    pred[pred.sum(1) == 0, pred.sum(1) == 0] = 1.0  # " 1", " one", " first", " A": no predecessor
    both = torch.stack([_perm_logits(data, True), _perm_logits(data, False), pred])
    shares = sh.offset_shares(both, data)
    assert shares[1].tolist() == [1.0, 0.0, 0.0]
    assert shares[0].tolist()[:2] == [0.0, 1.0]
    assert shares[-1][2].item() == pytest.approx(286 / 290)  # Monday → Sunday counts as −1
    with pytest.raises(ValueError, match="logits must be"):
        sh.offset_shares(torch.zeros(3, 3), data)


def test_single_token_share_counts_on_the_tokenizer():
    tok = gpt2_tokenizer()
    assert sh.single_token_share(tok) == 1.0

    class SplitMay:
        def encode(self, text):
            return [1, 2] if text == " May" else [1]

    assert sh.single_token_share(SplitMay()) == pytest.approx(292 / 294)


def test_sequence_prompts_on_real_tokenizer():
    tok = gpt2_tokenizer()
    data = sh.make_succession_dataset(tokenizer=tok)
    seq = sh.make_sequence_prompts(data, tokenizer=tok)
    shuf = sh.make_sequence_prompts(data, shuffle=True, tokenizer=tok)
    # wrap tasks keep every item, the others lose the first two: 290 − 2 × 4
    assert len(seq) == len(shuf) == 282
    assert (seq.lengths == 7).all()  # BOS + 3 single-token items + 3 commas
    i = seq.fields["task"].index("days")
    assert seq.prompts[i] == " Saturday, Sunday, Monday," and tok.decode([int(seq.answers[i])]) == " Tuesday"
    assert seq.fields["pred_pos"][i] == 6 and seq.fields["answer_pos"][i] == 1
    assert torch.equal(seq.answers, shuf.answers)
    last = seq.tokens[torch.arange(len(seq)), seq.position("END") - 1]
    last_shuf = shuf.tokens[torch.arange(len(shuf)), shuf.position("END") - 1]
    assert not (last == last_shuf).any()  # the last item always moves
    assert len(sh.make_sequence_prompts(data, max_per_task=5, tokenizer=tok)) == 8 * 5


def test_context_scores_naive_vs_within_task():
    data = sh.make_succession_dataset(tasks=["days", "months"])
    seq = sh.make_sequence_prompts(data)
    logits = {}
    for task in ("days", "months"):
        idx = [i for i, t in enumerate(seq.fields["task"]) if t == task]
        size = len(data.task_rows(task))
        lg = torch.zeros(len(idx), 1, 2, size)
        for r, i in enumerate(idx):
            lg[r, 0, 0] += 10.0  # head 0.0 boosts every item of the task ...
            lg[r, 0, 0, seq.fields["pred_pos"][i]] += 1.0  # ... and the predecessor most
            lg[r, 0, 1, seq.fields["answer_pos"][i]] += 2.0  # head 0.1: the successor
        logits[task] = lg
    out = sh.scores_from_context_logits(logits, seq)
    assert top_heads(out["naive"], 1)[0][0] == "0.0"
    assert out["within"].tolist() == [[0.0, 1.0]]
    assert out["predecessor"].tolist() == [[1.0, 0.0]]
    assert out["per_task"]["days"]["within"].tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="logit rows"):
        sh.scores_from_context_logits({"days": logits["days"][:2]}, seq)


def test_head_logits_at_equals_direct_effects(tiny_model):
    from helpers.effective_ov import head_logits_at

    tokens = torch.randint(0, 1000, (5, 6))
    pos = torch.tensor([5, 3, 1, 5, 2])
    cols = torch.tensor([11, 12, 13])
    out = head_logits_at(tiny_model, tokens, pos, cols, batch_size=2)  # [5, L, H, 3]
    for c in range(3):
        ref = head_direct_effects(tiny_model, tokens, torch.arange(5), pos, cols[c].repeat(5))
        torch.testing.assert_close(out[..., c], ref["dla"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        head_logits_at(tiny_model, tokens, pos + 3, cols)


def test_sequence_scores_naive_is_the_mean_dla_of_the_answer(tiny_model):
    data = sh.make_succession_dataset(tasks=["days", "letters"])
    seq = sh.make_sequence_prompts(data, max_per_task=4)
    out = sh.sequence_scores(tiny_model, seq, data, batch_size=3)
    ref = head_direct_effects(tiny_model, seq.tokens, torch.arange(len(seq)), seq.position("END"),
                              seq.answers)["dla"]
    torch.testing.assert_close(out["naive"], ref.mean(0), atol=1e-4, rtol=1e-4)
    days = [i for i, t in enumerate(seq.fields["task"]) if t == "days"]
    torch.testing.assert_close(out["per_task"]["days"]["naive"], ref[days].mean(0), atol=1e-4, rtol=1e-4)


def test_ranking_table_and_letter_effects(tiny_model):
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.9]])
    table = sh.ranking_table({"score": scores, "other": -scores}, "score")
    assert table["head"].tolist() == ["0.1", "1.1", "1.0", "0.0"] and table.index[0] == 1
    assert sh.head_rank(scores, "1.1") == 1 and sh.head_rank(scores, "0.0") == 4
    with pytest.raises(ValueError, match="sort_by"):
        sh.ranking_table({"score": scores}, "lift")
    tokens = torch.randint(0, 1000, (4, 6))
    answers = torch.randint(32, 58, (4, 2))
    pos = {1: torch.full((4,), 3), 2: torch.full((4,), 4)}
    df = sh.letter_position_effects(tiny_model, tokens, pos, answers, ["1.2"])
    drop = head_direct_effects(tiny_model, tokens, torch.arange(4), pos[2], answers[:, 1])["drop"].mean(0)
    assert df.loc[2, "1.2: mean drop"] == pytest.approx(drop[1, 2].item(), abs=1e-5)
    assert df.loc[2, "1.2: rank"] == sh.head_rank(drop, "1.2")


def test_effective_ov_matches_ov_logits_and_mlp0_matches_the_model(planted):
    data, model = planted
    x = token_inputs(model, data.token_ids, "mlp0")
    full = effective_ov_logits(model, x, heads=["1.1"])
    assert full[0].isnan().all() and not full[1, 1].isnan().any()
    torch.testing.assert_close(full[1, 1], ov_logits(model, "1.1", x).float(), atol=1e-4, rtol=1e-4)
    # MLP0 on the bare embedding equals the model's MLP0 when block 0's residual is W_E[t]
    emb = model.W_E[data.token_ids]
    store = {}

    def set_mid(t, hook):
        return emb[:, None, :].expand_as(t).clone()

    def save(t, hook):
        store["mlp"] = t.detach()

    model.run_with_hooks(data.token_ids[:, None], fwd_hooks=[
        (hook_name("resid_mid", 0), set_mid), (hook_name("mlp_out", 0), save)])
    torch.testing.assert_close(store["mlp"][:, 0], x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(token_inputs(model, data.token_ids, "embed+mlp0"), emb + x)
    with pytest.raises(ValueError, match="kind"):
        token_inputs(model, data.token_ids, "resid")


def test_head_direct_effects_equal_dla(tiny_model):
    tokens = torch.randint(0, 1000, (3, 6))
    rows = torch.tensor([0, 1, 2, 2])
    pos = torch.tensor([5, 3, 1, 5])
    answers = torch.tensor([11, 12, 13, 14])
    out = head_direct_effects(tiny_model, tokens, rows, pos, answers, batch_size=2)
    _, cache = tiny_model.run_with_cache(tokens[rows])
    ref = dla_by_head(tiny_model, cache, answers, positions=pos)  # [L, H, m]
    torch.testing.assert_close(out["dla"], ref.permute(2, 0, 1).float(), atol=1e-4, rtol=1e-4)
    same = head_direct_effects(tiny_model, tokens, [1, 1], [4, 4], [7, 7])  # mean = itself
    torch.testing.assert_close(same["drop"], torch.zeros_like(same["drop"]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="outside"):
        head_direct_effects(tiny_model, tokens, rows, pos + 3, answers)


# --------------------------------------------------------------------------- SAE and probe


def test_sae_recovers_planted_sparse_features():
    gen = torch.Generator().manual_seed(0)
    d, k, n = 24, 8, 1000
    true = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:k]  # orthonormal rows
    active = (torch.rand(n, k, generator=gen) < 0.15).float()
    x = (active * (1 + torch.rand(n, k, generator=gen))) @ true
    sae = train_sae(x, 16, l1=0.1, steps=300, lr=3e-2, seed=0)
    cos = true @ sae.W_dec.T  # [k, F]
    assert cos.max(1).values.min() > 0.9, cos.max(1).values
    assert sae.losses["explained_variance"] > 0.9
    labels = active.argmax(1)
    single = active.sum(1) == 1
    m = match_features(sae.encode(x[single]), labels[single], k)
    assert min(r["coverage"] for r in m) > 0.9
    with pytest.raises(ValueError, match="x must be"):
        train_sae(torch.zeros(1, 4), 2)


def test_probe_learns_planted_classes():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 16, generator=gen) * 3
    labels = torch.arange(200) % 10
    x = centres[labels] + 0.3 * torch.randn(200, 16, generator=gen)
    W, b = train_probe(x, labels, 10, steps=150)
    assert (x @ W.T + b).argmax(-1).eq(labels).float().mean() == 1.0
    with pytest.raises(ValueError, match="labels"):
        train_probe(x, labels + 5, 10)


def test_mod10_analysis_on_planted_residues():
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(48, 48, generator=gen))[0]
    values = torch.arange(1, 121)
    x = 3 * basis[values % 10] + 3 * basis[10 + (values // 10) % 12]
    out = sh.mod10_analysis(x, values % 10, seeds=(0,), n_features=24, l1=0.1, steps=300,
                            probe_steps=150)
    assert out["probe_accuracy"] == 1.0
    assert out["coverage"].mean() > 0.8 and out["cosine"].mean() > 0.5


# --------------------------------------------------------------------------- vector arithmetic


def _planted_mod10(known: int = 10):
    """rep(i) = decade direction + residue direction; the readout reads both and answers
    the successor (same decade, next residue). Residues ≥ ``known`` are invisible to it."""
    basis = torch.eye(40)
    f = basis[:10]
    dec = basis[10:20]
    cand = list(range(1, 61))
    W = torch.stack([dec[(c - 1) // 10] + (f[(c - 1) % 10] if (c - 1) % 10 < known else 0 * f[0])
                     for c in cand])  # [m, d]: candidate c wants its predecessor's residue

    def readout(r):
        return r @ W.T

    idx = list(range(20, 30))
    reps = torch.stack([dec[i // 10] + f[i % 10] for i in idx])  # rep(i) → candidate i + 1
    return reps, idx, f, readout, cand


def test_vector_arithmetic_succeeds_on_planted_structure():
    reps, idx, f, readout, cand = _planted_mod10()
    grid = sh.vector_arithmetic_grid(reps, idx, f, readout, cand)
    assert grid.all()


def test_vector_arithmetic_fails_where_features_are_unknown():
    reps, idx, f, readout, cand = _planted_mod10(known=5)
    grid = sh.vector_arithmetic_grid(reps, idx, f, readout, cand)
    assert not grid[:, 5:].any()
    assert grid[:, :5].all()
    with pytest.raises(ValueError, match="features must be"):
        sh.vector_arithmetic_grid(reps, idx, f[:5], readout, cand)


def test_vector_arithmetic_wraps_for_months():
    basis = torch.eye(16)
    f = basis[:10]
    cand = list(range(1, 13))
    W = torch.stack([f[((c - 2) % 12 + 1) % 10] for c in cand])  # c reads its predecessor
    reps = torch.stack([f[i % 10] for i in range(1, 13)])
    grid = sh.vector_arithmetic_grid(reps, list(range(1, 13)), f, lambda r: r @ W.T, cand, wrap=12)
    assert grid[10, 0]  # November (11) edited to residue 0 → October (10) → November
    assert grid[11, 2]  # December (12) with its own residue → 13 wraps to January (1)


# The exercises' checks are tested with the teacher's references in tests/test_exercises.py.


# --------------------------------------------------------------------------- issue 29


def test_single_token_share_on_the_bridges_tokenizer_which_adds_bos(tiny_model):
    tok = tiny_model.tokenizer
    assert len(tok.encode(" Monday")) == 2  # the bridge's tokenizer prepends BOS ...
    assert sh.single_token_share(tok) == 1.0  # ... which the count leaves out


def _wins(text: str, answer: str):
    tok = gpt2_tokenizer()
    ids = tok.encode(text)
    return sh.categorise_wins(tok, torch.tensor([ids]), [0], [len(ids) - 1],
                              [tok.encode(answer)[0]])[0]


@pytest.mark.parametrize("text, answer, category", [
    (" Monday, Tuesday,", " Wednesday", "incrementing"),
    (" 9 and 4 and", " 5", "incrementing"),
    # the predecessor occurs, but not as the most recent item of its task
    (" 4 then 9 then", " 5", "other"),
    (" Monday, Friday, and", " Tuesday", "other"),
    (" 3 and 7 and", " 9", "greater-than"),
    (" 9 and 3 and", " 7", "greater-than"),
    (" 7 and 9 and", " 3", "other"),
    # the pronoun and the article are not acronyms, even after capitalised words
    (" Alice and Ian said that", " I", "other"),
    # the pronoun " I" and the article " A" are not letters of a sequence on their own
    (" Yesterday I", " J", "other"),
    (" Then A", " B", "other"),
    (" G, H, I,", " J", "incrementing"),
    (" F, G, H,", " I", "incrementing"),
    (" In Austin there is", " A", "other"),
    (" the Central Processing Unit (", "C", "acronym"),
    (" the central processing unit (", "C", "other"),  # no capitalised word starts with C
])
def test_categorise_wins_counter_examples(text, answer, category):
    assert _wins(text, answer) == category


def test_succession_hits_task_mean_chance_and_ranking():
    data = sh.make_succession_dataset(tasks=["days", "letters"])
    both = torch.stack([_perm_logits(data, True), _perm_logits(data, False)])
    out = sh.scores_from_logits(both, data)
    assert out["hits"].shape == (2, 32) and out["hits"][0].eq(1).all()
    torch.testing.assert_close(out["score"], out["hits"].mean(-1))
    torch.testing.assert_close(out["task_mean"], torch.tensor([1.0, 0.0]))
    assert sh.chance_score(sh.make_succession_dataset(tasks=["days"])) == pytest.approx(1 / 7)
    assert sh.chance_score(data) == pytest.approx((7 / 7 + 25 / 26) / 32)
    assert sh.ranked_heads(torch.tensor([[0.1, 0.9], [float("nan"), 0.5]])) == ["0.1", "1.1", "0.0", "1.0"]


def test_sensitivity_table_and_head_maps_on_the_planted_head(planted):
    data, model = planted
    variants = (("embed, b_V", "embed", True), ("embed, no b_V", "embed", False))
    table, runs = sh.sensitivity_table(model, data, head="1.1", variants=variants)
    assert len(table) == 4 and set(table["aggregate"]) == {"pooled", "task mean"}
    assert (table["top head"] == "1.1").all() and table["top > 0.5"].all()
    assert (table["1.1 rank"] == 1).all()
    maps = sh.head_maps(model, data, "1.1", ("Monday", "March", "Sunday"), inputs="embed")
    assert maps["top in its task"].tolist() == maps["successor"].tolist()
    assert maps.loc["' Sunday'", "successor"] == "' Monday'"
    with pytest.raises(ValueError, match="not succession items"):
        sh.head_maps(model, data, "1.1", ("Funday",))


def test_mod10_token_sets():
    train = sh.mod10_token_set()
    assert len(train["ids"]) == 501 + 446 + 20 + 10 + 7 + 12
    assert train["ids"].unique().numel() == len(train["ids"])
    i = train["word"].index(" 42")
    assert train["residue"][i] == 2 and train["domain"][i] == "numbers"
    assert train["residue"][train["word"].index(" January")] == 1
    held = sh.transfer_token_set()
    assert not set(held["ids"].tolist()) & set(train["ids"].tolist())
    assert len(held["ids"]) == 44 and " May" not in held["word"]  # " May" is also a month
    tr, va = sh.split_rows(996)
    assert len(va) == 100 and not set(tr.tolist()) & set(va.tolist())
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(996))
    assert torch.equal(sh.split_rows(996)[1], va)  # seeded


def test_match_one_to_one_gives_a_dense_feature_to_one_class_only():
    # feature 0 fires on everything: it would be every class's best by coverage
    cov = torch.tensor([[1.0, 0.9, 0.0], [1.0, 0.0, 0.8]])
    assert sh.match_one_to_one(cov) == [1, 0] or sh.match_one_to_one(cov) == [0, 2]
    assert len(set(sh.match_one_to_one(cov))) == 2
    with pytest.raises(ValueError, match="one to one"):
        sh.match_one_to_one(torch.zeros(3, 2))
    acts = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    assert sh.predict_residue(acts, [1, 2]).tolist() == [0, -1]


def test_mod10_accuracy_is_held_out():
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(48, 48, generator=gen))[0]
    values = torch.arange(1, 301)
    x = 3 * basis[values % 10] + 3 * basis[10 + (values // 10) % 30]
    out = sh.mod10_analysis(x, values % 10, seeds=(0,), n_features=24, l1=0.1, steps=300,
                            probe_steps=150)
    assert len(out["val"]) == 30 and out["probe_accuracy"] == 1.0
    assert out["sae_accuracy"][0] > 0.9 and out["modal_coverage"].mean() > 0.8
    assert out["features_idx"][0].unique().numel() == 10
    # labels with no structure: the probe fits its training rows, not the held-out ones
    noise = torch.randn(300, 256, generator=gen)
    labels = torch.randint(0, 10, (300,), generator=gen)
    fit = sh.mod10_analysis(noise, labels, seeds=(0,), n_features=16, steps=20, probe_steps=300)
    assert fit["probe_train_accuracy"] > 0.9 and fit["probe_accuracy"] < 0.4
    tr = sh.mod10_transfer(out, x[:20], values[:20] % 10)
    assert tr["probe"] == 1.0 and tr["sae"].shape == (1,)
    with pytest.raises(ValueError, match="overlap"):
        sh.mod10_analysis(x, values % 10, train=torch.arange(10), val=torch.arange(5))


def test_vector_arithmetic_valid_cells():
    days = sh.vector_arithmetic_valid(range(1, 8), 7, cyclic=True)
    assert days.sum(1).tolist() == [7] * 7  # residues 1..7 exist; 0, 8, 9 are no day
    letters = sh.vector_arithmetic_valid(range(1, 27), 26, cyclic=False)
    assert int((~letters).sum()) == 9 + 7 * 4  # index 0, and 26..29 (Z has no successor)
    months = sh.vector_arithmetic_valid(range(1, 13), 12, cyclic=True)
    assert months[11].tolist() == [True, True, True] + [False] * 7  # 10, 11, 12 (→ January)
    assert sh.vector_arithmetic_valid(range(20, 30), 200, cyclic=False).all()


def _measurements(good: bool) -> dict:
    ranking = [f"{L}.{h}" for L in range(12) for h in range(12)]
    first = ranking.pop(ranking.index("9.1"))
    ranking = [first] + ranking if good else ranking + [first]
    naive = [h for h in ranking if h not in ("10.3", "9.1")]
    naive = ["10.3"] + naive[:40] + ["9.1"] + naive[40:]
    return {"n_tokens": 294, "single_token_share": 1.0, "heads_small": 144, "heads_medium": None,
            "ranking": ranking, "top_hits": torch.ones(290) if good else torch.zeros(290),
            "chance": 0.03, "top_hits_medium": None, "days_hits": torch.ones(7),
            "lift_ranking": ranking, "naive_ranking": naive,
            "naive_offsets": torch.tensor([-1] * 250 + [1] * 40),
            "modal_coverage": 0.5, "cosine": 0.6, "sae_transfer": 0.7, "va_numbers": 0.8,
            "va_months": 0.4, "list_win_share": 0.9, "text_is_pile": False,
            "text_shares": {"acronym": 0.1}}


def test_scorecard_grades_gpt2_only_against_gpt2_and_its_nulls_fail():
    from helpers.scorecard_data import DIFFERS, FOR_COMPARISON, HOLDS, NOT_RUN

    card = sh.build_scorecard(_measurements(True), stand_in=False)
    roles = {r.quantity: r.role for r in card.rows}
    for row in card.rows:  # no GPT-2 row graded against another model's number
        if row.role == "graded":
            assert "Pythia" not in row.reference.note + row.reference.source, row.quantity
    pythia = [r for r in card.rows if "Pythia" in r.reference.note]
    assert pythia and all(r.role == "info" for r in pythia)
    verdicts = dict(zip(roles, card.verdicts()))
    assert verdicts["9.1 is the top head by succession score, GPT-2 small"] == HOLDS
    assert verdicts["heads screened, GPT-2 medium"] == NOT_RUN  # the smoke build skips it
    assert verdicts["top head's succession score ≥ 0.5 (audit's threshold), GPT-2 medium"] == NOT_RUN
    assert DIFFERS not in verdicts.values()
    assert {verdicts[q] for q, r in roles.items() if r == "info"} == {FOR_COMPARISON}
    acr = next(r for r in card.rows if r.quantity.startswith("acronym"))
    assert acr.measured is None and "not Pile" in acr.note  # graded only on Pile text
    bad = sh.build_scorecard(_measurements(False), stand_in=False)
    assert dict(zip(roles, bad.verdicts()))["9.1 is the top head by succession score, GPT-2 small"] == DIFFERS
    null = card.null_run()
    for row, verdict in zip(null.rows, null.verdicts()):
        if row.role == "graded" and row.measured is not None:
            assert verdict == DIFFERS, row.quantity


def test_sae_and_probe_train_on_the_inputs_device_and_match_the_cpu():
    from helpers.devices import DeviceHarness, on_accelerator

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 12, generator=gen)
    labels = torch.arange(40) % 4
    sae_cpu = train_sae(x, 6, steps=30, seed=1)
    W_cpu, b_cpu = train_probe(x, labels, 4, steps=30, seed=1)
    with DeviceHarness():
        xa = x.to("cuda")
        sae = train_sae(xa, 6, steps=30, seed=1)
        W, b = train_probe(xa, labels, 4, steps=30, seed=1)  # labels on the CPU: moved
        assert on_accelerator(sae.W_dec) and on_accelerator(W) and on_accelerator(b)
        mod = sh.mod10_analysis(torch.randn(60, 12, generator=gen).to("cuda"),
                                torch.arange(60) % 10, seeds=(0,), n_features=12, steps=5,
                                probe_steps=5)
        feats, scales = sh.mod10_directions(mod, torch.randn(5, 12).to("cuda"))
        assert on_accelerator(feats) and on_accelerator(scales)
        same_dec, same_W = sae.W_dec.cpu(), W.cpu()
    torch.testing.assert_close(same_dec, sae_cpu.W_dec)  # the same seeded start and steps
    torch.testing.assert_close(same_W, W_cpu)
