"""The stand-in: exact GPT-2 shapes, deterministic, offline, with the compatibility-mode identity."""

import pytest
import torch

from helpers import dla, is_stand_in, load_model, logit_diff
from helpers.models import SUPPORTED_MODELS, resolve_model_name

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_small_shapes(small_stand_in):
    cfg = small_stand_in.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (12, 12, 768, 64, 3072)
    assert (cfg.d_vocab, cfg.n_ctx) == (50257, 1024)
    tokens = small_stand_in.to_tokens(PROMPT)
    logits, cache = small_stand_in.run_with_cache(tokens)
    assert logits.shape == (1, tokens.shape[1], 50257)
    assert cache["pattern", 9].shape == (1, 12, tokens.shape[1], tokens.shape[1])
    assert cache["z", 9].shape == (1, tokens.shape[1], 12, 64)


def test_medium_shapes():
    model = load_model("gpt2-medium", weights="random", seed=0, device="cpu")
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head) == (24, 16, 1024, 64)
    assert model.is_stand_in and model.casebook_name == "gpt2-medium"
    assert model.W_Q.shape == (24, 16, 1024, 64) and model.W_in.shape == (24, 1024, 4096)
    logits = model(model.to_tokens("Hello, world!"))
    assert logits.shape == (1, 5, 50257)


def test_stand_in_weights_follow_gpt2_init_with_gpt2s_kinds_of_biases():
    """GPT-2's init for matrices and embeddings (built on meta, given memory, initialised
    once); biases and LayerNorm parameters drawn from STAND_IN_INIT, as the docstring says."""
    from helpers.models import STAND_IN_INIT, ModelSpec, _random_hf_gpt2

    spec = ModelSpec("tiny-gpt2", "openai-community/gpt2", n_layers=2, n_heads=16, d_model=256)
    hf = _random_hf_gpt2(spec, seed=0)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    names = set()

    def drawn(p, mean, std, name):  # mean within 4 standard errors, std within 15 %
        assert abs(p.mean().item() - mean) < 4 * std / p.numel() ** 0.5, (name, p.mean().item())
        assert abs(p.std().item() - std) < 0.15 * std, (name, p.std().item(), std)

    for name, p in hf.named_parameters():
        names.add(name)
        assert torch.isfinite(p).all(), name
        if ".ln_" in name or "ln_f" in name:
            if name.endswith("weight"):
                drawn(p, 1.0, STAND_IN_INIT["ln_weight_std"], name)
            else:
                drawn(p, 0.0, STAND_IN_INIT["ln_bias_std"], name)
        elif name.endswith("bias"):  # GPT-2's init would leave these at zero
            key = "out_bias_std" if name.endswith("c_proj.bias") else "in_bias_std"
            drawn(p, 0.0, STAND_IN_INIT[key], name)
        else:  # N(0, 0.02); the residual projections N(0, 0.02 / sqrt(2 n_layers))
            std = 0.02 / (2 * spec.n_layers) ** 0.5 if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std().item() - std) < 0.1 * std, (name, p.std().item())
    assert "transformer.h.1.mlp.c_proj.weight" in names and "transformer.wpe.weight" in names
    assert "transformer.ln_f.bias" in names and "transformer.h.0.attn.c_attn.bias" in names
    again = _random_hf_gpt2(spec, seed=0).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in hf.state_dict().items())
    other = _random_hf_gpt2(spec, seed=1).state_dict()
    assert not torch.equal(other["transformer.ln_f.bias"], hf.state_dict()["transformer.ln_f.bias"])


def test_compatibility_mode_biases_are_not_zero(tiny_model):
    """What the real GPT-2 has after folding: b_U (ln_f's bias through W_U), b_O (value
    biases folded in), b_in; a helper that drops one changes numbers on the stand-in."""
    for name in ("b_U", "b_O", "b_in", "b_Q", "b_K"):
        assert getattr(tiny_model, name).abs().max() > 1e-3, name


def test_stand_in_is_labelled_and_frozen(small_stand_in):
    assert small_stand_in.is_stand_in is True and is_stand_in(small_stand_in)
    assert small_stand_in.casebook_name == "gpt2-small"
    assert not any(p.requires_grad for p in small_stand_in.parameters())
    assert small_stand_in.compatibility_mode


def test_same_seed_same_logits_other_seed_other_logits(small_stand_in):
    tokens = small_stand_in.to_tokens(PROMPT)
    again = load_model("gpt2", weights="random", seed=0, device="cpu")
    other = load_model("gpt2", weights="random", seed=1, device="cpu")
    reference = small_stand_in(tokens)
    assert torch.equal(again(tokens), reference)
    assert not torch.allclose(other(tokens), reference)


def test_loading_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_model("gpt2-small", weights="random", seed=3, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_stand_in_touches_neither_network_nor_cache(empty_hf_home):
    # conftest sets HF_HUB_OFFLINE=1 and an empty HF_HOME; the session's models loaded fine.
    files = [p for p in empty_hf_home.rglob("*") if p.is_file()]
    assert files == [], f"the stand-in wrote to the Hugging Face cache: {files[:5]}"


@pytest.mark.parametrize("by", ["layer", "head", "neuron"])
def test_dla_components_sum_to_logit_difference(small_stand_in, by):
    model = small_stand_in
    prompts = [PROMPT, "The Eiffel Tower is in the city of Paris, and"]
    tokens = model.to_tokens(prompts, padding_side="right")
    lengths = torch.tensor([len(model.to_tokens(p)[0]) for p in prompts])
    positions = lengths - 1  # each prompt's own last real token
    answer = torch.tensor([model.to_single_token(" Mary"), model.to_single_token(" the")])
    wrong = torch.tensor([model.to_single_token(" John"), model.to_single_token(" a")])
    logits, cache = model.run_with_cache(tokens)
    parts, labels = dla(model, cache, answer, wrong, positions, by=by)
    target = logit_diff(logits, answer, wrong, positions, mean=False)
    assert len(labels) == parts.shape[0]
    assert torch.allclose(parts.sum(0), target, atol=1e-4), (parts.sum(0), target)
    # Not trivially true: dropping one large component breaks the identity.
    biggest = parts.abs().sum(1).argmax()
    assert not torch.allclose(parts.sum(0) - parts[biggest], target, atol=1e-4)


def test_registry_covers_larger_gpt2s_without_code_changes():
    assert resolve_model_name("gpt2-large").n_layers == 36
    assert resolve_model_name("openai-community/gpt2-xl").d_model == 1600
    assert {"gpt2-small", "gpt2-medium"} <= set(SUPPORTED_MODELS)


def test_the_model_table_lives_once_in_the_torch_free_hub_module():
    import subprocess
    import sys
    from pathlib import Path

    from helpers import hub, models

    assert models.SUPPORTED_MODELS is hub.SUPPORTED_MODELS and models.ModelSpec is hub.ModelSpec
    # the book build loads hub.py on its own, without importing torch
    path = Path(hub.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('casebook_hub', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m\n"
        "spec.loader.exec_module(m)\n"
        "print(sorted(m.SUPPORTED_MODELS), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'gpt2-medium'" in out and out.strip().endswith("False")
