"""Activation patching on a TransformerLens 4.x bridge, over one replacement primitive.

**The primitive.** :func:`replace_z_hooks` turns "replace the heads' outputs ``z`` at these
nodes by these values" into ``hook_z`` hooks; a *node* is one (prompt, position, layer,
head), given as a ``[batch, seq, n_layers, n_heads]`` bool mask (:func:`node_mask` builds it
from ``{(layer, head): positions}``). Patching from a source run, mean ablation
(:mod:`helpers.ablation`) and the circuit evaluator differ only in the values.

**Sweeps.** One run is the *target*, the other the *source*; each component in turn gets the
source's activation in the target's run and the metric of the result is recorded:
:func:`patch_heads` (each head's ``z``), :func:`patch_resid_by_position` (the residual
stream at one (layer, position)), :func:`patch_resid_by_layer` (one layer's residual
stream), and the one-shot :func:`run_with_patches`. ``direction`` says which run is which:

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

from .circuits import Head
from .hooks import as_heads, as_tokens, capture, check_pair, hook_name, position_mask, resid_hook
from .metrics import metric_scalar

__all__ = [
    "DIRECTIONS",
    "node_mask",
    "replace_z_hooks",
    "run_with_patches",
    "patch_heads",
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


def _configs_per_pass(model, batch: int, seq: int, batch_tokens: int | None) -> int:
    """Configurations stacked in one forward pass: ``batch_tokens // (batch · seq)``, or by
    default as many as keep the pass's logits within ~160 MB."""
    if batch_tokens is not None:
        return max(1, int(batch_tokens) // (batch * seq))
    return max(1, int(4e7 // (batch * seq * model.cfg.d_vocab_out)))


@torch.no_grad()
def _scan(model, target, configs, hook_names, make_patch, metric, batch_tokens, progress, desc):
    """Run ``target`` once per config (several configs stacked per forward pass); the
    metric of each. ``make_patch(name, act [k, batch, ...], configs_in_group)`` edits the
    stacked activation in place for every copy."""
    batch, seq = target.shape
    k_max = _configs_per_pass(model, batch, seq, batch_tokens)
    groups = [configs[i : i + k_max] for i in range(0, len(configs), k_max)]
    results = []
    iterator = groups
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(groups, desc=desc)
    for group in iterator:
        k = len(group)
        stacked = target.repeat(k, 1)
        fwd = []
        for name in hook_names:

            def patch_copies(t, hook, _name=name, _group=group):
                t = t.clone()
                view = t.view(len(_group), batch, *t.shape[1:])
                make_patch(_name, view, _group)
                return t

            fwd.append((name, patch_copies))
        logits = model.run_with_hooks(stacked, fwd_hooks=fwd)
        logits = logits.view(k, batch, *logits.shape[1:])
        results.extend(metric_scalar(metric(logits[i])) for i in range(k))
    return torch.tensor(results)


@torch.no_grad()
def patch_heads(
    model,
    clean_tokens,
    corrupted_tokens,
    metric: Callable,
    *,
    direction: str = "corrupted->clean",
    positions: Any = None,
    heads: Iterable[Head] | None = None,
    named_positions: Mapping[str, Any] | None = None,
    batch_tokens: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers, n_heads]``: the metric with one head's output (``hook_z``) patched.

    Each head in turn (default: all; others are ``NaN``) gets the source run's ``z`` at
    ``positions`` (default all) in the target run. ``batch_tokens``: tokens per forward pass
    (configurations are stacked up to it; default: as many as fit a ~160 MB logits budget).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    heads = as_heads(heads, model)
    layers = sorted({L for L, _ in heads})
    _, src = capture(model, source, [hook_name("z", L) for L in layers])
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(target.device)
    name_to_layer = {hook_name("z", L): L for L in layers}

    def make_patch(name, view, group):
        L = name_to_layer[name]
        for i, (gl, h) in enumerate(group):
            if gl == L:
                view[i, :, :, h] = torch.where(mask[..., None], src[name][:, :, h], view[i, :, :, h])

    values = _scan(model, target, heads, list(name_to_layer), make_patch, metric, batch_tokens, progress, "heads")
    out = torch.full((model.cfg.n_layers, model.cfg.n_heads), math.nan)
    for (L, h), v in zip(heads, values):
        out[L, h] = v
    return out


@torch.no_grad()
def patch_resid_by_position(
    model,
    clean_tokens,
    corrupted_tokens,
    metric: Callable,
    *,
    direction: str = "corrupted->clean",
    hook: str = "resid_pre",
    layers: Iterable[int] | None = None,
    batch_tokens: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers, seq]``: the metric with the residual stream at one (layer, position) patched.

    ``hook``: ``"resid_pre"`` (default), ``"resid_mid"`` or ``"resid_post"``. Positions are
    columns of the token tensor (the same for every prompt). Layers not asked for are ``NaN``.
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(L) for L in layers]
    names = {resid_hook(L, hook): L for L in layers}
    _, src = capture(model, source, list(names))
    configs = [(L, p) for L in layers for p in range(seq)]

    def make_patch(name, view, group):
        L = names[name]
        for i, (gl, p) in enumerate(group):
            if gl == L:
                view[i, :, p] = src[name][:, p]

    values = _scan(model, target, configs, list(names), make_patch, metric, batch_tokens, progress,
                   "resid (layer, pos)")
    out = torch.full((model.cfg.n_layers, seq), math.nan)
    for (L, p), v in zip(configs, values):
        out[L, p] = v
    return out


@torch.no_grad()
def patch_resid_by_layer(
    model,
    clean_tokens,
    corrupted_tokens,
    metric: Callable,
    *,
    direction: str = "corrupted->clean",
    hook: str = "resid_pre",
    positions: Any = None,
    named_positions: Mapping[str, Any] | None = None,
    batch_tokens: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers]``: the metric with the whole residual stream of one layer patched.

    At ``positions`` (default every position: then any single layer's ``resid_pre`` carries
    the whole source run, and the metric is the source's).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    layers = list(range(model.cfg.n_layers))
    names = {resid_hook(L, hook): L for L in layers}
    _, src = capture(model, source, list(names))
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(target.device)

    def make_patch(name, view, group):
        L = names[name]
        for i, gl in enumerate(group):
            if gl == L:
                view[i] = torch.where(mask[..., None], src[name], view[i])

    return _scan(model, target, layers, list(names), make_patch, metric, batch_tokens, progress, "resid layers")
