"""Direct logit attribution (DLA): how much each component writes along a logit direction.

With compatibility mode the final LayerNorm is a centring plus a per-position scale, so
each component's contribution is ``ln_scale(component) · (W_U[:, a] − W_U[:, b])`` and the
contributions, plus the unembedding bias, add up to the logit difference exactly. The
functions below return that decomposition; tests check the sum.
"""

from __future__ import annotations

import torch

from .hooks import hook_name

__all__ = ["dla", "dla_by_layer", "dla_by_head", "head_direct_effects"]


def _logit_direction(model, answer: torch.Tensor, wrong: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, d_model]``: W_U[:, answer] − W_U[:, wrong] (just W_U[:, answer] if no wrong)."""
    answer = torch.as_tensor(answer, device=model.W_U.device).reshape(-1)
    direction = model.W_U[:, answer].T
    if wrong is not None:
        wrong = torch.as_tensor(wrong, device=model.W_U.device).reshape(-1)
        direction = direction - model.W_U[:, wrong].T
    return direction


def _bias_term(model, answer, wrong) -> torch.Tensor:
    b_U = getattr(model, "b_U", None)
    if b_U is None:
        return torch.zeros(len(answer))
    answer = torch.as_tensor(answer, device=b_U.device).reshape(-1)
    term = b_U[answer]
    if wrong is not None:
        term = term - b_U[torch.as_tensor(wrong, device=b_U.device).reshape(-1)]
    return term


def dla(
    model,
    cache,
    answer: torch.Tensor,
    wrong: torch.Tensor | None = None,
    positions: torch.Tensor | int = -1,
    *,
    by: str = "layer",
) -> tuple[torch.Tensor, list[str]]:
    """Per-prompt direct logit attribution, ``([n_components, batch], labels)``.

    ``by``: ``"layer"`` (embed, pos_embed, each layer's attention and MLP output),
    ``"head"`` (every head, each MLP, embeddings and biases) or ``"neuron"`` (every head,
    every MLP neuron, embeddings and biases). The last component, ``b_U``, is the
    unembedding bias difference, so the components sum to the logit difference.
    ``positions``: the position read per prompt (``[batch]``) or one int for all.
    """
    batch = cache["hook_embed"].shape[0]
    if isinstance(positions, int):
        pos_index = torch.full((batch,), positions, dtype=torch.long)
    else:
        pos_index = torch.as_tensor(positions, dtype=torch.long).cpu()
    if by == "layer":
        stack, labels = cache.decompose_resid(layer=-1, return_labels=True)
    elif by in ("head", "neuron"):
        stack, labels = cache.get_full_resid_decomposition(
            layer=-1, expand_neurons=(by == "neuron"), return_labels=True
        )
    else:
        raise ValueError(f"dla(by={by!r}) is not one of 'layer', 'head', 'neuron'.")
    rows = torch.arange(batch)
    stack = stack[:, rows, pos_index.to(stack.device)]  # [component, batch, d_model]
    # The final-LN scale at those positions, via the cache's own LN handling.
    scale = cache[hook_name("final_scale")][rows, pos_index.to(stack.device)]  # [batch, 1]
    stack = stack - stack.mean(-1, keepdim=True)
    stack = stack / scale
    direction = _logit_direction(model, answer, wrong).to(stack.device)
    if direction.shape[0] == 1 and batch > 1:
        direction = direction.expand(batch, -1)
    contributions = (stack * direction).sum(-1)  # [component, batch]
    bias = _bias_term(model, answer, wrong).to(contributions.device).expand(batch)
    return torch.cat([contributions, bias[None]]), list(labels) + ["b_U"]


def dla_by_layer(model, cache, answer, wrong=None, positions=-1):
    """Shorthand for ``dla(..., by="layer")``."""
    return dla(model, cache, answer, wrong, positions, by="layer")


def dla_by_head(model, cache, answer, wrong=None, positions=-1) -> torch.Tensor:
    """``[n_layers, n_heads, batch]``: each head's direct effect on the logit difference."""
    values, labels = dla(model, cache, answer, wrong, positions, by="head")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    return values[: n_layers * n_heads].reshape(n_layers, n_heads, -1)


@torch.no_grad()
def head_direct_effects(model, tokens, rows, positions, answers, *, batch_size: int = 16) -> dict:
    """Each head's direct effect on the answer's logit, and the drop under mean ablation.

    ``tokens``: ``[B, T]``; the triples ``(rows[i], positions[i], answers[i])`` name the
    prompt, the position read and the token scored (``m`` triples). Returns
    ``{"dla": [m, L, H], "drop": [m, L, H]}``: ``dla`` is the head's output at that position
    through the final LayerNorm (its scale frozen at the clean run's) onto ``W_U[:, answer]``;
    ``drop`` is ``dla`` minus the same for the head's *mean* output over the ``m`` positions,
    i.e. how much the answer's logit falls when only the head's direct path is mean-ablated.
    The "winning head" of a triple is the argmax of ``drop``.
    """
    from .hooks import as_tokens, hook_name

    tokens = as_tokens(tokens)
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    answers = torch.as_tensor(answers, dtype=torch.long).reshape(-1)
    m = rows.shape[0]
    if m == 0 or positions.shape != (m,) or answers.shape != (m,):
        raise ValueError("rows, positions and answers must be non-empty and of the same length")
    if int(rows.max()) >= tokens.shape[0] or int(positions.max()) >= tokens.shape[1] or int(positions.min()) < 0:
        raise ValueError("a (row, position) pair lies outside tokens")
    n_layers = model.cfg.n_layers
    names = [hook_name("z", L) for L in range(n_layers)] + [hook_name("final_scale")]
    z_rows, scales = [], []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = torch.arange(start, min(start + batch_size, tokens.shape[0]))
        sel = torch.isin(rows, chunk).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        _, cache = model.run_with_cache(tokens[chunk].to(model.cfg.device), names_filter=names)
        r, p = rows[sel] - start, positions[sel]
        z = torch.stack([cache[hook_name("z", L)][r, p] for L in range(n_layers)], 1)  # [k, L, H, e]
        z_rows.append((sel, z.float().cpu()))
        scales.append((sel, cache[hook_name("final_scale")][r, p].reshape(-1).float().cpu()))
    z = torch.empty((m,) + z_rows[0][1].shape[1:])
    scale = torch.empty(m)
    for (sel, zz), (_, ss) in zip(z_rows, scales):
        z[sel], scale[sel] = zz, ss
    U = model.W_U[:, answers.to(model.W_U.device)].float().cpu()  # [d, m]
    U = U - U.mean(0, keepdim=True)  # the folded final LN centres its input
    W_O = model.W_O.float().cpu()  # [L, H, e, d]
    dla_, mean_term = [], []
    z_mean = z.mean(0)  # [L, H, e]
    for start in range(0, m, 256):
        u = U[:, start:start + 256]
        proj = torch.einsum("lhed,dm->mlhe", W_O, u)  # each head's readout of each answer
        s = scale[start:start + 256][:, None, None]
        dla_.append(torch.einsum("mlhe,mlhe->mlh", z[start:start + 256], proj) / s)
        mean_term.append(torch.einsum("lhe,mlhe->mlh", z_mean, proj) / s)
    dla_t, mean_t = torch.cat(dla_), torch.cat(mean_term)
    return {"dla": dla_t, "drop": dla_t - mean_t}
