"""Model plumbing shared by every analysis: hook names, heads, positions, captures.

* :func:`hook_name`: every hook name (through TransformerLens's ``get_act_name``).
* :func:`all_heads`, :func:`as_heads`: the ``(layer, head)`` pairs of a model, checked.
* :func:`position_mask`: which (prompt, position) pairs a position spec selects (named
  positions such as ``"END"``, ints, per-prompt tensors, masks, unions).
* :func:`capture`: logits plus chosen activations of one hooked run.
* :func:`logits_at_positions`: logits at one position per prompt without the full
  ``[batch, seq, d_vocab]`` unembedding.
* :func:`activations_at`: one activation at chosen positions of every prompt, stopping the
  forward pass right after it (e.g. ``blocks.0.hook_resid_post`` costs one block).
* :func:`folded_layer_norm`: LayerNorm as compatibility mode leaves it (weights folded
  into the next matrix): centre, then scale to unit RMS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .circuits import Head

__all__ = [
    "Head",
    "hook_name",
    "resid_hook",
    "all_heads",
    "as_heads",
    "as_tokens",
    "check_pair",
    "position_mask",
    "one_position_per_prompt",
    "capture",
    "logits_at_positions",
    "activations_at",
    "StopForward",
    "folded_layer_norm",
]


def hook_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of activation ``kind`` in ``layer``.

    ``hook_name("z", 9)`` → ``"blocks.9.attn.hook_z"``; ``hook_name("resid_pre", 3)`` →
    ``"blocks.3.hook_resid_pre"``; ``hook_name("embed")`` → ``"hook_embed"``;
    ``hook_name("final_resid")`` → ``"ln_final.hook_in"`` (the residual after the last block). Kinds are
    TransformerLens's short names (``q``, ``k``, ``v``, ``z``, ``pattern``, ``result``,
    ``attn_out``, ``mlp_out``, ``post`` (MLP neurons), ``resid_pre``/``mid``/``post``, ...),
    resolved by ``transformer_lens.utilities.get_act_name``: no hook name is written by hand.
    """
    from transformer_lens.utilities import get_act_name

    if kind in _GLOBAL_HOOKS:
        if layer is not None:
            raise ValueError(f"{kind!r} is not per layer; call hook_name({kind!r}) without a layer")
        return _GLOBAL_HOOKS[kind]
    if layer is None:
        raise ValueError(f"hook_name({kind!r}) needs a layer")
    return get_act_name(kind, int(layer))


_GLOBAL_HOOKS = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "final_resid": "ln_final.hook_in",  # the residual stream after the last block (the bridge's name)
    "final_scale": "ln_final.hook_scale",  # the final LayerNorm's scale, [batch, pos, 1]
}


def resid_hook(layer: int, hook: str) -> str:
    """``hook_name(hook, layer)`` for a residual-stream hook; any other ``hook`` is an error."""
    if hook not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"hook must be 'resid_pre', 'resid_mid' or 'resid_post', got {hook!r}")
    return hook_name(hook, layer)


def as_tokens(tokens) -> torch.Tensor:
    """``[batch, seq]`` long tokens from a ``[seq]`` or ``[batch, seq]`` tensor or list."""
    t = torch.as_tensor(tokens)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tuple(t.shape)}")
    return t.long()


def all_heads(model) -> list[Head]:
    """Every (layer, head) of the model, in order."""
    return [(L, h) for L in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def as_heads(heads, model) -> list[Head]:
    """``(layer, head)`` pairs from ``None`` (all), one pair, or pairs; each checked to exist."""
    if heads is None:
        return all_heads(model)
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [heads]
    out = []
    for lh in heads:
        L, h = int(lh[0]), int(lh[1])
        if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"Head {(L, h)} does not exist in a {model.cfg.n_layers}x{model.cfg.n_heads} model")
        out.append((L, h))
    return out


def folded_layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with its weights folded away (compatibility mode): centre, unit RMS."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def one_position_per_prompt(pos, batch: int, seq: int) -> torch.Tensor:
    """``[batch]`` positions from ``None`` (the last), an int, or ``[batch]`` values."""
    if pos is None:
        return torch.full((batch,), seq - 1, dtype=torch.long)
    if isinstance(pos, int):
        return torch.full((batch,), pos % seq, dtype=torch.long)
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1).cpu()
    if pos.numel() != batch:
        raise ValueError(f"positions has {pos.numel()} entries for a batch of {batch}: give one per prompt")
    return pos % seq


def position_mask(
    spec: Any,
    batch: int,
    seq: int,
    *,
    named_positions: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``[batch, seq]`` bool: which (prompt, position) pairs a position spec selects.

    ``None`` → all; ``int`` → that column (negative counts from the end); 1-D long tensor of
    length ``batch`` → one position per prompt; 2-D long ``[batch, k]`` → ``k`` per prompt;
    bool ``[batch, seq]`` → itself; ``str`` → ``named_positions[spec]``; list/tuple → union.
    """
    if spec is None:
        return torch.ones(batch, seq, dtype=torch.bool)
    if isinstance(spec, str):
        if named_positions is None or spec not in named_positions:
            known = sorted(named_positions) if named_positions else []
            raise KeyError(f"Unknown position name {spec!r}; named positions given: {known}")
        return position_mask(named_positions[spec], batch, seq, named_positions=None)
    if isinstance(spec, bool):
        raise TypeError("A position spec cannot be a bool; use None for all positions.")
    if isinstance(spec, int):
        if not -seq <= spec < seq:
            raise IndexError(f"Position {spec} is outside a sequence of length {seq}")
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[:, spec % seq] = True
        return mask
    if isinstance(spec, (list, tuple)):
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        for item in spec:
            mask |= position_mask(item, batch, seq, named_positions=named_positions)
        return mask
    t = torch.as_tensor(spec).cpu()
    if t.dtype == torch.bool:
        if tuple(t.shape) != (batch, seq):
            raise ValueError(f"A bool position mask must be [batch, seq] = {(batch, seq)}, got {tuple(t.shape)}")
        return t.clone()
    t = t.long()
    if t.ndim == 0:
        return position_mask(int(t), batch, seq)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != batch:
        raise ValueError(
            f"A position tensor must be [batch] or [batch, k] with batch={batch}, got {tuple(t.shape)}"
        )
    if (t < -seq).any() or (t >= seq).any():
        raise IndexError(f"Positions out of range for a sequence of length {seq}")
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask.scatter_(1, t % seq, True)
    return mask


def check_pair(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"Clean and corrupted tokens must have the same shape (aligned positions), got "
            f"{tuple(clean.shape)} and {tuple(corrupted.shape)}"
        )


@torch.no_grad()
def capture(model, tokens, names: Iterable[str], *, fwd_hooks: Sequence = ()) -> tuple[torch.Tensor, dict]:
    """Run ``tokens`` and return ``(logits, {name: activation})`` for the hook ``names``.

    ``fwd_hooks`` (``(name, fn)`` pairs) are applied too; activations are read after them.
    """
    tokens = as_tokens(tokens).to(model.cfg.device)
    store: dict[str, torch.Tensor] = {}
    hooks = list(fwd_hooks)
    for name in dict.fromkeys(names):

        def save(t, hook, _name=name):
            store[_name] = t.detach()

        hooks.append((name, save))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, store


class StopForward(Exception):
    """Raised by a hook to end a forward pass early: the caller catches it once the
    activations it needs are stored (as :func:`logits_at_positions` does)."""


@torch.no_grad()
def logits_at_positions(model, tokens, positions: Any = None, *, fwd_hooks: Sequence = ()) -> torch.Tensor:
    """``[batch, d_vocab]``: the logits at one position per prompt, unembedding only those rows.

    Equals ``model(tokens)`` read at ``positions`` (``[batch]``, an int, or ``None`` for the
    last position) up to float rounding: the final LayerNorm and the unembedding act on each
    position separately. The forward pass stops at the final LayerNorm's input, so the
    ``[batch, seq, d_vocab]`` logits are never built (on short prompts GPT-2's 50,257-column
    unembedding is a large share of a forward pass). ``fwd_hooks`` apply as in
    ``run_with_hooks``.
    """
    tokens = as_tokens(tokens).to(model.cfg.device)
    batch, seq = tokens.shape
    store: dict[str, torch.Tensor] = {}

    def grab(resid, hook):
        store["resid"] = resid
        raise StopForward

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, ("ln_final.hook_in", grab)])
    except StopForward:
        pass
    if "resid" not in store:
        raise RuntimeError("logits_at_positions: the model has no 'ln_final.hook_in' hook point")
    pos = one_position_per_prompt(positions, batch, seq).to(tokens.device)
    rows = store["resid"][torch.arange(batch, device=tokens.device), pos]  # [batch, d_model]
    return model.unembed(model.ln_final(rows[:, None]))[:, 0]


@torch.no_grad()
def activations_at(model, tokens, name: str, positions, *, batch_size: int = 256) -> torch.Tensor:
    """``[n, k, ...]``: activation ``name`` (e.g. ``"blocks.0.hook_resid_post"``) of each of
    the ``n`` prompts at its ``k`` positions (``positions``: ``[n, k]`` or ``[n]`` long).

    Runs ``batch_size`` prompts at a time and stops each forward pass right after the hook,
    so an early activation costs only the layers before it.
    """
    tokens = as_tokens(tokens)
    positions = torch.as_tensor(positions, dtype=torch.long).cpu()
    positions = positions[:, None] if positions.ndim == 1 else positions
    n, seq = tokens.shape
    if positions.ndim != 2 or positions.shape[0] != n:
        raise ValueError(f"positions must be [n, k] or [n] for {n} prompts, got {tuple(positions.shape)}")
    if positions.numel() and (positions.min() < 0 or positions.max() >= seq):
        raise ValueError(f"positions must lie in 0..{seq - 1}")
    out = []
    for start in range(0, n, batch_size):
        part = tokens[start : start + batch_size].to(model.cfg.device)
        store: dict[str, torch.Tensor] = {}

        def grab(t, hook):
            store["t"] = t
            raise StopForward

        try:
            model.run_with_hooks(part, fwd_hooks=[(name, grab)])
        except StopForward:
            pass
        if "t" not in store:
            raise ValueError(f"activations_at: the model has no hook point {name!r}")
        pos = positions[start : start + batch_size].to(store["t"].device)
        rows = torch.arange(part.shape[0], device=pos.device)[:, None]
        out.append(store["t"][rows, pos])
    return torch.cat(out)
