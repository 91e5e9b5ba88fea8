"""A tiny GPT-2 with a planted letter-mover head, for test_acronyms.py (imported, not a conftest).

2 layers, 2 heads, d_model 128 (d_head 64), random weights (GPT-2's initializer range), with
head 1.0 set by hand to do what the paper's letter movers do on the 11-token acronym layout
``BOS The C1 T1 C2 T2 C3 T3 " (" A1 A2``:

* tokens: the spaced capitals " A".." Z" embed as ``NORM · e_i`` (i = 0..25), the letters
  "A".."Z" as ``NORM · e_{26+i}`` (GPT-2 ties W_U to W_E: these are their unembeddings too);
* positions: C1, C2, C3 (columns 2, 4, 6) carry key markers e_52, e_53, e_54; P1, P2, P3
  (columns 8, 9, 10) query markers e_55, e_56, e_57;
* QK: query dim j reads e_{55+j}, key dim j reads e_{52+j}, so Pi attends to Ci;
* OV: value dim j reads e_j (the spaced capital), output writes ``ALPHA · e_{26+j}``: the
  head copies " X" at Ci into the logit of "X" at Pi.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from conftest_patching import boot
from helpers.models import ModelSpec, gpt2_tokenizer

SPEC = ModelSpec("tiny-letter-mover", "openai-community/gpt2", n_layers=2, n_heads=2, d_model=128)
MOVER = (1, 0)
NORM, MARK, QK, ALPHA = 8.0, 8.0, 2.0, 4.0


@lru_cache(maxsize=1)
def build_letter_mover(seed: int = 5):
    from transformers import GPT2Config, GPT2LMHeadModel

    d, dh = SPEC.d_model, SPEC.d_head
    config = GPT2Config(n_layer=SPEC.n_layers, n_head=SPEC.n_heads, n_embd=d, n_positions=32,
                        vocab_size=SPEC.d_vocab, initializer_range=0.02)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(config)
    tok = gpt2_tokenizer()
    L, h = MOVER
    with torch.no_grad():
        wte, wpe = hf.transformer.wte.weight, hf.transformer.wpe.weight
        for i in range(26):
            spaced, letter = tok.encode(" " + chr(65 + i))[0], tok.encode(chr(65 + i))[0]
            wte[spaced] = 0.0
            wte[spaced, i] = NORM
            wte[letter] = 0.0
            wte[letter, 26 + i] = NORM
        for j, (key_pos, query_pos) in enumerate(((2, 8), (4, 9), (6, 10))):
            wpe[key_pos, 52 + j] = MARK
            wpe[query_pos, 55 + j] = MARK
        attn = hf.transformer.h[L].attn
        W, b = attn.c_attn.weight, attn.c_attn.bias
        q = slice(h * dh, (h + 1) * dh)
        k = slice(d + h * dh, d + (h + 1) * dh)
        v = slice(2 * d + h * dh, 2 * d + (h + 1) * dh)
        for s in (q, k, v):
            W[:, s] = 0.0
            b[s] = 0.0
        for j in range(3):
            W[55 + j, q.start + j] = QK
            W[52 + j, k.start + j] = 1.0
        for j in range(26):
            W[j, v.start + j] = 1.0
        P = attn.c_proj.weight
        P[h * dh : (h + 1) * dh] = 0.0
        for j in range(26):
            P[h * dh + j, 26 + j] = ALPHA
    return boot(hf, SPEC, seed)
