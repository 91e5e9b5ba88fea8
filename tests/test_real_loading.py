"""The real-weights path, end to end and offline: weights saved in the Hugging Face cache
layout (as ``hf download`` leaves them) under a temporary HF_HOME, then
``load_model(..., weights="pretrained")`` with HF_HUB_OFFLINE=1.

Runs in a subprocess: huggingface_hub and transformers read HF_HOME when they are imported,
and this test process already points them at an empty cache (conftest.py).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys
    from pathlib import Path
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from helpers import CasebookError, gpt2_tokenizer, load_model
    from helpers.devices import DeviceHarness, on_accelerator
    from helpers.models import gpt2_like_parameters_

    def fill_cache(hf_id, config, seed):
        """Save a GPT-2 with seeded random weights where `hf download hf_id` would."""
        repo = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + hf_id.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(config).eval()
        gpt2_like_parameters_(hf)  # biases and LayerNorm parameters non-zero, as GPT-2's
        hf.save_pretrained(snapshot, safe_serialization=True)
        gpt2_tokenizer().save_pretrained(snapshot)
        return hf

    out = {}
    small = GPT2Config(n_layer=12, n_head=12, n_embd=768)
    hf = fill_cache("openai-community/gpt2", small, seed=7)
    model = load_model("gpt2-small", weights="pretrained", device="cpu")
    tokens = torch.tensor([gpt2_tokenizer().encode("When Mary and John went to the store, John gave")])
    with torch.no_grad():
        mine = model(tokens).log_softmax(-1)
        theirs = hf(tokens).logits.log_softmax(-1)
    out["stand_in"] = bool(model.is_stand_in)
    out["max_diff"] = (mine - theirs).abs().max().item()
    out["shape"] = list(mine.shape)

    # the same weights booted onto a GPU (the device harness's pretend cuda), CPU tokens in
    with DeviceHarness():
        gpu = load_model("gpt2-small", weights="pretrained")
        out["gpu_device"] = str(gpu.cfg.device)
        out["gpu_off"] = sum(not on_accelerator(p) for p in gpu.parameters())
        with torch.no_grad():
            on_gpu = gpu(tokens).log_softmax(-1)
        out["gpu_diff"] = (on_gpu.cpu() - theirs).abs().max().item()

    # a cache holding another architecture under gpt2-medium's hub id
    fill_cache("openai-community/gpt2-medium", GPT2Config(n_layer=2, n_head=4, n_embd=64), seed=1)
    try:
        load_model("gpt2-medium", weights="pretrained", device="cpu")
        out["wrong_arch"] = "loaded silently"
    except CasebookError as err:
        out["wrong_arch"] = str(err)
    print("RESULT " + json.dumps(out))
    '''
)


def test_pretrained_path_loads_cached_weights_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["stand_in"] is False
    assert out["shape"][-1] == 50257
    # compatibility mode folds LayerNorm and centres weights: log-probabilities are unchanged
    assert out["max_diff"] < 1e-3, out
    assert out["gpu_device"].startswith("cuda") and out["gpu_off"] == 0, out
    assert out["gpu_diff"] < 1e-3, out
    assert "not gpt2-medium" in out["wrong_arch"] and "2 layers" in out["wrong_arch"], out
