"""The debugger (helpers.debugger) and the debugging chapter's data (helpers.cases.debugging).

Tiny random models; one planted model where a layer-0 head alone sets a layer-1 head's query.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest
import torch

from conftest_patching import boot
from helpers import (
    Debugger,
    DebuggerInputError,
    ReluSAE,
    ablation_effects,
    compare,
    latent_table,
    rank_correlation,
    top_activating_snippets,
)
from helpers.cases import debugging as case
from helpers.models import ModelSpec, gpt2_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"
PROMPT2 = "When John and Mary went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def dbg(tiny_model):
    return Debugger(tiny_model, PROMPT, " Mary", " John")


# ------------------------------------------------------------------ data on the real tokenizer


def test_prompts_are_single_token_targets_and_references_align():
    case.check_prompts()
    tok = gpt2_tokenizer()
    n = len(tok.encode(case.PROMPTS["ioi"].prompt))
    assert all(len(tok.encode(p)) == n for p in case.ioi_reference_prompts())
    assert case.NAME_MOVERS == [(9, 9), (9, 6), (10, 0)]
    assert len(case.S_INHIBITION) == 4


def test_sample_text_ships_with_its_licence():
    from importlib import resources

    assert len(case.sample_text().split()) > 200
    licence = (resources.files("helpers") / "assets" / "debugging-sample" / "LICENSE.md").read_text()
    assert "CC0" in licence and "CC0" in case.SAMPLE_LICENSE


# ------------------------------------------------------------------ the node table


def test_direct_effects_sum_to_the_logit_difference(dbg):
    frame = dbg.frame()
    assert set(frame.kind) == {"head", "neuron", "embed", "bias"}
    assert frame.direct_effect.sum() == pytest.approx(dbg.logit_diff, abs=1e-4)
    logits = dbg.model(dbg.tokens)[0, -1]
    assert dbg.logit_diff == pytest.approx(float(logits[dbg.target_id] - logits[dbg.distractor_id]), abs=1e-5)
    # only writes at the last position have a direct effect on the logits
    assert (frame[(frame.kind != "bias") & (frame.dest != dbg.n_tokens - 1)].direct_effect == 0).all()


def test_table_sorts_filters_and_labels(dbg):
    t = dbg.table("direct_effect", n=7, kind="head", layers=[1])
    assert len(t) == 7 and set(t.kind) == {"head"} and set(t.layer) == {1}
    assert (np.diff(t.direct_effect.abs().to_numpy()) <= 1e-12).all()
    assert t.node[0].startswith("H1.") and "<-" in t.node[0]
    assert t.up_voted[0].count(",") == 2
    n = dbg.table(n=3, kind="neuron", by_magnitude=False, ascending=True, top_tokens=0)
    assert (np.diff(n.est_total_effect.to_numpy()) >= 0).all()
    assert len(dbg.top_candidates(5)) == 5
    eff = dbg.token_effects()
    assert list(eff.columns) == ["token", "embeddings", "heads (destination)", "heads (source)",
                                 "MLP neurons"]
    heads_total = dbg.frame().query("kind == 'head'").est_total_effect.sum()
    assert eff["heads (destination)"].sum() == pytest.approx(heads_total, abs=1e-5)
    assert eff["heads (source)"].sum() == pytest.approx(heads_total, abs=1e-5)
    assert not np.allclose(eff["heads (destination)"], eff["heads (source)"])
    assert "colored-tokens-multi" in dbg.token_effect_view().data.lower().replace("_", "-") or \
        "ColoredTokensMulti" in dbg.token_effect_view().data


# ------------------------------------------------------------------ estimates


@contextmanager
def frozen(model, tokens, names):
    """Holds the hooks ``names`` at their clean values: with the final LayerNorm's scale (and,
    for heads, the last MLP's output) fixed, the logit difference is linear in every
    last-layer write at the last position."""
    clean = {}

    def grab(t, hook):
        clean[hook.name] = t.detach().clone()
        return t

    model.run_with_hooks(tokens, fwd_hooks=[(n, grab) for n in names])
    def fix(t, hook):
        value = clean[hook.name].to(t)
        if value.shape[1] != t.shape[1]:  # logits_at_positions: the last position only
            value = value[:, -t.shape[1]:]
        return value.expand_as(t) if value.shape[-1] == t.shape[-1] else value

    for n in names:
        model.add_hook(n, fix, is_permanent=True)
    try:
        yield
    finally:
        model.reset_hooks(including_permanent=True)


@pytest.mark.parametrize("kind", ["neuron", "head"])
def test_activation_times_gradient_is_exact_on_a_model_linear_in_the_node(tiny_model, dbg, kind):
    names = ["ln_final.hook_scale"] + (["blocks.1.hook_mlp_out"] if kind == "head" else [])
    with frozen(tiny_model, dbg.tokens, names):
        d = Debugger(tiny_model, PROMPT, " Mary", " John")
        last = d.n_tokens - 1
        top = d.table(n=None, kind=kind, layers=[1], top_tokens=0)
        nodes = list(top[top.dest == last].node[:4])
        effects = ablation_effects(d, nodes)
        row = top.set_index("node").loc[nodes[0]]
    assert len(effects) == 4 and effects.actual.abs().min() > 0
    np.testing.assert_allclose(effects.estimated, effects.actual, rtol=1e-3, atol=1e-7)
    # on this model the direct effect is the whole effect
    assert row.direct_effect == pytest.approx(row.est_total_effect, rel=1e-3, abs=1e-7)


def test_estimates_track_ablations_on_a_random_model(dbg):
    effects = ablation_effects(dbg, dbg.table(n=8, top_tokens=0))
    assert rank_correlation(effects.estimated, effects.actual) > 0.5


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        rank_correlation([1], [1])


# ------------------------------------------------------------------ ablations


def test_ablating_a_zero_activation_node_changes_nothing(dbg):
    node = dbg.table(n=1, kind="head", top_tokens=0).node[0]
    once = dbg.ablate(node)
    assert once.logit_diff != pytest.approx(dbg.logit_diff, abs=1e-7)
    row = once.table(n=None, kind="head", top_tokens=0).set_index("node").loc[node]
    assert row.activation == 0.0 and row.est_total_effect == 0.0
    twice = once.ablate(node)
    assert twice.logit_diff == pytest.approx(once.logit_diff, abs=1e-6)


def test_mean_ablation_with_the_prompt_itself_as_reference_changes_nothing(dbg):
    same = dbg.ablate(["H1.2", "N0.5"], how="mean", reference=dbg.tokens.repeat(2, 1))
    assert same.logit_diff == pytest.approx(dbg.logit_diff, abs=1e-5)
    other = dbg.ablate(["H1.2"], how="mean", reference=dbg.model.to_tokens(PROMPT2, prepend_bos=False))
    assert other.logit_diff != pytest.approx(dbg.logit_diff, abs=1e-6)


def test_whole_head_zero_ablation_equals_zeroing_its_output(dbg):
    from helpers import hook_name

    def zero_z(z, hook):
        z = z.clone()
        z[:, :, 2] = 0.0
        return z

    logits = dbg.model.run_with_hooks(dbg.tokens, fwd_hooks=[(hook_name("z", 1), zero_z)])[0, -1]
    expected = float(logits[dbg.target_id] - logits[dbg.distractor_id])
    assert dbg.ablate("H1.2").logit_diff == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------ trace upstream

TRACE_SPEC = ModelSpec("tiny-trace", "openai-community/gpt2", n_layers=2, n_heads=4, d_model=64)
MARK, C, ALPHA = 8.0, 32.0, 0.2


@lru_cache(maxsize=1)
def planted_query_model(seed: int = 5):
    """Head 0.0 attends to position 1 and writes ≈ ALPHA·e_60 everywhere; head 1.0's query reads
    only e_60 (its key reads the position-1 marker e_63): head 0.0 alone sets 1.0's query."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d, dh = TRACE_SPEC.d_model, TRACE_SPEC.d_head
    config = GPT2Config(n_layer=2, n_head=4, n_embd=d, n_positions=64, vocab_size=TRACE_SPEC.d_vocab,
                        initializer_range=0.02)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(config)
    q, k, v = slice(0, dh), slice(d, d + dh), slice(2 * d, 2 * d + dh)
    with torch.no_grad():
        hf.transformer.wpe.weight[1, 63] = MARK
        for layer in (0, 1):
            W, b = hf.transformer.h[layer].attn.c_attn.weight, hf.transformer.h[layer].attn.c_attn.bias
            W[:, q], b[q], W[:, k], b[k] = 0.0, 0.0, 0.0, 0.0
            W[63, k.start] = 1.0
            if layer == 0:
                b[q.start] = C
                W[:, v], b[v] = 0.0, 0.0
                W[63, v.start] = 1.0  # the marker, ≈ 8 after ln_1 at position 1 (compatibility
                P = hf.transformer.h[0].attn.c_proj.weight  # mode folds value biases away)
                P[0:dh] = 0.0
                P[0, 60] = ALPHA / 8
            else:
                W[60, q.start] = 4.0
    return boot(hf, TRACE_SPEC, seed)


def test_trace_through_q_finds_the_head_that_sets_the_query():
    model = planted_query_model()
    d = Debugger(model, PROMPT, " Mary", " John")
    dest = d.n_tokens - 1
    receiver = f"H1.0 {dest}<-1"
    traced = d.trace(receiver, "q")
    assert "attention score" in traced.target_description
    heads = traced.table(kind=("head", "neuron"), n=5, top_tokens=0)
    assert heads.node[0] == f"H0.0 {dest}<-1", heads
    assert heads.est_total_effect[0] > 5 * abs(heads.est_total_effect[1])
    assert heads.direct_effect[0] > 5 * abs(heads.direct_effect[1])
    assert (traced.frame().layer < 1).all()  # only nodes upstream of layer 1
    # through K the planted head (which writes only e_60, read by the query) is not the cause
    via_k = d.trace(receiver, "k").table(kind="head", n=1, top_tokens=0)
    assert via_k.node[0] != f"H0.0 {dest}<-1"


def test_trace_v_and_neuron_targets(dbg):
    last = dbg.n_tokens - 1
    v = dbg.trace(f"H1.2 {last}<-3", "v")
    assert np.isfinite(v.value) and (v.frame().layer < 1).all()
    n = dbg.trace(f"N1.7@{last}", "input")
    post = dbg._run.acts["post"][1, last, 7]
    assert n.value == pytest.approx(float(post), abs=1e-6)
    assert (n.frame().query("kind == 'neuron'").layer < 1).all()
    assert n.frame().query("kind == 'head'").layer.max() == 1  # the MLP reads layer 1's heads


# ------------------------------------------------------------------ two prompts


def test_two_prompt_differences_are_antisymmetric(tiny_model, dbg):
    other = Debugger(tiny_model, PROMPT2, " Mary", " John")
    ab = compare(dbg, other, n=None).set_index("node")
    ba = compare(other, dbg, n=None).set_index("node")
    np.testing.assert_allclose(ab["diff"], -ba.loc[ab.index, "diff"], atol=1e-9)
    assert ab["diff"].abs().max() > 0
    short = Debugger(tiny_model, "When Mary left", " Mary", " John")
    with pytest.raises(DebuggerInputError, match="same length"):
        compare(dbg, short)


# ------------------------------------------------------------------ latents and snippets


def test_latent_table_with_an_untrained_autoencoder(dbg):
    sae = ReluSAE.untrained(dbg.model.cfg.d_model, 128, hook_name="blocks.1.hook_resid_pre")
    table, fvu = latent_table(dbg, sae, 1, n=5)
    assert len(table) <= 5 and np.isfinite(fvu) and fvu > 0
    assert (table[table.kind == "latent"].activation > 0).all()
    assert set(table.kind) <= {"latent", "sae_error"} and "sae_error" in set(table.kind)


def test_top_activating_snippets(tiny_model):
    out = top_activating_snippets(tiny_model, case.sample_text(), ["N0.3@5", "N1.10"], k=2, chunk=32)
    assert list(out.node.unique()) == ["N0.3", "N1.10"] and len(out) == 4
    assert out.snippet.str.contains("⟦").all()
    first = out[out.node == "N0.3"].activation.to_numpy()
    assert first[0] >= first[1]
    # each chunk is BOS + 31 text tokens: the best activation is the one of that context
    from helpers import capture, hook_name

    ids = tiny_model.to_tokens(case.sample_text(), prepend_bos=False)[0]
    chunks = [ids[i:i + 31] for i in range(0, len(ids), 31)]
    best = max(float(capture(tiny_model, torch.cat([torch.tensor([tiny_model.tokenizer.bos_token_id]),
                                                     c])[None], [hook_name("post", 0)])[1]
                     [hook_name("post", 0)][0, 1:, 3].max()) for c in chunks)
    assert first[0] == pytest.approx(best, abs=1e-5)
    sae = ReluSAE.untrained(tiny_model.cfg.d_model, 16, hook_name="blocks.1.hook_resid_pre")
    lat = top_activating_snippets(tiny_model, case.sample_text(), ["L1.3"], sae=sae, k=2, chunk=32)
    assert list(lat.node) == ["L1.3", "L1.3"] and (lat.activation >= 0).all()
    with pytest.raises(DebuggerInputError, match="no SAE"):
        top_activating_snippets(tiny_model, "some text", ["L1.3"])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "target,distractor,match",
    [(" Mary", " Mary", "same token"), (" Maryanne-Louise", " John", "tokens"), (" Mary", "xyzzyplugh", "tokens")],
)
def test_bad_tokens_give_one_clear_error(tiny_model, target, distractor, match):
    with pytest.raises(DebuggerInputError, match=match):
        Debugger(tiny_model, PROMPT, target, distractor)


@pytest.mark.parametrize(
    "node,match",
    [("H7.0 3<-1", "no layer 7"), ("H1.9", "no head 9"), ("N0.9999@2", "no neuron 9999"),
     ("H1.0 40<-1", "no position 40"), ("H1.0 3<-5", "no source 5"), ("head 1.0", "Cannot read")],
)
def test_nodes_that_do_not_exist_give_one_clear_error(dbg, node, match):
    with pytest.raises(DebuggerInputError, match=match):
        dbg.ablate(node)


def test_trace_needs_one_position_and_a_valid_mode(dbg):
    with pytest.raises(DebuggerInputError, match="one position"):
        dbg.trace("H1.0")
    with pytest.raises(DebuggerInputError, match="through"):
        dbg.trace("H1.0 3<-1", "x")
    with pytest.raises(DebuggerInputError, match="no query"):
        dbg.trace("N1.3@3", "q")
    with pytest.raises(DebuggerInputError, match="reference"):
        dbg.ablate("H1.0", how="mean")


def test_residual_sae_falls_back_to_a_labelled_untrained_autoencoder(tiny_model):
    sae, text = case.residual_sae(tiny_model, 1, d_sae=32)
    assert isinstance(sae, ReluSAE) and not sae.trained and "UNTRAINED" in text
    assert tuple(sae.W_dec.shape) == (32, tiny_model.cfg.d_model)


def _write_sae_folder(root, hook, d_in, d_sae, *, cfg=None, extra=None, seed=0):
    """A fake SAE in the hub's layout: ``<root>/<hook>/cfg.json`` and ``sae_weights.safetensors``."""
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
               "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g),
               **(extra or {})}
    folder = root / hook
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    config = {"d_in": d_in, "d_sae": d_sae, "hook_name": hook, "activation_fn_str": "relu",
              "apply_b_dec_to_input": True, "normalize_activations": "none", **(cfg or {})}
    config = {k: v for k, v in config.items() if v is not None}  # None: leave the key out
    (folder / "cfg.json").write_text(json.dumps(config))
    return weights


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Route the chapter's SAE download to ``tmp_path`` and pretend the model has real weights."""
    calls = []

    def download(repo_id, filename):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(case, "_hub_download", download)
    monkeypatch.setattr(case, "is_stand_in", lambda model: False)
    monkeypatch.setattr(case, "hub_available", lambda *a, **k: True)
    return tmp_path, calls


def test_trained_sae_is_read_from_its_hub_files_without_an_sae_library(tiny_model, dbg, fake_hub):
    root, calls = fake_hub
    hook = "blocks.1.hook_resid_pre"
    d = tiny_model.cfg.d_model
    weights = _write_sae_folder(root, hook, d, 48)
    sae, text = case.residual_sae(tiny_model, 1)
    assert isinstance(sae, ReluSAE) and sae.trained and sae.hook_name == hook
    assert "Trained" in text and "UNTRAINED" not in text and case.SAE_REPO in text
    assert calls == [(case.SAE_REPO, f"{hook}/cfg.json"), (case.SAE_REPO, f"{hook}/sae_weights.safetensors")]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name), weights[name])
    x = torch.randn(5, d)
    expected = torch.relu((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
    torch.testing.assert_close(sae.encode(x), expected)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU cuts some latents, not all
    with pytest.raises(DebuggerInputError, match="prepend_bos"):
        latent_table(dbg, sae, 1, n=4)  # the trained SAE saw BOS-led contexts only
    with_bos = Debugger(tiny_model, PROMPT, " Mary", " John", prepend_bos=True)
    table, fvu = latent_table(with_bos, sae, 1, n=4)
    assert len(table) == 4 and np.isfinite(fvu)


def test_old_style_sae_config_and_scaling_factor(tmp_path):
    hook = "blocks.0.hook_resid_pre"
    scale = torch.linspace(0.5, 2.0, 16)
    weights = _write_sae_folder(tmp_path, hook, 8, 16, extra={"scaling_factor": scale},
                                cfg={"hook_name": None, "hook_point": hook, "apply_b_dec_to_input": False})
    sae = ReluSAE.from_files(tmp_path / hook / "cfg.json", tmp_path / hook / "sae_weights.safetensors")
    assert sae.hook_name == hook and not sae.apply_b_dec_to_input
    x = torch.randn(3, 8)
    f = torch.relu(x @ weights["W_enc"] + weights["b_enc"])  # no b_dec subtracted
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae.decode(f), (f * scale) @ weights["W_dec"] + weights["b_dec"])


@pytest.mark.parametrize("cfg,match", [({"activation_fn_str": "topk"}, "activation"),
                                       ({"normalize_activations": "expected_average_only_in"}, "normalisation"),
                                       ({"d_sae": 17}, "do not fit")])
def test_sae_files_this_class_cannot_read_give_one_clear_error(tmp_path, cfg, match):
    hook = "blocks.0.hook_resid_pre"
    _write_sae_folder(tmp_path, hook, 8, 16, cfg=cfg)
    with pytest.raises(ValueError, match=match):
        ReluSAE.from_files(tmp_path / hook / "cfg.json", tmp_path / hook / "sae_weights.safetensors")


def test_sae_of_the_wrong_width_falls_back_before_downloading_the_weights(tiny_model, fake_hub):
    root, calls = fake_hub
    _write_sae_folder(root, "blocks.1.hook_resid_pre", tiny_model.cfg.d_model + 1, 16)
    sae, text = case.residual_sae(tiny_model, 1, d_sae=16)
    assert not sae.trained and "UNTRAINED" in text and "wide" in text
    assert [f for _, f in calls] == ["blocks.1.hook_resid_pre/cfg.json"]


def test_unreachable_hub_gives_the_untrained_sae_and_says_why(tiny_model, fake_hub, monkeypatch):
    _, calls = fake_hub
    monkeypatch.setattr(case, "hub_available", lambda *a, **k: False)
    sae, text = case.residual_sae(tiny_model, 1, d_sae=16)
    assert not sae.trained and "not reachable" in text and case.SAE_REPO in text and not calls


def test_text_sample_uses_the_pile_when_asked_and_falls_back_to_the_shipped_text(monkeypatch, capsys):
    from helpers import corpus

    monkeypatch.setattr(corpus, "pile_documents", lambda n, max_chars: [f"pile document {i}" for i in range(n)])
    text, source = case.load_text_sample(3, use_hub=True)
    assert text == "pile document 0\n\npile document 1\n\npile document 2" and "Pile" in source
    assert "Pile" in capsys.readouterr().out

    def offline(n, max_chars):
        raise RuntimeError("no network")

    monkeypatch.setattr(corpus, "pile_documents", offline)
    text, source = case.load_text_sample(3, use_hub=True)
    out = capsys.readouterr().out
    assert "no network" in out and "CC0" in source and source in out
    assert text.startswith(case.sample_text()[:40]) and text.count("\n\n") == 2
    assert case.load_text_sample(3)[0] == text  # without use_hub: the same shipped paragraphs


def test_batched_ablation_effects_equal_one_at_a_time(dbg):
    nodes = list(dbg.table(n=3, kind="head", top_tokens=0).node) + ["N1.5@4", "H0.1"]
    batched = ablation_effects(dbg, nodes, batch=2)
    single = [dbg.logit_diff - dbg.ablate(n).logit_diff for n in nodes]
    np.testing.assert_allclose(batched.actual, single, atol=1e-5)
    # on top of an existing ablation as well
    base = dbg.ablate("H1.3")
    np.testing.assert_allclose(ablation_effects(base, nodes).actual,
                               [base.logit_diff - base.ablate(n).logit_diff for n in nodes], atol=1e-5)


# ----------------------------------------------------------------------------- exercises


def _todo(*args):
    raise NotImplementedError


def test_pair_direct_effect_check_names_known_mistakes():
    from helpers.exercises.debugging import check_pair_direct_effect, reference_pair_direct_effect as ref

    assert check_pair_direct_effect(ref).passed
    assert check_pair_direct_effect(_todo).status == "todo"
    no_scale = check_pair_direct_effect(lambda p, v, O, s, d: ref(p, v, O, 1.0, d))
    assert "left out the final LayerNorm" in no_scale.message
    times = check_pair_direct_effect(lambda p, v, O, s, d: ref(p, v, O, 1.0, d) * s)
    assert "multiplied by the LayerNorm" in times.message
    flipped = check_pair_direct_effect(lambda p, v, O, s, d: ref(p, v, O, s, -d))
    assert "sign is flipped" in flipped.message and "W_U[:, target]" in flipped.message
    summed = check_pair_direct_effect(lambda *a: ref(*a).sum(-1))
    assert summed.status == "fail" and "shape" in summed.message


def test_rank_correlation_check_names_known_mistakes():
    from helpers.exercises.debugging import check_rank_correlation, reference_rank_correlation

    def pearson(x, y):
        x, y = x - x.mean(), y - y.mean()
        return (x * y).sum() / (x.norm() * y.norm())

    assert check_rank_correlation(reference_rank_correlation).passed
    assert check_rank_correlation(lambda x, y: pearson(x.argsort().argsort().float(),
                                                       y.argsort().argsort().float())).passed
    assert check_rank_correlation(_todo).status == "todo"
    assert "Pearson" in check_rank_correlation(pearson).message
    argsort_once = check_rank_correlation(lambda x, y: pearson(x.argsort().float(), y.argsort().float()))
    assert "argsort().argsort()" in argsort_once.message


# ----------------------------------------------------------------------------- issue 32


def _z_replaced(model, tokens, layer, head, z_mean):
    from helpers import hook_name

    def fix(z, hook):
        z = z.clone()
        z[:, :, head] = z_mean.to(z)
        return z

    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name("z", layer), fix)])[0, -1]


def test_mean_ablation_replaces_the_head_output_with_its_reference_mean(dbg):
    from helpers import head_means

    ref = dbg.model.to_tokens([PROMPT2, PROMPT.replace("Mary", "Alice")], prepend_bos=False)
    z = head_means(dbg.model, ref)[0]  # [seq, L, H, dh]
    logits = _z_replaced(dbg.model, dbg.tokens, 1, 2, z[:, 1, 2])
    meaned = dbg.ablate("H1.2", how="mean", reference=ref)
    assert meaned.logit_diff == pytest.approx(float(logits[dbg.target_id] - logits[dbg.distractor_id]),
                                              abs=1e-5)
    assert meaned.ablations == ["H1.2 -> mean"]
    # the pattern mean is another ablation, kept under its own name
    pattern = dbg.ablate("H1.2", how="pattern_mean", reference=ref)
    assert pattern.logit_diff != pytest.approx(meaned.logit_diff, abs=1e-6)
    same = dbg.ablate("H1.2", how="pattern_mean", reference=dbg.tokens.repeat(2, 1))
    assert same.logit_diff == pytest.approx(dbg.logit_diff, abs=1e-5)
    with pytest.raises(DebuggerInputError, match="whole head"):
        dbg.ablate(f"H1.2 {dbg.n_tokens - 1}<-0", how="mean", reference=ref)
    with pytest.raises(DebuggerInputError, match="zero"):
        dbg.ablate("H1.2", how="mean", reference=ref).ablate("H1.2", how="bogus")


def test_mean_ablation_estimate_is_exact_where_the_model_is_linear_in_z(tiny_model):
    from helpers.debugger import ablation_effects

    ref = tiny_model.to_tokens([PROMPT2, PROMPT.replace("John", "Alice")], prepend_bos=False)
    with frozen(tiny_model, tiny_model.to_tokens(PROMPT, prepend_bos=False),
                ["ln_final.hook_scale", "blocks.1.hook_mlp_out"]):
        d = Debugger(tiny_model, PROMPT, " Mary", " John")
        eff = ablation_effects(d, ["H1.0", "H1.3"], how="mean", reference=ref)
    assert eff.actual.abs().min() > 1e-6
    np.testing.assert_allclose(eff.estimated, eff.actual, rtol=1e-3, atol=1e-7)


def test_value_ablation(dbg):
    last = dbg.n_tokens - 1
    node = f"N1.7@{last}"
    act = float(dbg._run.acts["post"][1, last, 7])
    assert dbg.ablate(node, how="value", value=act).logit_diff == pytest.approx(dbg.logit_diff, abs=1e-6)
    assert dbg.ablate(node, how="value", value=0.0).logit_diff == pytest.approx(
        dbg.ablate(node).logit_diff, abs=1e-6)
    moved = dbg.ablate(node, how="value", value=act + 3.0)
    assert moved.logit_diff != pytest.approx(dbg.logit_diff, abs=1e-4)
    with pytest.raises(DebuggerInputError, match="value="):
        dbg.ablate(node, how="value")


def test_estimate_scores_on_known_cases():
    from helpers.debugger import estimate_scores, top_by_actual
    import pandas as pd

    a = np.array([3.0, -2.0, 1.0, 0.5, -0.1])
    eff = pd.DataFrame({"node": list("abcde"), "estimated": a, "actual": a, "group": "g"})
    s = estimate_scores(eff).loc["g"]
    assert s.rho == pytest.approx(1) and s.sign_agreement == 1 and s.r2 == pytest.approx(1)
    neg = estimate_scores(eff.assign(estimated=-a)).loc["g"]
    assert neg.rho == pytest.approx(-1) and neg.sign_agreement == 0 and neg.r2 < 0
    # the estimate underrates node "e": it is ranked last by estimate but first by actual
    under = eff.assign(actual=[0.1, 0.2, 0.3, 0.4, 9.0])
    top = top_by_actual(under, "g", 1)
    assert top.node[0] == "e" and top["rank by |estimate|"][0] == 5


def test_estimate_study_groups(dbg):
    from helpers.debugger import estimate_scores, estimate_study

    ref = dbg.model.to_tokens(PROMPT2, prepend_bos=False)
    study = estimate_study(dbg, 3, seed=1, reference=ref)
    sizes = study.groupby("group").size()
    n_heads = dbg.model.cfg.n_layers * dbg.model.cfg.n_heads
    assert sizes["whole heads (zero)"] == n_heads == sizes["whole heads (mean)"]
    assert sizes["last-token pairs"] == n_heads * dbg.n_tokens
    assert sizes["random pairs"] == 3 == sizes["top neurons by estimate"]
    again = estimate_study(dbg, 3, seed=1, pair_census=False)
    assert list(again[again.group == "random neurons"].node) == list(study[study.group == "random neurons"].node)
    scores = estimate_scores(study)
    assert set(scores.columns) == {"n", "rho", "sign_agreement", "r2"}
    # a whole head's zero ablation is the sum of its pairs' ablations to first order
    frame = dbg.frame().query("kind == 'head' and layer == 1 and index == 2")
    row = study[(study.group == "whole heads (zero)") & (study.node == "H1.2")]
    assert float(row.estimated.iloc[0]) == pytest.approx(frame.est_total_effect.sum(), abs=1e-5)


# ------------------------------------------------------------------ the SAE spliced in


@pytest.fixture(scope="module")
def sae_dbg(tiny_model):
    sae = ReluSAE.untrained(tiny_model.cfg.d_model, 96, hook_name="blocks.1.hook_resid_pre", seed=3)
    sae.b_enc[:] = -0.02  # some latents fire on the stand-in's small residuals
    return Debugger(tiny_model, PROMPT, " Mary", " John", prepend_bos=True, sae=sae)


def test_the_sae_splice_changes_nothing_and_latents_plus_error_add_up(tiny_model, sae_dbg):
    plain = Debugger(tiny_model, PROMPT, " Mary", " John", prepend_bos=True)
    assert sae_dbg.logit_diff == pytest.approx(plain.logit_diff, abs=1e-5)
    assert sae_dbg.tokens[0, 0] == tiny_model.tokenizer.bos_token_id
    run = sae_dbg._run
    x, g = run.acts["resid_pre"][1].float(), run.grads["resid_pre"][1].float()
    frame = sae_dbg.frame()
    lat, err = frame[frame.kind == "latent"], frame[frame.kind == "sae_error"]
    assert len(lat) > 0 and len(err) == sae_dbg.n_tokens
    b_dec = float((g @ sae_dbg.sae.b_dec.float()).sum())
    total = lat.est_total_effect.sum() + err.est_total_effect.sum() + b_dec
    assert total == pytest.approx(float((x * g).sum()), rel=1e-4, abs=1e-6)
    # the error node is x − x̂ at each token
    recon = sae_dbg.sae.decode(sae_dbg.sae.encode(x))
    np.testing.assert_allclose(err.write_norm, (x - recon).norm(dim=-1).numpy(), rtol=1e-4)
    # direct effects without the latents (they decompose the residual) still add up
    writes = frame[~frame.kind.isin(["latent", "sae_error"])]
    assert writes.direct_effect.sum() == pytest.approx(sae_dbg.logit_diff, abs=1e-4)


def test_latents_are_ablated_and_traced(tiny_model, sae_dbg):
    from helpers import hook_name
    from helpers.debugger import ablation_effects, latent_table

    table, fvu = latent_table(sae_dbg, n=4)
    assert np.isfinite(fvu) and table.node.str.match(r"^(L1\.\d+@\d+|err1@\d+)$").all()
    node = sae_dbg.table(n=1, kind="latent", top_tokens=0).node[0]
    parsed = sae_dbg.node(node)
    sae = sae_dbg.sae

    def zero_latent(x, hook):
        f = sae.encode(x)
        err = x - sae.decode(f)
        f = f.clone()
        f[:, parsed.dest, parsed.index] = 0.0
        return sae.decode(f) + err

    logits = tiny_model.run_with_hooks(sae_dbg.tokens, fwd_hooks=[(hook_name("resid_pre", 1), zero_latent)])[0, -1]
    expected = float(logits[sae_dbg.target_id] - logits[sae_dbg.distractor_id])
    assert sae_dbg.ablate(node).logit_diff == pytest.approx(expected, abs=1e-5)
    eff = ablation_effects(sae_dbg, [node, "H0.1", "N0.4@3"], batch=2)
    assert eff.actual[0] == pytest.approx(sae_dbg.logit_diff - expected, abs=1e-5)
    np.testing.assert_allclose(eff.actual, [sae_dbg.logit_diff - sae_dbg.ablate(n).logit_diff
                                            for n in eff.node], atol=1e-5)
    traced = sae_dbg.trace(node, "input")
    assert traced.value == pytest.approx(float(sae_dbg._run.acts["latent"][parsed.dest, parsed.index]),
                                         abs=1e-6)
    assert (traced.frame().query("kind in ['head', 'neuron']").layer < 1).all()
    assert "latent" not in set(traced.frame().kind)
    with pytest.raises(DebuggerInputError, match="no SAE"):
        Debugger(tiny_model, PROMPT, " Mary", " John").ablate(node)
    with pytest.raises(DebuggerInputError, match="latents at layer 0"):
        sae_dbg.ablate("L0.3@2")


def test_sae_needs_centred_writing_weights_when_its_config_says_so(tiny_model):
    from types import SimpleNamespace

    from helpers.debugger import check_sae_fits, writing_weights_offset

    sae = ReluSAE.untrained(tiny_model.cfg.d_model, 8, hook_name="blocks.1.hook_resid_pre")
    sae.centre_writing_weights = True
    assert max(writing_weights_offset(tiny_model).values()) < 1e-3
    check_sae_fits(tiny_model, sae)
    g = torch.Generator().manual_seed(0)
    d = tiny_model.cfg.d_model
    shifted = SimpleNamespace(cfg=tiny_model.cfg, **{
        name: getattr(tiny_model, name).detach() + (0.5 if name == "W_E" else 0.0)
        for name in ("W_E", "W_pos", "W_O", "W_out", "b_O", "b_out")})
    with pytest.raises(DebuggerInputError, match="center_writing_weights"):
        check_sae_fits(shifted, sae)
    sae.centre_writing_weights = False
    check_sae_fits(shifted, sae)  # an SAE that does not ask for it is not checked
    wide = ReluSAE.untrained(d + 1, 8, hook_name="blocks.1.hook_resid_pre")
    with pytest.raises(DebuggerInputError, match="wide"):
        check_sae_fits(tiny_model, wide)
    del g


def test_sae_config_metadata_is_read(tmp_path):
    hook = "blocks.0.hook_resid_pre"
    _write_sae_folder(tmp_path, hook, 8, 16, cfg={"model_from_pretrained_kwargs": {"center_writing_weights": True},
                                                   "prepend_bos": True, "context_size": 128})
    sae = ReluSAE.from_files(tmp_path / hook / "cfg.json", tmp_path / hook / "sae_weights.safetensors")
    assert sae.centre_writing_weights and sae.prepend_bos and sae.context_size == 128
    from helpers.sae import SparseAutoencoder

    x = torch.randn(4, 8)
    plain = SparseAutoencoder(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, losses={})
    torch.testing.assert_close(sae.encode(x), plain.encode(x))
    torch.testing.assert_close(sae.decode(sae.encode(x)), plain.decode(plain.encode(x)))


# ------------------------------------------------------------------ new trace targets and views


def test_probability_and_score_difference_targets(dbg):
    last = dbg.n_tokens - 1
    pair = f"H1.2 {last}<-3"
    prob = dbg.trace(pair, "qk", target="prob")
    assert prob.value == pytest.approx(float(dbg._run.acts["pattern"][1, 2, last, 3]), abs=1e-6)
    assert "after the softmax" in prob.target_description
    score = dbg.trace(pair, "q").value
    other = dbg.trace(f"H1.2 {last}<-5", "q").value
    diff = dbg.trace(pair, "q", target="score_diff", versus=5)
    assert diff.value == pytest.approx(score - other, abs=1e-5)
    assert (diff.frame().layer < 1).all()
    with pytest.raises(DebuggerInputError, match="versus"):
        dbg.trace(pair, "q", target="score_diff")
    with pytest.raises(DebuggerInputError, match="target must be"):
        dbg.trace(pair, "q", target="logit")


def test_probability_trace_finds_the_planted_query_writer():
    model = planted_query_model()
    d = Debugger(model, PROMPT, " Mary", " John")
    dest = d.n_tokens - 1
    top = d.trace(f"H1.0 {dest}<-1", "q", target="prob").table(n=2, top_tokens=0)
    assert top.node[0] == f"H0.0 {dest}<-1"
    top_diff = d.trace(f"H1.0 {dest}<-1", "q", target="score_diff", versus=0).table(n=1, top_tokens=0)
    assert top_diff.node[0] == f"H0.0 {dest}<-1"


def test_input_tokens_attention_view_and_two_different_prompts(tiny_model, dbg):
    from helpers.debugger import input_tokens
    from helpers.debugger.run import weights

    last = dbg.n_tokens - 1
    for node, through, site, pos in ((f"N1.7@{last}", "input", "resid_mid", last),
                                     (f"H1.2 {last}<-3", "q", "resid_pre", last),
                                     (f"H1.2 {last}<-3", "k", "resid_pre", 3)):
        tab = input_tokens(dbg, node, through, k=4)
        grad = dbg.trace(node, through)._run.grads[site][1, pos].float()
        scores = weights(tiny_model)["W_E"].float() @ grad
        assert tab["up score"].iloc[0] == pytest.approx(float(scores.max()), rel=1e-5)
        assert tab["down score"].iloc[0] == pytest.approx(float(scores.min()), rel=1e-5)
        assert (np.diff(tab["up score"]) <= 0).all()
    with pytest.raises(DebuggerInputError, match="'q' or 'k'"):
        input_tokens(dbg, f"H1.2 {last}<-3", "v")
    view = dbg.attention_view(["H1.2", (0, 1)])
    assert "1.2" in view.data and "0.1" in view.data
    other = Debugger(tiny_model, PROMPT2, " Mary", " John")
    side = compare(dbg, other, n=5)
    assert list(side.columns[-3:]) == ["est_total_effect_left", "diff", "est_total_effect_right"]
    assert side["left tokens"][0] != side["right tokens"][0] or side.kind[0] != "head"


def test_scorecard_rows_fail_at_their_nulls_and_run_at_smoke_size(dbg):
    from helpers.debugger import estimate_study
    from helpers.scorecard import DIFFERS, HOLDS, NOT_RUN

    heads = [f"{l}.{h}" for l in range(12) for h in range(12)]
    direct = {h: -0.01 * i for i, h in enumerate(heads)}
    for i, h in enumerate(["9.9", "9.6", "10.0"]):
        direct[h] = 5.0 - i
    upstream = {h: 0.0 for h in heads if int(h.split(".")[0]) < 9}
    for h in ("7.3", "7.9", "8.6"):
        upstream[h] = 1.0
    study = estimate_study(dbg, 4, seed=0, pair_census=False)
    card = case.build_scorecard(stand_in=False, direct_gap=1e-5, head_direct=direct,
                                upstream=upstream, study=study, splice_gap=None,
                                centring_offset=0.0)
    graded = [r for r in card.rows if r.role == "graded"]
    assert len(graded) == 4 + 3 * len(case.ESTIMATE_GROUPS)
    verdicts = dict(zip([r.quantity for r in card.rows], card.verdicts()))
    assert verdicts["name movers in the top-5 heads by direct effect"] == HOLDS
    assert verdicts["S-inhibition heads in the top 10 upstream of 9.9's query"] == HOLDS
    assert verdicts["direct effect of negative name mover 10.7"] == HOLDS
    assert verdicts["ρ(estimate, ablation), whole heads (mean)"] == NOT_RUN  # no reference given
    assert all(v == DIFFERS for r, v in zip(card.null_run().rows, card.null_run().verdicts())
               if r.role == "graded" and r.measured is not None)
    assert [r.quantity for r in card.rows if r.role == "info"]
    assert all(r.section in case.SECTIONS.values() for r in card.rows)


def test_an_sae_trained_with_bos_refuses_a_prompt_without_it(tiny_model, fake_hub):
    root, _ = fake_hub
    _write_sae_folder(root, "blocks.1.hook_resid_pre", tiny_model.cfg.d_model, 16)
    sae, _ = case.residual_sae(tiny_model, 1)
    assert sae.trained and sae.prepend_bos and sae.centre_writing_weights
    with pytest.raises(DebuggerInputError, match="prepend_bos=True"):
        Debugger(tiny_model, PROMPT, " Mary", " John", sae=sae)
    d = Debugger(tiny_model, PROMPT, " Mary", " John", prepend_bos=True, sae=sae)
    assert np.isfinite(d.logit_diff)


def test_input_tokens_of_a_planted_key_are_the_tokens_it_reads():
    """Head 1.0's key reads only dimension 63 of the residual stream: at a source without the
    position marker, the tokens that most up-vote its key are those whose embedding is
    largest along e_63 (after LayerNorm's centring); the most down-voting, the smallest."""
    from helpers.debugger import input_tokens
    from helpers.debugger.run import weights

    model = planted_query_model()
    d = Debugger(model, PROMPT, " Mary", " John")
    tab = input_tokens(d, f"H1.0 {d.n_tokens - 1}<-0", "k", k=5)
    W_E = weights(model)["W_E"].float()
    along = W_E[:, 63] - W_E.mean(-1)
    order = along.argsort(descending=True).tolist()
    rank = {t: r for r, t in enumerate(order)}
    ids = {repr(model.to_string([t])): t for t in order[:2000] + order[-2000:]}
    up = [rank[ids[s]] for s in tab.up if s in ids]
    down = [len(order) - 1 - rank[ids[s]] for s in tab.down if s in ids]
    assert len(up) == 5 and max(up) < 0.01 * len(order), up
    assert len(down) == 5 and max(down) < 0.01 * len(order), down
