"""Activation patching on a TransformerLens 4.x bridge, over one replacement primitive.

**The primitive.** :func:`replace_z_hooks` turns "replace the heads' outputs ``z`` at these
nodes by these values" into ``hook_z`` hooks; a *node* is one (prompt, position, layer,
head), given as a ``[batch, seq, n_layers, n_heads]`` bool mask (:func:`node_mask` builds it
from ``{(layer, head): positions}``). Patching from a source run (:func:`run_with_patches`),
mean ablation (:mod:`helpers.ablation`) and the circuit evaluator differ only in the values.
The sweeps below do not go through it: their engine (:mod:`helpers._sweeps`) runs many
configurations from a cached layer and writes one head's ``z`` per configuration inside its
own passes; the tests check every sweep against :func:`run_with_patches`, one plain forward
pass per configuration.

**Sweeps.** One run is the *target*, the other the *source*; each component in turn gets the
source's activation in the target's run and the metric of the result is recorded:
:func:`patch_heads` (each head's ``z``), :func:`patch_heads_by_position` (each head at
each position), :func:`patch_resid_by_position` (the residual
stream at one (layer, position)), :func:`patch_resid_by_layer` (one layer's residual
stream), and the one-shot :func:`run_with_patches`. The sweeps run each configuration
from the target's cached residual stream at the patched layer and compute only the logits
the metric reads (:mod:`helpers._sweeps`). ``direction`` says which run is which:

- ``"corrupted->clean"`` (noising): run the clean prompts, patch in corrupted activations;
- ``"clean->corrupted"`` (denoising): run the corrupted prompts, patch in clean ones.

Metrics are callables ``logits [batch, seq, d_vocab] -> scalar`` (see
:mod:`helpers.metrics`). Positions take every form :func:`helpers.hooks.position_mask`
accepts, including names looked up in ``named_positions`` (a prompt set's ``positions``).
Path patching is in :mod:`helpers.path_patching`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import _sweeps
from .circuits import Head
from .hooks import as_heads, as_tokens, capture, check_pair, hook_name, position_mask, resid_hook

__all__ = [
    "DIRECTIONS",
    "node_mask",
    "replace_z_hooks",
    "run_with_patches",
    "patch_heads",
    "patch_heads_by_position",
    "patch_resid_by_position",
    "patch_resid_by_layer",
]

DIRECTIONS = {
    "corrupted->clean": "noising",
    "noising": "noising",
    "clean->corrupted": "denoising",
    "denoising": "denoising",
}


# --------------------------------------------------------------------------------------
# The primitive: replace z at some nodes
# --------------------------------------------------------------------------------------


def node_mask(
    nodes: Mapping[Head, Any] | Iterable[Head] | None,
    model,
    batch: int,
    seq: int,
    *,
    named_positions: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``[batch, seq, n_layers, n_heads]`` bool: True on the nodes of ``nodes``.

    ``nodes``: ``{(layer, head): positions}`` (``None`` = all positions) or a list of heads
    (all positions).
    """
    mask = torch.zeros(batch, seq, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    if nodes is None:
        return mask
    if not isinstance(nodes, Mapping):
        nodes = {tuple(h): None for h in nodes}
    for (L, h), pos in nodes.items():
        L, h = int(L), int(h)
        if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"Head {(L, h)} does not exist in this model")
        mask[:, :, L, h] |= position_mask(pos, batch, seq, named_positions=named_positions)
    return mask


def replace_z_hooks(model, values: torch.Tensor, mask: torch.Tensor, *, copies: int = 1) -> list:
    """``hook_z`` hooks that put ``values`` wherever ``mask`` is True (none where nothing is).

    ``values``: ``[batch or 1, seq, n_layers, n_heads, d_head]``; ``mask``: ``[copies ·
    batch, seq, n_layers, n_heads]`` bool, for a run of ``copies`` stacked copies of the
    batch (one configuration each); the values are broadcast over the copies, not copied.
    """
    mask = mask.to(model.cfg.device)
    rows, seq = mask.shape[:2]
    if values.shape[1] != seq:
        raise ValueError(f"values cover {values.shape[1]} positions, the mask {seq}")
    if rows % copies:
        raise ValueError(f"the mask's {rows} rows are not {copies} copies of one batch")
    fwd = []
    for L in range(model.cfg.n_layers):
        m = mask[:, :, L]
        if not m.any():
            continue
        m = m.view(copies, rows // copies, seq, -1, 1)

        def put(z, hook, _L=L, _m=m):
            shaped = z.view(_m.shape[:-1] + z.shape[-1:])  # [copies, batch, seq, H, dh]
            return torch.where(_m, values[None, :, :, _L].to(z), shaped).view(z.shape)

        fwd.append((hook_name("z", L), put))
    return fwd


def _stacked_z(acts: Mapping[str, torch.Tensor], n_layers: int, layers: Iterable[int]) -> torch.Tensor:
    """``[batch, seq, n_layers, n_heads, d_head]`` from per-layer ``hook_z`` captures (zeros
    in the layers not given: they are never read where the mask is False)."""
    layers = list(layers)
    first = acts[hook_name("z", layers[0])]
    out = first.new_zeros(first.shape[:2] + (n_layers,) + first.shape[2:])
    for L in layers:
        out[:, :, L] = acts[hook_name("z", L)]
    return out


# --------------------------------------------------------------------------------------
# Activation patching
# --------------------------------------------------------------------------------------


@torch.no_grad()
def run_with_patches(
    model,
    tokens,
    source,
    *,
    heads: Iterable[Head] | None = (),
    positions: Any = None,
    hooks: Iterable[str] = (),
    named_positions: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Logits of ``tokens`` with activations taken from a source run, all at once.

    ``source``: source tokens (run here) or a dict/``ActivationCache`` holding the needed
    activations. ``heads``: heads whose ``hook_z`` is taken from the source (``None`` = every
    head; default none) at ``positions``. ``hooks``: full hook names (e.g.
    ``hook_name("mlp_out", 0)``, ``hook_name("embed")``) whose whole activation is taken from
    the source at ``positions``.
    """
    tokens = as_tokens(tokens).to(model.cfg.device)
    batch, seq = tokens.shape
    heads = as_heads(heads, model)
    hooks = list(hooks)
    layers = sorted({L for L, _ in heads})
    need = [hook_name("z", L) for L in layers] + hooks
    if isinstance(source, (torch.Tensor, list)):
        src_tokens = as_tokens(source)
        check_pair(tokens.cpu(), src_tokens)
        _, source = capture(model, src_tokens, need)
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(tokens.device)
    fwd = []
    if heads:
        nodes = node_mask({h: mask for h in heads}, model, batch, seq)
        fwd += replace_z_hooks(model, _stacked_z(source, model.cfg.n_layers, layers), nodes)
    for name in hooks:
        src = source[name]

        def patch_full(t, hook, _src=src):
            m = mask.reshape(mask.shape + (1,) * (t.ndim - 2))
            return torch.where(m, _src.to(t), t)

        fwd.append((name, patch_full))
    return model.run_with_hooks(tokens, fwd_hooks=fwd)


def _direction(direction: str) -> str:
    try:
        return DIRECTIONS[direction]
    except KeyError:
        raise ValueError(
            f"direction must be 'corrupted->clean' (run clean, patch in corrupted; alias "
            f"'noising') or 'clean->corrupted' (run corrupted, patch in clean; alias "
            f"'denoising'), got {direction!r}"
        ) from None


def _target_and_source(model, clean_tokens, corrupted_tokens, direction: str):
    """(target run's tokens on the model's device, source run's tokens) for ``direction``."""
    clean, corrupt = as_tokens(clean_tokens), as_tokens(corrupted_tokens)
    check_pair(clean, corrupt)
    target, source = (clean, corrupt) if _direction(direction) == "noising" else (corrupt, clean)
    return target.to(model.cfg.device), source


#: Tokens per pass the sweeps stack configurations up to by default. Measured on a 2-core
#: CPU, GPT-2-small stand-in, 144-head sweep (NOTES.md, session 6): at 2 prompts × 11
#: tokens stacking cut 8.4 s to 2.0 s (Python overhead per pass dominates), at 10 × 20 it cut
#: 21.0 s to 17.8 s, at 20 × 20 two copies were slower (37.0 s vs 41.5 s).
DEFAULT_SWEEP_TOKENS = 512


def _copies(batch: int, seq: int, batch_tokens: int | None) -> int:
    """Configurations stacked in one pass: ``batch_tokens // (batch · seq)``, at least 1
    (default ``batch_tokens``: :data:`DEFAULT_SWEEP_TOKENS`)."""
    budget = DEFAULT_SWEEP_TOKENS if batch_tokens is None else int(batch_tokens)
    return max(1, budget // (batch * seq))


@torch.no_grad()
def patch_heads(model, clean_tokens, corrupted_tokens, metric: Callable, *,
                direction: str = "corrupted->clean", positions: Any = None,
                heads: Iterable[Head] | None = None, named_positions: Mapping[str, Any] | None = None,
                batch_tokens: int | None = None, progress: bool = False) -> torch.Tensor:
    """``[n_layers, n_heads]``: the metric with one head's output (``hook_z``) patched.

    Each head in turn (default: all; others are ``NaN``) gets the source run's ``z`` at
    ``positions`` (default all) in the target run. Each configuration runs only from the
    head's layer on and reads only the metric's logits (see :mod:`helpers._sweeps`).
    ``batch_tokens``: tokens per pass, to stack configurations (default :data:`DEFAULT_SWEEP_TOKENS`).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    heads = as_heads(heads, model)
    mask = position_mask(positions, batch, seq, named_positions=named_positions)
    values = _sweeps.sweep_heads(
        model, target, source, metric, heads, mask, copies=_copies(batch, seq, batch_tokens), progress=progress
    )
    out = torch.full((model.cfg.n_layers, model.cfg.n_heads), math.nan)
    for (L, h), v in zip(heads, values):
        out[L, h] = v
    return out


@torch.no_grad()
def patch_heads_by_position(model, clean_tokens, corrupted_tokens, metric: Callable, *,
                            direction: str = "corrupted->clean", positions: Iterable[int] | None = None,
                            heads: Iterable[Head] | None = None, batch_tokens: int | None = None,
                            progress: bool = False) -> torch.Tensor:
    """``[n_layers, seq, n_heads]``: one head's ``hook_z`` patched at one position (column).

    ``positions``: the columns to sweep (default all); other columns and heads are ``NaN``.
    Same layout and numbers as TransformerLens's ``get_act_patch_attn_head_out_by_pos``.
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    heads = as_heads(heads, model)
    cols = list(range(seq)) if positions is None else [int(p) % seq for p in positions]
    values = _sweeps.sweep_heads_by_position(
        model, target, source, metric, heads, cols, copies=_copies(batch, seq, batch_tokens), progress=progress
    )
    out = torch.full((model.cfg.n_layers, seq, model.cfg.n_heads), math.nan)
    for (L, h), row in zip(heads, values):
        for p, v in zip(cols, row):
            out[L, p, h] = v
    return out


@torch.no_grad()
def patch_resid_by_position(model, clean_tokens, corrupted_tokens, metric: Callable, *,
                            direction: str = "corrupted->clean", hook: str = "resid_pre",
                            layers: Iterable[int] | None = None, batch_tokens: int | None = None,
                            progress: bool = False) -> torch.Tensor:
    """``[n_layers, seq]``: the metric with the residual stream at one (layer, position) patched.

    ``hook``: ``"resid_pre"`` (default), ``"resid_mid"`` or ``"resid_post"``. Positions are
    columns of the token tensor (the same for every prompt). Layers not asked for are ``NaN``.
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    resid_hook(0, hook)  # validates ``hook``
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(L) for L in layers]
    masks = [position_mask(p, batch, seq) for p in range(seq)]
    values = _sweeps.sweep_resid(
        model, target, source, metric, layers, masks, hook=hook,
        copies=_copies(batch, seq, batch_tokens), progress=progress,
    )
    out = torch.full((model.cfg.n_layers, seq), math.nan)
    for L, row in zip(layers, values):
        out[L] = torch.tensor(row)
    return out


@torch.no_grad()
def patch_resid_by_layer(model, clean_tokens, corrupted_tokens, metric: Callable, *,
                         direction: str = "corrupted->clean", hook: str = "resid_pre",
                         positions: Any = None, named_positions: Mapping[str, Any] | None = None,
                         batch_tokens: int | None = None, progress: bool = False) -> torch.Tensor:
    """``[n_layers]``: the metric with the whole residual stream of one layer patched.

    At ``positions`` (default every position: then any single layer's ``resid_pre`` carries
    the whole source run, and the metric is the source's).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    resid_hook(0, hook)
    mask = position_mask(positions, batch, seq, named_positions=named_positions)
    values = _sweeps.sweep_resid(
        model, target, source, metric, list(range(model.cfg.n_layers)), [mask], hook=hook,
        copies=_copies(batch, seq, batch_tokens), progress=progress,
    )
    return torch.tensor([row[0] for row in values])
