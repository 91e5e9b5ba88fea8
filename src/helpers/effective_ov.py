"""Effective OV circuits: what a head would write about a token, read without a prompt.

A head's OV circuit maps what it reads at a key position to what it writes at the query.
Reading *tokens* through it, with no prompt and no attention pattern, screens every head of a
model at once for a token-to-token map (copying, succession, ...):

    token t → input representation x(t) → LN → W_V, b_V → W_O → LN → W_U → logits

* :func:`token_inputs`: the representation x(t) the head is fed: the raw token embedding
  ``"embed"``, or the output of MLP0 on it ``"mlp0"`` (the block-0 MLP with its LayerNorm,
  applied to the embedding alone: no position embedding, no attention 0), or their sum
  ``"embed+mlp0"``. The LayerNorms are the folded ones of compatibility mode.
* :func:`effective_ov_logits`: ``[n_layers, n_heads, n, m]`` logits of every head (or of the
  given ones) restricted to ``m`` candidate columns, computed layer by layer in batches.
* :func:`argmax_score`: the share of rows whose top candidate is the target (e.g. a
  succession score: restricted to the task's tokens, is the successor on top?).
* :func:`mean_logit_score`: the naive alternative, the target's logit above the vocabulary
  mean, which rewards a head that boosts a whole class of tokens.
* :func:`head_logits_at`: the in-context counterpart: each head's *direct* logits (its
  output at a prompt position through the final LayerNorm, scale frozen) over candidate
  columns, so a head can be scored by argmax among candidates, not only by one token's DLA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .circuits import Head, parse_head
from .hooks import folded_layer_norm

__all__ = ["token_inputs", "effective_ov_logits", "argmax_score", "mean_logit_score", "head_logits_at",
           "INPUTS"]

INPUTS = ("embed", "mlp0", "embed+mlp0")


def _act(model, x: torch.Tensor) -> torch.Tensor:
    name = model.cfg.act_fn
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return torch.nn.functional.gelu(x, approximate="tanh")
    if name == "gelu":
        return torch.nn.functional.gelu(x)
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"unsupported MLP activation {name!r}")


@torch.no_grad()
def token_inputs(model, token_ids, kind: str = "mlp0") -> torch.Tensor:
    """``[n, d_model]``: the representation of each token that the screen feeds the heads.

    ``kind``: ``"embed"`` (``W_E[t]``), ``"mlp0"`` (MLP0's output on ``LN(W_E[t])``) or
    ``"embed+mlp0"`` (both summed, the residual stream after MLP0 without attention 0).
    """
    if kind not in INPUTS:
        raise ValueError(f"kind must be one of {INPUTS}, got {kind!r}")
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("token_ids is empty: the screen needs at least one token")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token ids must be in 0..{model.cfg.d_vocab - 1}")
    emb = model.W_E[ids.to(model.W_E.device)]
    if kind == "embed":
        return emb
    hidden = _act(model, folded_layer_norm(emb, model.cfg.eps) @ model.W_in[0] + model.b_in[0])
    mlp = hidden @ model.W_out[0] + model.b_out[0]
    return mlp if kind == "mlp0" else emb + mlp


@torch.no_grad()
def effective_ov_logits(
    model,
    inputs: torch.Tensor,
    columns: torch.Tensor | Sequence[int] | None = None,
    *,
    heads: Sequence[str | Head] | None = None,
    include_bias: bool = True,
    unembed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of each head's OV circuit on ``inputs`` ``[n, d_model]``.

    Returns ``[n_layers, n_heads, n, m]`` (``m = len(columns)``, or ``d_vocab`` when
    ``columns`` is None); heads not listed in ``heads`` are NaN. Each layer's heads are
    computed in one batched product (on the model's device; the result is on the CPU), so
    GPT-2 medium's 384 heads on 300 tokens take about a second. ``include_bias`` adds the
    value bias ``b_V``. ``unembed``
    ``[d_model, m]`` replaces the unembedding columns (e.g. to append ``W_U.mean(1)``, the
    vocabulary-mean logit); give either ``columns`` or ``unembed``.
    """
    if unembed is not None and columns is not None:
        raise ValueError("give columns or unembed, not both")
    if inputs.ndim != 2 or inputs.shape[1] != model.cfg.d_model:
        raise ValueError(f"inputs must be [n, d_model={model.cfg.d_model}], got {tuple(inputs.shape)}")
    device = model.W_U.device
    if unembed is not None:
        W_U = unembed.to(device)
    elif columns is not None:
        W_U = model.W_U[:, torch.as_tensor(columns, dtype=torch.long).to(device)]
    else:
        W_U = model.W_U
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.full((n_layers, n_heads, inputs.shape[0], W_U.shape[1]), float("nan"))
    wanted = None if heads is None else {parse_head(h) for h in heads}
    # the bridge builds W_V / b_V / W_O by stacking every layer on each access: read once
    W_V, W_O = model.W_V, model.W_O
    b_V = model.b_V if include_bias else None
    x = folded_layer_norm(inputs.to(device=W_V.device, dtype=W_V.dtype), model.cfg.eps)
    for L in range(n_layers):
        hs = [h for h in range(n_heads) if wanted is None or (L, h) in wanted]
        if not hs:
            continue
        v = torch.einsum("nd,hde->hne", x, W_V[L, hs])
        if b_V is not None:
            v = v + b_V[L, hs][:, None, :]
        written = torch.einsum("hne,hed->hnd", v, W_O[L, hs])
        out[L, hs] = (folded_layer_norm(written, model.cfg.eps) @ W_U).float().cpu()
    return out


def argmax_score(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Share of rows whose largest logit is at column ``targets`` (over the last two dims).

    ``logits``: ``[..., n, m]``; ``targets``: ``[n]`` column indices; ``valid``: ``[n]`` bool,
    rows to count (default all). Returns ``[...]``; NaN rows (unscored heads) give NaN.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    n = logits.shape[-2]
    if targets.shape != (n,):
        raise ValueError(f"targets must be [n = {n}], got {tuple(targets.shape)}")
    valid = torch.ones(n, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    if not valid.any():
        raise ValueError("no valid rows to score")
    if int(targets[valid].min()) < 0 or int(targets[valid].max()) >= logits.shape[-1]:
        raise ValueError("targets must be column indices of logits")
    hit = (logits.argmax(-1) == targets).float()
    score = hit[..., valid].mean(-1)
    return torch.where(logits[..., 0, 0].isnan(), torch.full_like(score, float("nan")), score)


def mean_logit_score(logits_full_mean: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``[...]``: mean over rows of (target logit − the row's mean logit over the vocabulary).

    ``logits_full_mean``, ``target_logits``: ``[..., n]``. The naive score: it is large for a
    head that raises the target's whole class, whether or not the target wins in it.
    """
    return (target_logits - logits_full_mean).mean(-1)


@torch.no_grad()
def head_logits_at(model, tokens: torch.Tensor, positions, columns, *, batch_size: int = 64) -> torch.Tensor:
    """``[B, n_layers, n_heads, m]``: each head's direct logits at one position per prompt.

    ``tokens`` ``[B, T]``; ``positions`` ``[B]`` (the position read in each prompt);
    ``columns`` ``[m]`` token ids (the same candidates for every prompt). A head's direct
    logit is its output ``z @ W_O`` at that position, centred and divided by the final
    LayerNorm's scale of the clean run, onto ``W_U[:, column]``: the same quantity as
    :func:`helpers.head_direct_effects`' ``dla`` for one answer, for many candidates at once.
    """
    from .hooks import StopForward, as_tokens, hook_name

    tokens = as_tokens(tokens)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    columns = torch.as_tensor(columns, dtype=torch.long).reshape(-1)
    if tokens.shape[0] == 0 or positions.shape != (tokens.shape[0],):
        raise ValueError(f"need one position per prompt: {tokens.shape[0]} prompts, "
                         f"{positions.numel()} positions")
    if int(positions.min()) < 0 or int(positions.max()) >= tokens.shape[1]:
        raise ValueError("a position lies outside tokens")
    if columns.numel() == 0:
        raise ValueError("columns is empty: give at least one candidate token")
    n_layers = model.cfg.n_layers
    U = model.W_U[:, columns.to(model.W_U.device)].float()
    U = U - U.mean(0, keepdim=True)  # the folded final LN centres its input
    readout = torch.einsum("lhed,dm->lhem", model.W_O.float(), U)  # each head's z onto each column
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size].to(model.cfg.device)
        rows = torch.arange(chunk.shape[0], device=chunk.device)
        p = positions[start:start + batch_size].to(chunk.device)
        store: dict = {}

        def keep_z(z, hook):
            store[hook.name] = z[rows, p].float()

        def stop(resid, hook):  # the final LN's scale, then skip the unembedding
            x = resid[rows, p].float()
            x = x - x.mean(-1, keepdim=True)
            store["scale"] = (x.pow(2).mean(-1) + model.cfg.eps).sqrt()
            raise StopForward

        hooks = [(hook_name("z", L), keep_z) for L in range(n_layers)]
        try:
            model.run_with_hooks(chunk, fwd_hooks=hooks + [(hook_name("final_resid"), stop)])
        except StopForward:
            pass
        z = torch.stack([store[hook_name("z", L)] for L in range(n_layers)], 1)  # [b, L, H, e]
        scale = store["scale"].reshape(-1, 1, 1, 1)
        out.append((torch.einsum("blhe,lhem->blhm", z, readout) / scale).cpu())
    return torch.cat(out)
