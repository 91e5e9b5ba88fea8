"""Interventions on attention patterns: set a head's attention row, or block some keys.

:func:`attention_edit_hooks` returns ``hook_pattern`` hooks for ``model.run_with_hooks``. At
one query position per prompt, each chosen head's attention row is either replaced by a
given distribution (Merullo et al.'s repair of the inhibition heads: ½ on each wrong color)
or has some keys blocked (their weight set to 0 and the row renormalised: attention
knockout). Nothing else changes: other heads, other query positions, other layers.

:func:`edited_logits` runs many such edits (conditions) on the same prompts cheaply: an edit
at the query position cannot change any earlier position, so the positions before it run
once per batch and each condition re-runs the query position alone.

:func:`zero_value_hooks` zero-ablates heads' values at every position (Merullo et al.'s
ablation of the content gatherers); :func:`layer_edited_logits` runs such edits, which
change every position from their first layer on, as conditions: the layers before each
condition's first edited layer run once per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

import torch

from .circuits import Head, parse_head
from .hooks import as_tokens, hook_name, one_position_per_prompt

__all__ = ["attention_edit_hooks", "edited_logits", "zero_value_hooks", "layer_edited_logits"]

#: A condition's hooks: a list of ``(hook name, function)`` pairs, or a function of a batch's
#: prompt indices (``[b]`` long) returning one.
Hooks = Union[Sequence, Callable[[torch.Tensor], Sequence]]


def _heads_by_layer(model, heads) -> dict[int, list[int]]:
    """``{layer: [head, ...]}`` for ``"L.H"`` labels (or pairs), each checked to exist."""
    by_layer: dict[int, list[int]] = {}
    for head in heads:
        L, h = parse_head(head)
        if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"head {L}.{h} does not exist in a {model.cfg.n_layers}x{model.cfg.n_heads} model")
        by_layer.setdefault(L, []).append(h)
    return by_layer


def attention_edit_hooks(
    model,
    heads: Iterable[str | Head],
    query: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    block: torch.Tensor | None = None,
) -> list:
    """``hook_pattern`` hooks editing the attention of ``heads`` at one query position per prompt.

    ``query``: ``[n]`` positions. ``rows``: ``[n, seq]`` new attention rows (each must sum to 1
    and put no weight after its query position). ``block``: ``[n, seq]`` bool, keys whose
    weight is set to 0 before the row is renormalised (a row left with no weight raises).
    Exactly one of ``rows`` and ``block`` is given. ``query`` is an absolute position: in a
    run that reads the earlier positions' keys and values from a cache (the pattern has fewer
    query rows than keys, as in :func:`edited_logits`), row ``query − cached`` is edited.
    """
    if (rows is None) == (block is None):
        raise ValueError("give exactly one of rows= (new attention rows) or block= (keys to block)")
    query = torch.as_tensor(query, dtype=torch.long).reshape(-1)
    n = query.shape[0]
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[0] != n:
            raise ValueError(f"rows must be [n, seq] with n = {n}, got {tuple(rows.shape)}")
        sums = rows.sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
            i = int((sums - 1).abs().argmax())
            raise ValueError(f"attention row {i} sums to {sums[i].item():.4f}; each row must sum to 1")
        after = torch.arange(rows.shape[1])[None, :] > query[:, None]
        if (rows * after).abs().sum() > 0:
            raise ValueError("a new attention row puts weight after its query position (not causal)")
    if block is not None:
        block = torch.as_tensor(block, dtype=torch.bool)
        if block.ndim != 2 or block.shape[0] != n:
            raise ValueError(f"block must be [n, seq] with n = {n}, got {tuple(block.shape)}")
    by_layer = _heads_by_layer(model, heads)

    def make(hs: list[int]):
        def edit(pattern, hook):  # [n, heads, query, key]
            pattern = pattern.clone()
            b = torch.arange(n, device=pattern.device)
            seq, n_query = pattern.shape[-1], pattern.shape[-2]
            q = query.to(pattern.device) - (seq - n_query)  # the row of each query position
            if pattern.shape[0] != n or (q < 0).any() or (q >= n_query).any():
                raise ValueError(
                    f"{hook.name}: the attention edit is for {n} prompts at query positions "
                    f"{query.tolist()[:8]}, but this pass runs {pattern.shape[0]} prompts at positions "
                    f"{seq - n_query}..{seq - 1}; build the hooks for the prompts and positions you run")
            for h in hs:
                if rows is not None:
                    pattern[b, h, q] = rows[:, :seq].to(pattern)
                else:
                    row = pattern[b, h, q].masked_fill(block[:, :seq].to(pattern.device), 0.0)
                    total = row.sum(-1, keepdim=True)
                    if (total <= 0).any():
                        raise ValueError("blocking these keys leaves an attention row with no weight")
                    pattern[b, h, q] = row / total
            return pattern

        return edit

    return [(hook_name("pattern", L), make(hs)) for L, hs in sorted(by_layer.items())]


def _run_hooks(hooks: Hooks, idx: torch.Tensor) -> list:
    return list(hooks(idx) if callable(hooks) else hooks)


#: What :func:`edited_logits` keeps of a batch: ``reduce(logits [b, d_vocab], idx [b])``.
Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kept(logits: torch.Tensor, idx: torch.Tensor, reduce: Reduce | None) -> torch.Tensor:
    out = logits if reduce is None else reduce(logits, idx)
    return torch.as_tensor(out).detach().cpu()


def zero_value_hooks(model, heads: Iterable[str | Head]) -> list:
    """``hook_v`` hooks setting the chosen heads' values to 0 at every position: the
    ablation Merullo et al.'s script applies to the content gatherers. Each head's attention
    output is then 0 everywhere; its value bias, which compatibility mode folds into the
    layer's ``b_O`` (as the authors' TransformerLens ``from_pretrained`` does by default),
    still reaches the residual stream, as in their run. Other heads are untouched."""
    by_layer = _heads_by_layer(model, heads)

    def make(hs: list[int]):
        def zero(v, hook):  # [batch, pos, heads, d_head]
            v = v.clone()
            v[:, :, hs] = 0.0
            return v

        return zero

    return [(hook_name("v", L), make(hs)) for L, hs in sorted(by_layer.items())]


def _first_layer(hooks: Sequence) -> int:
    """The first block a list of hooks touches (``blocks.L....``); hooks outside the blocks
    (embeddings, final LayerNorm) cannot be run from a cached residual stream."""
    layers = []
    for name, _ in hooks:
        parts = str(name).split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"layer_edited_logits runs hooks inside the blocks only, got {name!r}; "
                             f"run a hook on {name!r} with model.run_with_hooks instead")
        layers.append(int(parts[1]))
    return min(layers, default=-1)


def _checked_batch(tokens, query, batch_size: int):
    """``(tokens, query [n] on the CPU, n, seq)``, or a clear error for a batch size < 1."""
    tokens = as_tokens(tokens)
    n, seq = tokens.shape
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return tokens, one_position_per_prompt(query, n, seq).cpu(), n, seq


@torch.no_grad()
def layer_edited_logits(model, tokens, query, conditions: Mapping[str, Hooks], *, batch_size: int = 50,
                        reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """``{name: [n, d_vocab]}`` (or what ``reduce`` keeps, as in :func:`edited_logits`): the
    logits at each prompt's ``query`` position under each condition's hooks, for edits that
    may act at *every* position, from some layer on (e.g. :func:`zero_value_hooks`).

    Per batch the prompts run once, keeping the residual stream at the entry of each
    condition's first hooked layer (read off the hook names, ``blocks.L....``); each condition
    then re-runs only the bridge's blocks from that layer on, every position up to the
    query. An edit from layer 11 of 24 costs 13/24 of a forward pass instead of one pass. A
    condition with no hooks is the clean run itself (no re-run). Each batch first checks that
    re-running the last block from its cached input reproduces the full run; where it does
    not, every condition of that batch runs in full (``model.run_with_hooks``).
    """
    from ._sweeps import FINAL, _capture

    tokens, query, n, seq = _checked_batch(tokens, query, batch_size)
    dev, n_layers = model.cfg.device, model.cfg.n_layers
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in conditions}
    order: list[torch.Tensor] = []

    def blocks(x, start, hooks):
        with model.hooks(fwd_hooks=hooks):
            for block in model.blocks[start:]:
                y = block(x)
                x = y[0] if isinstance(y, tuple) else y
        return x

    def logits_of(final, p):
        return model.unembed(model.ln_final(final[:, p : p + 1]))[:, 0]

    for start in range(0, n, batch_size):
        chunk = torch.arange(start, min(start + batch_size, n))
        for p in query[chunk].unique().tolist():
            idx = chunk[query[chunk] == p]
            toks = tokens[idx, : p + 1].to(dev)
            hooks = {name: _run_hooks(h, idx) for name, h in conditions.items()}
            first = {name: _first_layer(h) for name, h in hooks.items()}
            layers = sorted({L for L in first.values() if L >= 0} | {n_layers - 1})
            acts = _capture(model, toks, [hook_name("resid_pre", L) for L in layers], until=FINAL)
            want = acts[FINAL]
            got = blocks(acts[hook_name("resid_pre", n_layers - 1)], n_layers - 1, [])
            cached = torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
            for name, hs in hooks.items():
                if first[name] < 0:
                    final = want
                elif cached:
                    final = blocks(acts[hook_name("resid_pre", first[name])], first[name], hs)
                else:
                    store = {}

                    def grab(t, hook, _store=store):
                        _store["x"] = t

                    model.run_with_hooks(toks, fwd_hooks=[*hs, (FINAL, grab)])
                    final = store["x"]
                rows[name].append(_kept(logits_of(final, p), idx, reduce))
            order.append(idx)
    back = torch.argsort(torch.cat(order))
    return {name: torch.cat(r)[back] for name, r in rows.items()}


@torch.no_grad()
def edited_logits(model, tokens, query, conditions: Mapping[str, Hooks], *, batch_size: int = 50,
                  reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """``{name: [n, d_vocab]}``: the logits at each prompt's ``query`` position (``[n]``)
    under each condition's hooks (a list, or a function of a batch's prompt indices).

    For edits at the query position only, such as :func:`attention_edit_hooks`: the positions
    before it are the same under every condition, so they run once per batch (one capture of
    every layer's keys and values) and each condition re-runs the query position alone, its
    attention reading the earlier keys and values from that cache through the bridge's own
    blocks (``past_key_values``, the path ``generate`` uses; as in the patching sweeps). On
    62-token prompts a condition then costs about 1/60 of a forward pass. Hooks see each
    prompt cut after its query position, the query in the last row (in the cached run the
    only row: ``hook_pattern`` is ``[b, heads, 1, keys]``), so they must not edit earlier
    positions. Each batch first checks that the cached re-run without hooks reproduces the
    full run; where it does not, every condition of that batch runs in full instead.
    Memory: one batch's keys and values (GPT-2 medium, 50 prompts × 62 tokens: 0.6 GB).
    ``reduce(logits, idx)`` (optional): applied to each batch's ``[b, d_vocab]`` logits
    (``idx``: the batch's prompt indices) before they are kept, so many conditions on many
    prompts need not hold full logits (1000 prompts × 50257 floats = 0.2 GB a condition);
    the result then holds what it returns, ``[n, ...]``, in prompt order.
    """
    from ._sweeps import FINAL, _capture, _kv_cache

    tokens, query, n, seq = _checked_batch(tokens, query, batch_size)
    dev, n_layers = model.cfg.device, model.cfg.n_layers
    names = [hook_name("resid_pre", 0)] + [hook_name(kind, L) for L in range(n_layers) for kind in ("k", "v")]
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in conditions}
    order: list[torch.Tensor] = []

    def blocks(x, cache, hooks):
        with model.hooks(fwd_hooks=hooks):
            for block in model.blocks:
                y = block(x, past_key_values=cache)
                x = y[0] if isinstance(y, tuple) else y
        return x[:, -1]

    for start in range(0, n, batch_size):
        chunk = torch.arange(start, min(start + batch_size, n))
        for p in query[chunk].unique().tolist():
            idx = chunk[query[chunk] == p]
            toks = tokens[idx, : p + 1].to(dev)
            acts = _capture(model, toks, names, until=FINAL)
            kv = {L: (acts[hook_name("k", L)][:, :p].transpose(1, 2), acts[hook_name("v", L)][:, :p].transpose(1, 2))
                  for L in range(n_layers)}
            x = acts[hook_name("resid_pre", 0)][:, p : p + 1]
            want = acts[FINAL][:, p]
            got = blocks(x, _kv_cache(kv, 0, 1), []) if p > 0 else None
            cached = got is not None and torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
            for name, hooks in conditions.items():
                if cached:
                    final = blocks(x, _kv_cache(kv, 0, 1), _run_hooks(hooks, idx))
                else:
                    store = {}

                    def grab(t, hook, _store=store):
                        _store["x"] = t[:, -1]

                    model.run_with_hooks(toks, fwd_hooks=[*_run_hooks(hooks, idx), (FINAL, grab)])
                    final = store["x"]
                logits = model.unembed(model.ln_final(final[:, None]))[:, 0]
                rows[name].append(_kept(logits, idx, reduce))
            order.append(idx)
    back = torch.argsort(torch.cat(order))
    return {name: torch.cat(r)[back] for name, r in rows.items()}
