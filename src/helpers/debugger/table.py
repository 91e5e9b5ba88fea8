"""The node table: every node's activation, write norm, direct effect and estimated total
effect (TDB's columns), built from one hooked run.

* ``direct_effect``: the node's write dotted with the target's gradient at its read-in (for
  the logit difference: the direction of interest through the final LayerNorm, its scale held
  at this run's value, so the column sums to the logit difference exactly over heads,
  neurons, embeddings and biases);
* ``est_total_effect``: activation × d(target)/d(activation), the first-order effect of
  zeroing the node.

With an SAE, its active latents (kind ``latent``) and its error node (kind ``sae_error``, one
per token) decompose the residual stream at the SAE's layer: they are not extra writes, so
they are left out of the direct-effect sum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .nodes import Node, sae_layer
from .run import LogitTarget, weights


def _to_frame(cols: dict) -> pd.DataFrame:
    return pd.DataFrame({k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v)
                         for k, v in cols.items()})


def direction_grid(dbg) -> tuple[torch.Tensor, int | None, str | None]:
    """``[seq, d_model]``: what a write at each position is dotted with for the direct
    effect; the layer and site of the target's read-in (None for the logits)."""
    run, model = dbg._run, dbg.model
    if isinstance(dbg._target, LogitTarget):
        W_U = weights(model)["W_U"]
        d = (W_U[:, dbg.target_id] - W_U[:, dbg.distractor_id]).float()
        d = (d - d.mean()) / run.final_scale
        grid = torch.zeros(dbg.n_tokens, d.shape[0], device=d.device)
        grid[-1] = d
        return grid, None, None
    node = dbg._target.node
    site = "resid_mid" if node.kind == "neuron" else "resid_pre"
    return run.grads[site][node.layer].float(), node.layer, site


@torch.no_grad()
def build_frame(dbg) -> pd.DataFrame:
    model, run = dbg.model, dbg._run
    cfg = model.cfg
    S, Lmax = dbg.n_tokens, cfg.n_layers
    W = weights(model)
    grid, t_layer, t_site = direction_grid(dbg)
    limit_heads = Lmax if t_layer is None else (t_layer if t_site == "resid_pre" else t_layer + 1)
    limit_neurons = Lmax if t_layer is None else t_layer
    parts = []
    if limit_heads:
        pattern = run.acts["pattern"][:limit_heads].float()  # [L, H, dest, src]
        v = run.acts["v"][:limit_heads].float()  # [L, src, H, dh]
        vo = torch.einsum("lshd,lhdm->lshm", v, W["W_O"][:limit_heads].float())
        vo_dot = torch.einsum("lshm,tm->lhts", vo, grid)  # [L, H, dest, src]
        L_, h_, d_, s_ = torch.meshgrid(*(torch.arange(n) for n in pattern.shape), indexing="ij")
        keep = (s_ <= d_).reshape(-1)
        norm = vo.norm(dim=-1).permute(0, 2, 1)[:, :, None, :]  # [L, H, 1, src]
        grad = run.grads["pattern"][:limit_heads].float()
        parts.append(_to_frame({
            "kind": "head", "layer": L_.reshape(-1)[keep], "index": h_.reshape(-1)[keep],
            "dest": d_.reshape(-1)[keep], "src": s_.reshape(-1)[keep],
            "activation": pattern.reshape(-1)[keep.to(pattern.device)],
            "write_norm": (pattern.abs() * norm).reshape(-1)[keep.to(pattern.device)],
            "direct_effect": (pattern * vo_dot).reshape(-1)[keep.to(pattern.device)],
            "est_total_effect": (pattern * grad).reshape(-1)[keep.to(pattern.device)],
        }))
    if limit_neurons:
        post = run.acts["post"][:limit_neurons].float()  # [L, pos, N]
        W_out = W["W_out"][:limit_neurons].float()  # [L, N, d]
        out_dot = torch.einsum("lnm,pm->lpn", W_out, grid)
        L_, p_, n_ = torch.meshgrid(*(torch.arange(n) for n in post.shape), indexing="ij")
        parts.append(_to_frame({
            "kind": "neuron", "layer": L_.reshape(-1), "index": n_.reshape(-1),
            "dest": p_.reshape(-1), "src": torch.full((post.numel(),), -1),
            "activation": post.reshape(-1),
            "write_norm": (post.abs() * W_out.norm(dim=-1)[:, None, :]).reshape(-1),
            "direct_effect": (post * out_dot).reshape(-1),
            "est_total_effect": (post * run.grads["post"][:limit_neurons].float()).reshape(-1),
        }))
    if dbg.sae is not None and _sae_upstream(dbg, t_layer):
        parts.extend(_latent_parts(dbg, grid))
    emb = (run.acts["embed"] + run.acts["pos_embed"]).float()  # [pos, d]
    parts.append(_to_frame({
        "kind": "embed", "layer": torch.full((S,), -1), "index": torch.zeros(S, dtype=torch.long),
        "dest": torch.arange(S), "src": torch.full((S,), -1),
        "activation": torch.full((S,), float("nan")), "write_norm": emb.norm(dim=-1),
        "direct_effect": (emb * grid).sum(-1),
        "est_total_effect": (emb * run.grads["embed"].float()).sum(-1),
    }))
    rows = []
    for L in range(Lmax):
        for site, b, limit in (("attn_out", W["b_O"][L], limit_heads),
                               ("mlp_out", W["b_out"][L], limit_neurons)):
            if L >= limit:
                continue
            b = b.float()
            rows.append(dict(kind="bias", layer=L, index=0 if site == "attn_out" else 1,
                             dest=-1, src=-1, activation=float("nan"),
                             write_norm=float(b.norm()), direct_effect=float((grid @ b).sum()),
                             est_total_effect=float((run.grads[site][L].float() @ b).sum())))
    if isinstance(dbg._target, LogitTarget) and W["b_U"] is not None:
        bu = float(W["b_U"][dbg.target_id] - W["b_U"][dbg.distractor_id])
        rows.append(dict(kind="bias", layer=Lmax, index=2, dest=-1, src=-1,
                         activation=float("nan"), write_norm=float("nan"), direct_effect=bu,
                         est_total_effect=bu))
    parts.append(pd.DataFrame(rows))
    frame = pd.concat(parts, ignore_index=True)
    for c in ("layer", "index", "dest", "src"):
        frame[c] = frame[c].astype(np.int64)
    return frame


def _sae_upstream(dbg, t_layer) -> bool:
    """Does the SAE's splice sit upstream of the target?"""
    if t_layer is None:
        return True
    node = dbg._target.node
    s = sae_layer(dbg.sae)
    return s < t_layer or (s == t_layer and node.kind != "latent")


def _latent_parts(dbg, grid) -> list[pd.DataFrame]:
    run, sae = dbg._run, dbg.sae
    layer = sae_layer(sae)
    f, g = run.acts["latent"].float(), run.grads["latent"].float()  # [pos, d_sae]
    W_dec = sae.W_dec.float().to(f.device)
    pos, lat = torch.nonzero(f != 0, as_tuple=True)
    act = f[pos, lat]
    direct = act * (W_dec[lat] * grid[pos]).sum(-1)
    err, eg = run.acts["sae_error"].float(), run.grads["sae_error"].float()
    S = err.shape[0]
    return [
        _to_frame({"kind": "latent", "layer": torch.full_like(pos, layer), "index": lat,
                   "dest": pos, "src": torch.full_like(pos, -1), "activation": act,
                   "write_norm": act.abs() * W_dec.norm(dim=-1)[lat], "direct_effect": direct,
                   "est_total_effect": act * g[pos, lat]}),
        _to_frame({"kind": "sae_error", "layer": torch.full((S,), layer),
                   "index": torch.zeros(S, dtype=torch.long), "dest": torch.arange(S),
                   "src": torch.full((S,), -1), "activation": torch.full((S,), float("nan")),
                   "write_norm": err.norm(dim=-1), "direct_effect": (err * grid).sum(-1),
                   "est_total_effect": (err * eg).sum(-1)}),
    ]


def label_of(r) -> str:
    if r.kind in ("head", "neuron", "latent"):
        return Node(r.kind, r.layer, r.index, r.dest, r.src if r.kind == "head" else None).label
    if r.kind == "embed":
        return f"E@{r.dest}"
    if r.kind == "sae_error":
        return f"err{r.layer}@{r.dest}"
    return "b_U" if r.index == 2 else f"{'b_O' if r.index == 0 else 'b_out'}{r.layer}"


def token_text(r, toks) -> str:
    if r.kind == "head":
        return f"{toks[r.dest]!r} <- {toks[r.src]!r}"
    return repr(toks[r.dest]) if r.dest >= 0 else ""


def node_writes(dbg, rows: pd.DataFrame) -> list[torch.Tensor | None]:
    """Each row's write direction in the residual stream (sign of its activation applied);
    None for embeddings, biases and error nodes."""
    W, out = weights(dbg.model), []
    for r in rows.itertuples():
        sign = float(np.sign(r.activation) or 1.0) if np.isfinite(r.activation) else 1.0
        if r.kind == "head":
            w = dbg._run.acts["v"][r.layer, r.src, r.index].float() @ W["W_O"][r.layer, r.index].float()
        elif r.kind == "neuron":
            w = W["W_out"][r.layer, r.index].float()
        elif r.kind == "latent":
            w = dbg.sae.W_dec[r.index].float().to(W["W_U"].device)
        else:
            out.append(None)
            continue
        out.append(w * sign)
    return out


@torch.no_grad()
def voted_tokens(dbg, rows: pd.DataFrame, k: int) -> tuple[list[str], list[str]]:
    """The ``k`` tokens each row's write up- and down-votes most through ``W_U``."""
    model = dbg.model
    writes = node_writes(dbg, rows)
    real = [w for w in writes if w is not None]
    if real:
        logits = torch.stack(real) @ weights(model)["W_U"].float()
        top = logits.topk(k, dim=-1).indices.tolist()
        bottom = (-logits).topk(k, dim=-1).indices.tolist()
    ups, downs, it = [], [], 0
    for w in writes:
        if w is None:
            ups.append("")
            downs.append("")
            continue
        ups.append(", ".join(repr(model.to_string([i])) for i in top[it]))
        downs.append(", ".join(repr(model.to_string([i])) for i in bottom[it]))
        it += 1
    return ups, downs
