"""Fixtures for test_patching.py and test_ablation.py (imported from them, not a conftest).

``planted`` is a 3-layer, 4-head, d_model-64 GPT-2 with random weights (initializer range
0.15, larger than GPT-2's 0.02, so that patching effects are far from zero; biases and
LayerNorm parameters non-zero, drawn as the stand-in's) in which head 2.0 is set by hand to
be a "name mover":

* position marker: the position embedding of position 1 (where every prompt puts its name)
  gets a large component ``MARK`` on residual direction 63;
* QK: the head's query is a constant (query weights zero, query bias ``C`` on its first
  dimension) and its key reads direction 63, so from every position it attends to
  position 1 (score ≈ C · 5.6 / 4 there, ≈ C · N(0, 1) / 4 elsewhere);
* OV: value = residual directions 0..15, output = ``ALPHA`` times the same directions, so
  the head copies whatever sits in directions 0..15 at position 1 to every later position;
* names: the embeddings of " Mary" and " John" are set to ``NAME_NORM`` · e_0 and
  ``NAME_NORM`` · e_1 (GPT-2 ties W_U to W_E, so these are also their unembeddings).

So on "x Mary ... END" the head writes ≈ e_0 at END and logit(Mary) − logit(John) is large
and due to this one head; replacing the name by John flips it. Weights are edited on the
Hugging Face model before booting the bridge; compatibility mode (LN folding, centring)
preserves the function.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.models import ModelSpec, finish_model, gpt2_like_parameters_, gpt2_tokenizer  # noqa: E402

SPEC = ModelSpec("tiny-planted", "openai-community/gpt2", n_layers=3, n_heads=4, d_model=64)
PLANTED = (2, 0)
MARK, NAME_NORM, C, ALPHA = 8.0, 8.0, 32.0, 2.0


def boot(hf_model, spec: ModelSpec, seed: int, device="cpu"):
    """A bridge in compatibility mode over a given Hugging Face GPT-2 (offline), on
    ``device`` (the model is moved there before the bridge is booted, as the stand-in)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2TokenizerFast

    hf_model.eval()
    hf_model.to(device)
    with tempfile.TemporaryDirectory(prefix="casebook-test-tok-") as folder:
        gpt2_tokenizer().save_pretrained(folder)
        tokenizer = GPT2TokenizerFast.from_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(spec.hf_id, hf_model=hf_model, tokenizer=tokenizer, device=device)
    return finish_model(bridge, spec, stand_in=True, seed=seed)


def seeded_hf_gpt2(spec: ModelSpec, seed: int, *, n_layers: int | None = None, n_positions: int = 64,
                   initializer_range: float = 0.02, gpt2_like: bool = True):
    """A Hugging Face GPT-2 of ``spec``'s shape with seeded random weights, to edit by hand
    before :func:`boot` (the global RNG is left as it was).

    ``gpt2_like`` (the default): non-zero biases and LayerNorm weights and biases, drawn as
    the stand-in's (``helpers.models.gpt2_like_parameters_``), so that a helper that drops
    or double-counts a bias changes the answer. Every planted and random test model uses
    it; a hand-built head that needs a bias of its own sets that head's bias (e.g.
    ``test_paper_methods.build_key_planted``), never the LayerNorms. ``gpt2_like=False``
    keeps GPT-2's init (biases 0, LayerNorm 1/0): only for a test about that init."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=n_layers or spec.n_layers, n_head=spec.n_heads, n_embd=spec.d_model,
                        n_positions=n_positions, vocab_size=spec.d_vocab, initializer_range=initializer_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(config)
        if gpt2_like:
            gpt2_like_parameters_(hf)
        return hf


def head_slices(head: int, spec: ModelSpec) -> tuple[slice, slice, slice]:
    """The columns of head ``head``'s query, key and value in a GPT-2 block's ``c_attn``
    (Conv1D: ``x @ W + b``, ``W`` ``[d_model, 3 d_model]``)."""
    d, dh = spec.d_model, spec.d_head
    return tuple(slice(i * d + head * dh, i * d + (head + 1) * dh) for i in range(3))


def name_ids() -> tuple[int, int]:
    tok = gpt2_tokenizer()
    return tok.encode(" Mary")[0], tok.encode(" John")[0]


@lru_cache(maxsize=1)
def build_planted(seed: int = 3):
    dh = SPEC.d_head
    hf = seeded_hf_gpt2(SPEC, seed, initializer_range=0.15, gpt2_like=True)
    mary, john = name_ids()
    L, h = PLANTED
    with torch.no_grad():
        wte, wpe = hf.transformer.wte.weight, hf.transformer.wpe.weight
        wte[mary] = 0.0
        wte[mary, 0] = NAME_NORM
        wte[john] = 0.0
        wte[john, 1] = NAME_NORM
        wpe[1, 63] = MARK
        attn = hf.transformer.h[L].attn
        W, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: x @ W + b, W [d, 3d]
        q, k, v = head_slices(h, SPEC)
        W[:, q] = 0.0
        b[q] = 0.0
        b[q.start] = C
        W[:, k] = 0.0
        b[k] = 0.0
        W[63, k.start] = 1.0
        W[:, v] = 0.0
        b[v] = 0.0
        for i in range(dh):
            W[i, v.start + i] = 1.0
        P = attn.c_proj.weight  # [d, d]: rows h*dh.. are this head's z
        P[h * dh : (h + 1) * dh] = 0.0
        for i in range(dh):
            P[h * dh + i, i] = ALPHA
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "W_U must be tied to W_E"
    return boot(hf, SPEC, seed)


@dataclass
class PlantedTask:
    model: object
    clean: torch.Tensor  # [batch, seq], right-padded
    corrupt: torch.Tensor  # the name at position 1 swapped
    answer: torch.Tensor  # [batch]
    wrong: torch.Tensor
    end: torch.Tensor  # [batch] position of each prompt's last real token
    lengths: torch.Tensor
    reference: torch.Tensor  # p_ABC-like prompts: position 1 holds other names


def planted_task(batch: int = 6, seq: int = 9, seed: int = 0) -> PlantedTask:
    model = build_planted()
    mary, john = name_ids()
    tok = gpt2_tokenizer()
    others = [tok.encode(n)[0] for n in (" Alice", " Bob", " Carol", " David", " Emma", " Frank")]
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1000, 30000, (batch, seq), generator=g)
    answer = torch.tensor([mary if i % 2 == 0 else john for i in range(batch)])
    wrong = torch.tensor([john if i % 2 == 0 else mary for i in range(batch)])
    clean[:, 1] = answer
    corrupt = clean.clone()
    corrupt[:, 1] = wrong
    reference = clean.clone()
    reference[:, 1] = torch.tensor([others[i % len(others)] for i in range(batch)])
    lengths = torch.tensor([seq - (i % 3) for i in range(batch)])
    pad = torch.arange(seq)[None, :] >= lengths[:, None]
    for t in (clean, corrupt, reference):
        t[pad] = 50256
    return PlantedTask(model, clean, corrupt, answer, wrong, lengths - 1, lengths, reference)


@pytest.fixture(scope="session")
def planted() -> PlantedTask:
    return planted_task()
