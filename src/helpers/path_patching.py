"""Path patching as Wang et al. (2022, App. B) define it.

:func:`path_patch` is fast and exact (the engine is :mod:`helpers._fast_path`); :func:`path_patch_reference`
does one plain hooked forward pass per pass and sender, and the tests hold the two equal.
For each sender head:

- pass C runs x_orig (clean) with **every attention head frozen** at its x_orig output
  (``hook_z``), except the sender, which gets its x_new (corrupted) output, at every position
  or only at ``sender_positions``; MLPs and LayerNorms are recomputed, so paths through MLPs
  count;
- pass D runs x_orig again with only the receivers' inputs replaced by their pass-C values
  (the ``q``/``k``/``v`` input of each receiver head, replaced at every position, or the
  final residual stream, i.e. the logits of pass C) and everything else recomputed;
- the score is ``metric(logits of pass D)``: the raw metric, not a difference. Normalise
  it yourself, e.g. with :func:`helpers.metrics.percent_change` (Wang et al.'s figures).

A sender in a layer at or after the **last** receiver layer has no path to any receiver;
its entry is ``NaN`` (also the entry of heads not asked for in ``senders``). A sender before
some receivers but not others is scored with the receivers it can reach (replacing the
others' inputs by their pass-C values changes nothing, since those equal their clean values).

Positions (``positions=``, ``sender_positions=``): ``None`` = every position; an ``int`` = that
column for every prompt; a 1-D long tensor of length ``batch`` = one position per prompt; a
2-D long tensor ``[batch, k]`` = ``k`` positions per prompt; a bool mask ``[batch, seq]``; a
string looked up in ``named_positions`` (e.g. an IOI dataset's ``positions`` dict: ``"END"``);
or a list/tuple of any of these (their union).

Prompts in a batch must have equal length (right-pad with any token: a causal model never
looks right, so padding after a prompt's END changes nothing up to END).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import _fast_path
from .circuits import Head
from .hooks import as_heads, as_tokens, capture, check_pair, hook_name, position_mask
from .metrics import metric_scalar

__all__ = ["path_patch", "path_patch_reference"]

_FINAL = ("logits", "resid_final", "final", "resid_post")


def _normalize_receivers(receivers, receiver_input, model) -> dict[Head, tuple[str, ...]] | None:
    """``None`` for the final residual stream, else ``{(layer, head): ("q", ...)}``."""
    if receivers is None or (isinstance(receivers, str) and receivers in _FINAL):
        return None
    if isinstance(receivers, str):
        raise ValueError(f"receivers must be 'logits' (the final residual stream) or heads, got {receivers!r}")

    def inputs(spec) -> tuple[str, ...]:
        items = list(spec)  # "q" -> ["q"], "kv" -> ["k", "v"], ("k", "v") -> ["k", "v"]
        bad = [c for c in items if c not in ("q", "k", "v")]
        if not items or bad:
            raise ValueError(f"receiver_input must be made of 'q', 'k', 'v' (e.g. 'q', 'kv'), got {spec!r}")
        return tuple(sorted(set(items), key="qkv".index))

    if isinstance(receivers, Mapping):
        return {h: inputs(c) for h, c in zip(as_heads(list(receivers), model), receivers.values())}
    return {h: inputs(receiver_input) for h in as_heads(receivers, model)}


def _prepare(model, clean_tokens, corrupted_tokens, *, receivers="logits", receiver_input="q", senders=None,
             sender_positions=None, named_positions=None):
    """Checked inputs: tokens, receivers, senders, the sender-position mask, and the senders
    that have a path to some receiver."""
    clean, corrupt = as_tokens(clean_tokens), as_tokens(corrupted_tokens)
    check_pair(clean, corrupt)
    batch, seq = clean.shape
    recv = _normalize_receivers(receivers, receiver_input, model)
    senders = as_heads(senders, model)
    smask = position_mask(sender_positions, batch, seq, named_positions=named_positions)
    if recv is None:
        last = model.cfg.n_layers  # the final residual stream sits after every layer
    else:
        last = max(L for L, _ in recv)
    reachable = [(L, h) for L, h in senders if L < last]
    return clean, corrupt, recv, senders, reachable, smask


@torch.no_grad()
def path_patch_reference(
    model, clean_tokens, corrupted_tokens, metric: Callable, *, progress: bool = False, **where: Any
) -> torch.Tensor:
    """Path patching done plainly: hooked forward passes, one sender at a time.

    Same arguments (``where``: ``receivers``, ``receiver_input``, ``senders``,
    ``sender_positions``, ``named_positions``) and result as :func:`path_patch`. Pass C is a full forward pass on the
    clean tokens with every ``hook_z`` set to its cached clean value except the sender's,
    which takes its corrupted value at ``sender_positions``. For the final-residual receiver
    the score is the metric of pass C's logits (pass D would copy the whole final residual).
    For head receivers, pass C records the receivers' ``hook_q``/``hook_k``/``hook_v`` (a
    head's query/key/value is a fixed function of its input, so replacing it is replacing
    the input), and pass D is a full forward pass with those replaced at every position.
    """
    clean, corrupt, recv, senders, reachable, smask = _prepare(model, clean_tokens, corrupted_tokens, **where)
    dev = model.cfg.device
    clean, corrupt, smask = clean.to(dev), corrupt.to(dev), smask.to(dev)
    n_layers = model.cfg.n_layers
    zs = [hook_name("z", L) for L in range(n_layers)]
    _, clean_acts = capture(model, clean, zs)
    _, corrupt_acts = capture(model, corrupt, zs)
    recv_hooks: dict[str, list[tuple[int, str]]] = {}
    if recv is not None:
        for (L, h), cs in recv.items():
            for c in cs:
                recv_hooks.setdefault(hook_name(c, L), []).append((h, c))

    out = torch.full((n_layers, model.cfg.n_heads), math.nan)
    iterator = reachable
    if progress:
        from .display import tqdm

        iterator = tqdm(reachable, desc="path patching (reference)")
    for sL, sh in iterator:
        fwd = []
        for L in range(n_layers):

            def freeze(z, hook, _L=L):
                frozen = clean_acts[hook_name("z", _L)].clone()
                if _L == sL:
                    frozen[:, :, sh] = torch.where(
                        smask[..., None], corrupt_acts[hook_name("z", _L)][:, :, sh], frozen[:, :, sh]
                    )
                return frozen

            fwd.append((hook_name("z", L), freeze))
        if recv is None:
            logits = model.run_with_hooks(clean, fwd_hooks=fwd)
            out[sL, sh] = metric_scalar(metric(logits))
            continue
        _, pass_c = capture(model, clean, list(recv_hooks), fwd_hooks=fwd)
        fwd_d = []
        for name, items in recv_hooks.items():

            def replace(t, hook, _name=name, _items=items):
                t = t.clone()
                for h, _c in _items:
                    t[:, :, h] = pass_c[_name][:, :, h]
                return t

            fwd_d.append((name, replace))
        logits = model.run_with_hooks(clean, fwd_hooks=fwd_d)
        out[sL, sh] = metric_scalar(metric(logits))
    return out


@torch.no_grad()
def path_patch(model, clean_tokens, corrupted_tokens, metric: Callable, *, receivers: Any = "logits",
               receiver_input: Any = "q", senders: Iterable[Head] | None = None,
               sender_positions: Any = None, named_positions: Mapping[str, Any] | None = None,
               batch_tokens: int | None = None, progress: bool = False) -> torch.Tensor:
    """``[n_layers, n_heads]``: path-patching score of each sender head (Wang et al. App. B).

    Args:
        clean_tokens, corrupted_tokens: ``[batch, seq]`` x_orig and x_new, aligned.
        metric: logits → scalar; a :class:`LogitDiffMetric` or :class:`PositionMetric` is
            fastest (only the logits it reads are computed); any callable works.
        receivers: ``"logits"`` (the final residual stream; default), or heads
            ``[(layer, head), ...]`` (or a dict ``{(layer, head): "q" | "kv" | ...}``).
        receiver_input: which input of every receiver head is replaced: ``"q"``, ``"k"``,
            ``"v"`` or a combination such as ``"kv"``.
        senders: heads to score (default all); the rest are ``NaN``.
        sender_positions: where the sender takes its corrupted value (default every
            position); see the module docstring for the forms, e.g. ``"END"`` with
            ``named_positions=ds.positions``.
        batch_tokens: (prompt, position) rows processed at once per chunk of senders
            (default 512, fastest on a 2-core CPU).
        progress: show a tqdm bar over the senders.

    Returns the metric of pass D per sender; ``NaN`` for senders at or after the last
    receiver layer (no path) and for heads not in ``senders``. Equals
    :func:`path_patch_reference` up to float rounding.
    """
    clean, corrupt, recv, senders, reachable, smask = _prepare(
        model, clean_tokens, corrupted_tokens, receivers=receivers, receiver_input=receiver_input,
        senders=senders, sender_positions=sender_positions, named_positions=named_positions,
    )
    dev = model.cfg.device
    clean, corrupt, smask = clean.to(dev), corrupt.to(dev), smask.to(dev)
    return _fast_path.run(
        model, clean, corrupt, recv, reachable, smask, metric, batch_tokens=batch_tokens, progress=progress
    )
