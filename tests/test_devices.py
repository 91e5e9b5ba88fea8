"""The device harness (helpers.devices) and the device-correct runtime it checks.

The harness makes the CPU pretend to be a CPU plus a ``cuda`` accelerator; these tests show
that it fails where a GPU would (mixed devices, ``.numpy()`` of a GPU tensor, float64 where
MPS has none), that the stand-in, the input rule and the generic helpers pass under it, and
that it catches the bugs of issue 26 when a fix is reverted.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from helpers import capture, head_means, logits_at_positions
from helpers.devices import DeviceHarness, DeviceMixError, on_accelerator
from helpers.hooks import activations_at, hook_name
from helpers.models import build_stand_in, finish_model, gpt2_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def harness():
    with DeviceHarness() as h:
        yield h


@pytest.fixture
def gpu_model(harness):
    """The tiny stand-in built on the pretend cuda, as load_model builds it on a GPU."""
    return finish_model(build_stand_in(TINY, seed=1, device="cuda"), TINY, stand_in=True, seed=1)


def tokens(batch=3, seq=7):
    g = torch.Generator().manual_seed(0)
    return torch.randint(1000, 30000, (batch, seq), generator=g)


# -- the harness itself ----------------------------------------------------------------------

def test_the_harness_raises_where_a_gpu_would(harness):
    cpu = torch.ones(4)
    gpu = cpu.to("cuda")
    assert gpu.device == torch.device("cuda", 0) and gpu.is_cuda and cpu.device.type == "cpu"
    assert not on_accelerator(cpu)  # moving copies: the original stays on the CPU
    with pytest.raises(DeviceMixError, match="same device"):
        cpu + gpu
    with pytest.raises(DeviceMixError, match="same device"):
        torch.cat([cpu, gpu])
    with pytest.raises(DeviceMixError, match="numpy"):
        gpu.numpy()
    with pytest.raises(DeviceMixError, match="numpy"):
        np.asarray(gpu * 2)
    with pytest.raises(DeviceMixError, match="float64"):
        gpu.double()
    with pytest.raises(DeviceMixError, match="generator"):
        torch.randn(3, generator=torch.Generator().manual_seed(0), device="cuda")
    with pytest.raises(DeviceMixError):
        cpu[torch.tensor([0, 1], device="cuda")]  # a CPU tensor indexed on the GPU


def test_what_a_gpu_allows_passes_the_harness(harness):
    gpu = torch.arange(6.0).to("cuda")
    assert np.array_equal(gpu.cpu().numpy(), np.arange(6.0))
    assert (gpu * torch.tensor(2.0)).device.type == "cuda"  # a 0-dim CPU tensor is a scalar
    assert gpu[torch.tensor([0, 2])].tolist() == [0.0, 2.0]  # a CPU index
    made = torch.zeros(6, device=gpu.device)  # device= of a GPU tensor is the GPU
    assert (made + gpu).device.type == "cuda" and on_accelerator(made)
    assert gpu.cpu().double().dtype == torch.float64
    assert gpu.to(torch.ones(1)).device.type == "cpu" and torch.ones(1).to(gpu).is_cuda
    linear = torch.nn.Linear(6, 2).to("cuda")
    assert all(on_accelerator(p) for p in linear.parameters())
    assert linear(gpu).is_cuda
    with pytest.raises(DeviceMixError):
        linear(torch.ones(6))


def test_the_mps_flavour_has_no_float64():
    with DeviceHarness("mps") as h:
        x = torch.ones(2).to("mps")
        assert h.device.type == "mps" and x.device.type == "mps"
        with pytest.raises(DeviceMixError, match="float64"):
            x.to(torch.float64)


def test_leaving_the_harness_restores_torch():
    new, grad = torch.nn.Parameter.__new__, torch.autograd.grad
    with DeviceHarness():
        pass
    assert torch.nn.Parameter.__new__ is new and torch.autograd.grad is grad
    torch.ones(2).numpy()


# -- the runtime under it -------------------------------------------------------------------

def test_the_stand_in_is_built_on_the_target_device(gpu_model):
    assert str(gpu_model.cfg.device).startswith("cuda")
    off = [n for n, p in gpu_model.named_parameters() if not on_accelerator(p)]
    assert off == []
    assert on_accelerator(gpu_model.W_E) and on_accelerator(gpu_model.casebook_value_bias)


def test_cpu_tokens_are_moved_to_the_model(gpu_model):
    """One rule (finish_model's): model(...), run_with_cache(...), run_with_hooks(...)."""
    toks = tokens()
    reference = finish_model(build_stand_in(TINY, seed=1), TINY, stand_in=True, seed=1)
    expected = reference(toks)
    logits = gpu_model(toks)
    assert logits.is_cuda and torch.allclose(logits.cpu(), expected, atol=1e-5)
    _, cache = gpu_model.run_with_cache(toks)
    assert cache["z", 1].is_cuda
    seen = []
    gpu_model.run_with_hooks(toks, fwd_hooks=[(hook_name("z", 0), lambda z, hook: seen.append(z.is_cuda))])
    assert seen == [True]
    mask = torch.ones_like(toks)
    assert gpu_model(toks, attention_mask=mask).is_cuda


def test_generic_helpers_run_on_the_accelerator(gpu_model):
    toks = tokens()
    logits, acts = capture(gpu_model, toks, [hook_name("z", 1)])
    assert logits.is_cuda and acts[hook_name("z", 1)].is_cuda
    last = logits_at_positions(gpu_model, toks, torch.tensor([6, 5, 4]))
    assert last.is_cuda and torch.allclose(last.cpu(), logits[torch.arange(3), torch.tensor([6, 5, 4])].cpu(),
                                           atol=1e-4)
    got = activations_at(gpu_model, toks, hook_name("resid_post", 0), torch.tensor([1, 2, 3]))
    assert got.is_cuda and got.shape == (3, 1, TINY.d_model)
    means = head_means(gpu_model, toks, groups=[0, 1, 0])
    assert means.is_cuda and means.dtype == torch.float32
    text = gpu_model.to_tokens("Hello world")  # the bridge's own tokenizer path
    assert text.is_cuda


# -- it catches the bugs of issue 26 when a fix is reverted ----------------------------------

def _stand_in_without_the_move(device):
    """build_stand_in as it was before issue 26: the bridge records the device, the weights
    stay on the CPU."""
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2TokenizerFast

    from helpers.models import _random_hf_gpt2

    hf_model = _random_hf_gpt2(TINY, 1).eval()
    with tempfile.TemporaryDirectory() as folder:
        gpt2_tokenizer().save_pretrained(folder)
        tok = GPT2TokenizerFast.from_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(TINY.hf_id, hf_model=hf_model, tokenizer=tok, device=device)
    return finish_model(bridge, TINY, stand_in=True, seed=1)


def test_harness_catches_a_stand_in_built_on_the_cpu(harness):
    old = _stand_in_without_the_move("cuda")
    with pytest.raises(DeviceMixError, match="same device"):
        old(tokens())
    fixed = finish_model(build_stand_in(TINY, seed=1, device="cuda"), TINY, stand_in=True, seed=1)
    assert fixed(tokens()).is_cuda


def test_harness_catches_cpu_tokens_without_the_input_rule(gpu_model):
    toks = tokens()
    with pytest.raises(DeviceMixError, match="same device"):
        type(gpu_model).forward(gpu_model, toks)  # the bridge's forward, without the rule
    assert gpu_model(toks).is_cuda


def test_harness_catches_numpy_without_cpu(gpu_model):
    logits = gpu_model(tokens())
    with pytest.raises(DeviceMixError, match="numpy"):
        logits[:, -1].numpy()  # factual recall's bug: .numpy() of a GPU tensor
    assert logits[:, -1].cpu().numpy().shape == (3, TINY.d_vocab)


def test_harness_catches_weights_made_on_the_cpu_beside_gpu_activations(gpu_model):
    """successor heads' train_sae / train_probe bug: a CPU generator's weights, never moved."""
    _, acts = capture(gpu_model, tokens(), [hook_name("resid_post", 0)])
    x = acts[hook_name("resid_post", 0)]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(TINY.d_model, 8, generator=g)
    with pytest.raises(DeviceMixError, match="same device"):
        x @ w
    assert (x @ w.to(x.device)).is_cuda


def test_harness_catches_float64_on_the_accelerator(gpu_model):
    """tracing.py's bug: .double() (MPS has no float64)."""
    _, acts = capture(gpu_model, tokens(), [hook_name("resid_post", 0)])
    x = acts[hook_name("resid_post", 0)]
    with pytest.raises(DeviceMixError, match="float64"):
        x.double()
    assert x.cpu().double().dtype == torch.float64


# -- the switch ------------------------------------------------------------------------------

def test_the_environment_switch_turns_the_harness_on():
    code = (
        "from helpers import setup_notebook\n"
        "from helpers.devices import active_harness\n"
        "from helpers.models import pick_device\n"
        "assert active_harness() is None\n"
        "setup_notebook()\n"
        "print(active_harness() is not None, pick_device(None), pick_device('cuda'))\n"
    )
    env = dict(os.environ, CASEBOOK_DEVICE_HARNESS="1", PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "cuda:0", "cuda"]
    env.pop("CASEBOOK_DEVICE_HARNESS")
    plain = subprocess.run([sys.executable, "-c", "from helpers import setup_notebook;"
                            "from helpers.devices import active_harness; setup_notebook();"
                            "print(active_harness())"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert plain.stdout.strip() == "None", plain.stderr[-2000:]


def test_patching_ablation_and_attribution_run_on_the_accelerator(gpu_model):
    from helpers import LogitDiffMetric, circuit_score, dla, logit_diff, patch_heads, path_patch

    toks, corrupt = tokens(4, 7), tokens(4, 7).flip(0)
    answer, wrong = torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11, 12])
    end = torch.tensor([6, 6, 5, 4])
    metric = LogitDiffMetric(answer, wrong, end)  # CPU tensors: the helpers move them
    means = head_means(gpu_model, toks)
    score = circuit_score(gpu_model, toks, metric, means, circuit={(1, 0): None})
    assert isinstance(score, float)
    assert torch.isfinite(torch.as_tensor(logit_diff(gpu_model(toks), answer, wrong, end)).cpu()).all()
    assert patch_heads(gpu_model, toks, corrupt, metric).shape[:2] == (TINY.n_layers, TINY.n_heads)
    parts, _ = dla(gpu_model, gpu_model.run_with_cache(toks)[1], answer, wrong, end)
    assert parts.shape[1] == 4
    path_patch(gpu_model, toks, corrupt, senders=[(0, 1)], receivers=[(1, 2)], metric=metric)


def test_a_factory_call_that_moves_leaves_its_input_where_it_was(harness):
    cpu = torch.arange(4)
    moved = torch.as_tensor(cpu, device="cuda")
    assert moved.is_cuda and not on_accelerator(cpu) and not cpu.is_cuda
    assert (cpu + torch.arange(4)).device.type == "cpu"  # still usable with CPU tensors


def test_a_cpu_generator_cannot_draw_on_the_accelerator(harness):
    g = torch.Generator().manual_seed(0)
    probs = torch.ones(2, 5).to("cuda")
    with pytest.raises(DeviceMixError, match="generator"):
        torch.multinomial(probs, 1, generator=g)
    drawn = torch.multinomial(probs.cpu(), 1, generator=g).to(probs.device)
    assert drawn.is_cuda
