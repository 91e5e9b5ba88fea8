"""Activation patching and path patching on a TransformerLens 4.x bridge (compatibility mode).

Two families of tools, both task-agnostic (tokens in, a metric on logits out):

* **Activation patching** (:func:`patch_heads`, :func:`patch_resid_by_position`,
  :func:`patch_resid_by_layer`, and the one-shot :func:`run_with_patches`). One run is the
  *target*, the other the *source*; each component in turn gets the source's activation in
  the target's run and the metric of the result is recorded. ``direction`` says which is which:

  - ``"corrupted->clean"`` (noising): run the clean prompts, patch in corrupted activations;
  - ``"clean->corrupted"`` (denoising): run the corrupted prompts, patch in clean ones.

* **Path patching** as Wang et al. (2022, App. B) define it (:func:`path_patch`, fast, and
  :func:`path_patch_reference`, one plain hooked forward pass per pass and sender). For each
  sender head:

  - pass C runs x_orig (clean) with **every attention head frozen** at its x_orig output
    (``hook_z``), except the sender, which gets its x_new (corrupted) output, at every position
    or only at ``sender_positions``; MLPs and LayerNorms are recomputed, so paths through MLPs
    count;
  - pass D runs x_orig again with only the receivers' inputs replaced by their pass-C values
    (the ``q``/``k``/``v`` input of each receiver head, replaced at every position, or the
    final residual stream, i.e. the logits of pass C) and everything else recomputed;
  - the score is ``metric(logits of pass D)``: the raw metric, not a difference. Normalise
    it yourself, e.g. with :func:`helpers.metrics.normalized_metric`.

  A sender in a layer at or after the **last** receiver layer has no path to any receiver;
  its entry is ``NaN`` (also the entry of heads not asked for in ``senders``). A sender before
  some receivers but not others is scored with the receivers it can reach (replacing the
  others' inputs by their pass-C values changes nothing, since those equal their clean values).

Metrics are callables ``logits [batch, seq, d_vocab] -> scalar tensor``. Two callable classes
also tell the fast path which logits they read, so it computes only those:
:class:`LogitDiffMetric` (mean logit(answer) − logit(wrong) at one position per prompt; only
``W_U[:, answer] − W_U[:, wrong]`` is computed) and :class:`PositionMetric` (any function of the
logits at one position per prompt). Any other callable gets full logits (slower).

Positions (``positions=``, ``sender_positions=``): ``None`` = every position; an ``int`` = that
column for every prompt; a 1-D long tensor of length ``batch`` = one position per prompt; a
2-D long tensor ``[batch, k]`` = ``k`` positions per prompt; a bool mask ``[batch, seq]``; a
string looked up in ``named_positions`` (e.g. an IOI dataset's ``positions`` dict: ``"END"``);
or a list/tuple of any of these (their union).

**Why the fast path is exact.** With every head frozen, pass C's only change is the sender's
output at the sender positions, and the only things recomputed, MLPs and LayerNorms, act on
each position separately: pass C's residual stream differs from the clean one only at the
sender positions, and there it is a function of that position's own residual. So pass C is
computed by pushing the sender's output change through the later MLPs at those positions only,
for many senders at once (positions where the clean and corrupted prompts agree so far are
skipped: both runs are identical there). For head receivers, pass D is recomputed from the
clean residual at the first receiver layer, for each prompt only on its own window of
positions, from its first sender position (earlier positions cannot change in a causal model)
to the metric's position (later ones cannot reach it), packed without padding and in chunks
of senders; prompts with an empty window keep their clean value, and in the last layer only
the metric's row is computed. Only the logits the metric needs are computed. The attention
and MLP arithmetic is done from the model's own (folded, centred) weights ``W_Q, W_K, W_V,
W_O, b_*, W_in, W_out, W_U``; a cheap self-check against the model's own activations runs
first and raises if the model is not a GPT-2-style bridge in compatibility mode.

Prompts in a batch must have equal length (right-pad with any token: a causal model never
looks right, so padding after a prompt's END changes nothing up to END).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import logit_diff, logits_at

__all__ = [
    "LogitDiffMetric",
    "PositionMetric",
    "position_mask",
    "all_heads",
    "capture",
    "logits_at_positions",
    "run_with_patches",
    "patch_heads",
    "patch_resid_by_position",
    "patch_resid_by_layer",
    "path_patch",
    "path_patch_reference",
]

Head = tuple[int, int]
DIRECTIONS = {
    "corrupted->clean": "noising",
    "noising": "noising",
    "clean->corrupted": "denoising",
    "denoising": "denoising",
}


# --------------------------------------------------------------------------------------
# Metrics that say which logits they read
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitDiffMetric:
    """Mean over prompts of logit(answer) − logit(wrong) at one position per prompt.

    ``answer``, ``wrong``: ``[batch]`` token ids; ``positions``: ``[batch]``, an int, or
    ``None`` for the last position. Calling it on logits ``[batch, seq, d_vocab]`` equals
    :func:`helpers.metrics.logit_diff`; :func:`path_patch` uses the fields to compute only
    the two logits per prompt that it needs.
    """

    answer: torch.Tensor
    wrong: torch.Tensor
    positions: torch.Tensor | int | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, self.answer, self.wrong, self.positions)


@dataclass(frozen=True)
class PositionMetric:
    """``fn(logits at one position per prompt [batch, d_vocab]) -> scalar``.

    E.g. ``PositionMetric(lambda lg: lg.softmax(-1)[rows, io].mean(), ds.positions["END"])``.
    :func:`path_patch` computes the logits only at those positions.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor | int | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits_at(logits, self.positions))


def _metric_positions(metric, batch: int, seq: int) -> torch.Tensor:
    return _one_position_per_prompt(metric.positions, batch, seq)


def _one_position_per_prompt(pos, batch: int, seq: int) -> torch.Tensor:
    """``[batch]`` positions from ``None`` (the last), an int, or ``[batch]`` values."""
    if pos is None:
        return torch.full((batch,), seq - 1, dtype=torch.long)
    if isinstance(pos, int):
        return torch.full((batch,), pos % seq, dtype=torch.long)
    pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1).cpu()
    if pos.numel() != batch:
        raise ValueError(f"positions has {pos.numel()} entries for a batch of {batch}: give one per prompt")
    return pos % seq


def _scalar(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"The metric must return a scalar, got a tensor of shape {tuple(value.shape)} "
                f"(average over prompts, e.g. logit_diff(..., mean=True))."
            )
        return float(value.detach().float().item())
    return float(value)


# --------------------------------------------------------------------------------------
# Positions, heads, hooks
# --------------------------------------------------------------------------------------


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


def all_heads(model) -> list[Head]:
    """Every (layer, head) of the model, in order."""
    return [(L, h) for L in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _as_heads(heads, model) -> list[Head]:
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


def _z(L: int) -> str:
    return f"blocks.{L}.attn.hook_z"


def _resid_name(L: int, hook: str) -> str:
    if hook not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"hook must be 'resid_pre', 'resid_mid' or 'resid_post', got {hook!r}")
    return f"blocks.{L}.hook_{hook}"


def _tokens(tokens) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tuple(t.shape)}")
    return t.long()


def _check_pair(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
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
    tokens = _tokens(tokens).to(model.cfg.device)
    store: dict[str, torch.Tensor] = {}
    hooks = list(fwd_hooks)
    for name in dict.fromkeys(names):

        def save(t, hook, _name=name):
            store[_name] = t.detach()

        hooks.append((name, save))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, store


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (caught by :func:`logits_at_positions`)."""


@torch.no_grad()
def logits_at_positions(model, tokens, positions: Any = None, *, fwd_hooks: Sequence = ()) -> torch.Tensor:
    """``[batch, d_vocab]``: the logits at one position per prompt, unembedding only those rows.

    Equals ``model(tokens)`` read at ``positions`` (``[batch]``, an int, or ``None`` for the
    last position) up to float rounding: the final LayerNorm and the unembedding act on each
    position separately. The forward pass stops at the final LayerNorm's input, so the
    ``[batch, seq, d_vocab]`` logits are never built; on IOI-sized prompts GPT-2's
    unembedding is about 40% of a forward pass. ``fwd_hooks`` apply as in ``run_with_hooks``.
    """
    tokens = _tokens(tokens).to(model.cfg.device)
    batch, seq = tokens.shape
    store: dict[str, torch.Tensor] = {}

    def grab(resid, hook):
        store["resid"] = resid
        raise _StopForward

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, ("ln_final.hook_in", grab)])
    except _StopForward:
        pass
    if "resid" not in store:
        raise RuntimeError("logits_at_positions: the model has no 'ln_final.hook_in' hook point")
    pos = _one_position_per_prompt(positions, batch, seq).to(tokens.device)
    rows = store["resid"][torch.arange(batch, device=tokens.device), pos]  # [batch, d_model]
    return model.unembed(model.ln_final(rows[:, None]))[:, 0]


def _source_acts(model, tokens, names) -> dict:
    _, acts = capture(model, tokens, names)
    return acts


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
    ``"blocks.0.hook_mlp_out"``, ``"hook_embed"``, ``"blocks.3.hook_resid_pre"``) whose whole
    activation is taken from the source at ``positions``.
    """
    tokens = _tokens(tokens).to(model.cfg.device)
    batch, seq = tokens.shape
    heads = _as_heads(heads, model)
    hooks = list(hooks)
    need = sorted({_z(L) for L, _ in heads}) + hooks
    if isinstance(source, (torch.Tensor, list)):
        src_tokens = _tokens(source)
        _check_pair(tokens.cpu(), src_tokens)
        source = _source_acts(model, src_tokens, need)
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(tokens.device)
    by_layer: dict[int, list[int]] = {}
    for L, h in heads:
        by_layer.setdefault(L, []).append(h)
    fwd = []
    for L, hs in by_layer.items():
        src = source[_z(L)]

        def patch_z(z, hook, _src=src, _hs=hs):
            z = z.clone()
            for h in _hs:
                z[:, :, h] = torch.where(mask[..., None], _src[:, :, h].to(z), z[:, :, h])
            return z

        fwd.append((_z(L), patch_z))
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
    clean, corrupt = _tokens(clean_tokens), _tokens(corrupted_tokens)
    _check_pair(clean, corrupt)
    target, source = (clean, corrupt) if _direction(direction) == "noising" else (corrupt, clean)
    return target.to(model.cfg.device), source


def _copies_per_run(model, batch: int, seq: int, copies: int | None) -> int:
    if copies is not None:
        return max(1, int(copies))
    budget = 4e7  # logits elements per forward pass (~160 MB in float32)
    return max(1, int(budget // (batch * seq * model.cfg.d_vocab_out)))


@torch.no_grad()
def _scan(model, target, configs, hook_names, make_patch, metric, copies, progress, desc):
    """Run ``target`` once per config (``copies`` configs per forward pass); metric of each.

    ``make_patch(name, act [k, batch, ...], configs_in_group)`` edits the stacked activation
    in place for every copy.
    """
    batch, seq = target.shape
    k_max = _copies_per_run(model, batch, seq, copies)
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
        results.extend(_scalar(metric(logits[i])) for i in range(k))
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
    copies: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers, n_heads]``: the metric with one head's output (``hook_z``) patched.

    Each head in turn (default: all; others are ``NaN``) gets the source run's ``z`` at
    ``positions`` (default all) in the target run. ``copies`` configurations share one
    forward pass (default: as many as fit a ~160 MB logits budget).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    heads = _as_heads(heads, model)
    layers = sorted({L for L, _ in heads})
    src = _source_acts(model, source, [_z(L) for L in layers])
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(target.device)
    name_to_layer = {_z(L): L for L in layers}

    def make_patch(name, view, group):
        L = name_to_layer[name]
        for i, (gl, h) in enumerate(group):
            if gl == L:
                view[i, :, :, h] = torch.where(mask[..., None], src[name][:, :, h], view[i, :, :, h])

    values = _scan(model, target, heads, list(name_to_layer), make_patch, metric, copies, progress, "heads")
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
    copies: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers, seq]``: the metric with the residual stream at one (layer, position) patched.

    ``hook``: ``"resid_pre"`` (default), ``"resid_mid"`` or ``"resid_post"``. Positions are
    columns of the token tensor (the same for every prompt). Layers not asked for are ``NaN``.
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(L) for L in layers]
    names = {_resid_name(L, hook): L for L in layers}
    src = _source_acts(model, source, list(names))
    configs = [(L, p) for L in layers for p in range(seq)]

    def make_patch(name, view, group):
        L = names[name]
        for i, (gl, p) in enumerate(group):
            if gl == L:
                view[i, :, p] = src[name][:, p]

    values = _scan(model, target, configs, list(names), make_patch, metric, copies, progress, "resid (layer, pos)")
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
    copies: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[n_layers]``: the metric with the whole residual stream of one layer patched.

    At ``positions`` (default every position: then any single layer's ``resid_pre`` carries
    the whole source run, and the metric is the source's).
    """
    target, source = _target_and_source(model, clean_tokens, corrupted_tokens, direction)
    batch, seq = target.shape
    layers = list(range(model.cfg.n_layers))
    names = {_resid_name(L, hook): L for L in layers}
    src = _source_acts(model, source, list(names))
    mask = position_mask(positions, batch, seq, named_positions=named_positions).to(target.device)

    def make_patch(name, view, group):
        L = names[name]
        for i, gl in enumerate(group):
            if gl == L:
                view[i] = torch.where(mask[..., None], src[name], view[i])

    return _scan(model, target, layers, list(names), make_patch, metric, copies, progress, "resid layers")


# --------------------------------------------------------------------------------------
# Path patching: shared set-up
# --------------------------------------------------------------------------------------

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
        return {h: inputs(c) for h, c in zip(_as_heads(list(receivers), model), receivers.values())}
    return {h: inputs(receiver_input) for h in _as_heads(receivers, model)}


class _Weights:
    """The model's folded weights, read once, plus the manual forward used by the fast path.

    Per layer, q/k/v weights are fused into one ``[d_model, 3 · n_heads · d_head]`` matrix
    and every projection is one ``addmm`` on a flattened batch.
    """

    def __init__(self, model):
        cfg = model.cfg
        if getattr(cfg, "normalization_type", "LN") not in ("LN", "LNPre") or getattr(cfg, "parallel_attn_mlp", False):
            raise NotImplementedError("path_patch's fast path supports GPT-2-style models only")
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            raise NotImplementedError("scale_attn_by_inverse_layer_idx is not supported")
        from transformers.activations import ACT2FN

        if cfg.act_fn in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
        else:
            self.act = ACT2FN[cfg.act_fn]
        self.eps = float(cfg.eps)
        self.n_layers, self.n_heads, self.d_head = cfg.n_layers, cfg.n_heads, cfg.d_head
        self.scale = self.d_head**-0.5
        self.W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}  # [L, H, d_model, d_head]
        self.b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}  # [L, H, d_head]
        self.W_O, self.b_O = model.W_O, model.b_O  # [L, H, d_head, d_model], [L, d_model]
        self.W_in, self.b_in = model.W_in, model.b_in
        self.W_out, self.b_out = model.W_out, model.b_out
        self._qkv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._W_U = None
        self._model = model

    @property
    def W_U(self):
        if self._W_U is None:
            self._W_U = self._model.W_U
            b_U = getattr(self._model, "b_U", None)
            self._b_U = torch.zeros(self._W_U.shape[1], device=self._W_U.device) if b_U is None else b_U
        return self._W_U

    @property
    def b_U(self):
        _ = self.W_U
        return self._b_U

    def qkv_weights(self, L):
        if L not in self._qkv:
            d = self.W["q"].shape[2]
            W = torch.cat([self.W[c][L].permute(1, 0, 2).reshape(d, -1) for c in "qkv"], 1).contiguous()
            b = torch.cat([self.b[c][L].reshape(-1) for c in "qkv"])
            self._qkv[L] = (W, b)
        return self._qkv[L]

    def ln(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    @staticmethod
    def _affine(x, W, b):
        """``x @ W + b`` over the last dim, as one addmm on the flattened leading dims."""
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1])

    def mlp(self, L, x_mid):
        hidden = self.act(self._affine(self.ln(x_mid), self.W_in[L], self.b_in[L]))
        return self._affine(hidden, self.W_out[L], self.b_out[L])

    def proj(self, L, x_normed, which, heads=None):
        """``[..., H, d_head]`` (or the given heads only) from an LN'd residual ``[..., d_model]``."""
        W, b = self.W[which][L], self.b[which][L]
        if heads is not None:
            W, b = W[heads], b[heads]
        d = W.shape[1]
        out = self._affine(x_normed, W.permute(1, 0, 2).reshape(d, -1), b.reshape(-1))
        return out.view(*x_normed.shape[:-1], W.shape[0], self.d_head)

    def attn(self, L, x, win: "_Window", k_clean, v_clean, overrides, end_only: bool = False):
        """Attention output of layer ``L`` at the packed window rows of ``win``.

        ``x``: ``[s, R, d]`` residual (resid_pre) at the ``R`` window rows, for ``s`` copies
        (senders); ``k_clean``/``v_clean``: ``[A, S, H, d_head]`` keys/values of the ``A``
        prompts' whole sequences, kept where the window does not recompute them (before it);
        ``overrides``: ``{(which, head): [s, R, d_head]}`` replacing the computed q/k/v.
        Returns ``[s, R, d]``, or with ``end_only`` ``[s, A, d]`` at each prompt's last window
        row only (keys and values still cover every row).
        """
        s, R, _ = x.shape
        H, dh = self.n_heads, self.d_head
        A, S = k_clean.shape[:2]
        W, b = self.qkv_weights(L)
        qkv = self._affine(self.ln(x), W, b).view(s, R, 3, H, dh)
        q, k, v = qkv.unbind(2)
        if overrides:
            q, k, v = q.clone(), k.clone(), v.clone()
            for (c, head), val in overrides.items():
                {"q": q, "k": k, "v": v}[c][:, :, head] = val
        k_all = k_clean[None].expand(s, -1, -1, -1, -1).clone()  # [s, A, S, H, dh]
        v_all = v_clean[None].expand(s, -1, -1, -1, -1).clone()
        k_all[:, win.rows, win.pos] = k
        v_all[:, win.rows, win.pos] = v
        if end_only:
            q_pad = q[:, win.end][:, :, None]  # [s, A, 1, H, dh]
            query_pos = win.pos[win.end][:, None]  # [A, 1]
        else:
            q_pad = q.new_zeros(s, A, win.t, H, dh)
            q_pad[:, win.rows, win.cols] = q
            query_pos = win.pos_pad  # [A, t]
        scores = torch.matmul(q_pad.transpose(2, 3), k_all.permute(0, 1, 3, 4, 2)) * self.scale  # [s, A, H, t, S]
        allowed = torch.arange(S, device=x.device)[None, None, :] <= query_pos[:, :, None]  # [A, t, S]
        scores = scores.masked_fill(~allowed[None, :, None], float("-inf"))
        z = torch.matmul(scores.softmax(-1), v_all.transpose(2, 3))  # [s, A, H, t, dh]
        z = z.transpose(2, 3).reshape(s, A, -1, H * dh)  # [s, A, t, H·dh]
        z = z[:, :, 0] if end_only else z[:, win.rows, win.cols]
        return self._affine(z, self.W_O[L].reshape(H * dh, -1), self.b_O[L])


@dataclass(frozen=True)
class _Window:
    """Ragged per-prompt windows of positions, packed into ``R`` rows.

    Prompt ``a`` (of ``A``) covers positions ``first[a] .. first[a] + span[a] - 1``. Row ``r``
    is prompt ``rows[r]``, window column ``cols[r]``, absolute position ``pos[r]``;
    ``pos_pad`` ``[A, t]`` is the padded layout (positions clamped to the sequence);
    ``end[a]`` is the row of prompt ``a``'s last position.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    pos: torch.Tensor
    pos_pad: torch.Tensor
    end: torch.Tensor
    t: int

    @staticmethod
    def build(first: torch.Tensor, span: torch.Tensor, seq: int) -> "_Window":
        t = int(span.max())
        offs = torch.arange(t, device=first.device)
        valid = offs[None, :] < span[:, None]  # [A, t]
        pos_pad = (first[:, None] + offs[None, :]).clamp(max=seq - 1)
        rows, cols = valid.nonzero(as_tuple=True)  # row-major: each prompt's rows in order
        end = torch.cumsum(span, 0) - 1
        return _Window(rows, cols, pos_pad[rows, cols], pos_pad, end, t)


def _self_check(w: _Weights, clean_acts, last_logits, layer: int, n: int = 4) -> None:
    """The manual arithmetic must reproduce the model's own activations; raise if not.

    ``last_logits``: ``[>= n, d_vocab]`` the model's logits at the last position of the first
    prompts."""
    x = clean_acts[f"blocks.{layer}.hook_resid_pre"][:n]
    n, seq = x.shape[:2]
    win = _Window.build(torch.zeros(n, dtype=torch.long, device=x.device), torch.full((n,), seq, device=x.device), seq)
    empty = x.new_zeros(n, seq, w.n_heads, w.d_head)
    out = w.attn(layer, x.reshape(1, n * seq, -1), win, empty, empty, {}).view(n, seq, -1)
    mid = clean_acts[f"blocks.{layer}.hook_resid_mid"][:n]
    post = mid + w.mlp(layer, mid)
    final = clean_acts[f"blocks.{w.n_layers - 1}.hook_resid_post"][:n, -1]
    lg = w.ln(final) @ w.W_U + w.b_U
    errs = {
        "attention": (x + out - mid).abs().max().item() / (mid.abs().max().item() + 1e-6),
        "mlp": (post - clean_acts[f"blocks.{layer}.hook_resid_post"][:n]).abs().max().item()
        / (post.abs().max().item() + 1e-6),
        "unembed": (lg - last_logits[:n]).abs().max().item() / (lg.abs().max().item() + 1e-6),
    }
    bad = {k: v for k, v in errs.items() if not v < 1e-3}
    if bad:
        raise RuntimeError(
            f"path_patch's fast path could not reproduce the model's own activations "
            f"(relative errors {bad}). It needs a GPT-2-style TransformerBridge in "
            f"compatibility mode (model.enable_compatibility_mode()); use "
            f"path_patch_reference otherwise."
        )


def _token_budget(chunk_tokens: int | None) -> int:
    return int(chunk_tokens) if chunk_tokens else 512


def _group_senders(senders: list[Head]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for L, h in senders:
        by_layer.setdefault(L, []).append(h)
    return dict(sorted(by_layer.items()))


def _prepare(model, clean_tokens, corrupted_tokens, receivers, receiver_input, senders, sender_positions, named_positions):
    clean, corrupt = _tokens(clean_tokens), _tokens(corrupted_tokens)
    _check_pair(clean, corrupt)
    batch, seq = clean.shape
    recv = _normalize_receivers(receivers, receiver_input, model)
    senders = _as_heads(senders, model)
    smask = position_mask(sender_positions, batch, seq, named_positions=named_positions)
    if recv is None:
        last = model.cfg.n_layers  # the final residual stream sits after every layer
    else:
        last = max(L for L, _ in recv)
    reachable = [(L, h) for L, h in senders if L < last]
    return clean, corrupt, recv, senders, reachable, smask


def _path_patch_captures(model, clean, corrupt, first_sender_layer, first_recv, *, need_logits, cache):
    """Clean activations, corrupted ``hook_z``, and (if ``need_logits``) the clean logits.

    With ``cache=None`` only what this call needs is captured. With a dict, the first call
    captures what any call could need (every layer's z, resid_pre, resid_mid, resid_post, q,
    k, v) and stores it with the tokens; later calls with the same tokens reuse it.
    """
    n_layers = model.cfg.n_layers
    zs = [_z(L) for L in range(n_layers)]
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache must be a dict (start with cache={{}}) or None, got {type(cache).__name__}")
    if cache:
        same = torch.equal(cache["clean_tokens"], clean) and torch.equal(cache["corrupted_tokens"], corrupt)
        if not same:
            raise ValueError(
                "This path-patching cache was filled from other clean/corrupted tokens. Use one "
                "cache dict per pair of token batches (e.g. cache={} for a new pair)."
            )
    else:
        if cache is None:  # only what this call needs
            names = zs + [f"blocks.{L}.hook_{r}" for L in range(n_layers) for r in ("resid_pre", "resid_mid")]
            names += [f"blocks.{first_sender_layer}.hook_resid_post", f"blocks.{n_layers - 1}.hook_resid_post"]
            qkv_layers = range(first_recv, n_layers)
        else:  # what any later call could need
            names = zs + [f"blocks.{L}.hook_{r}" for L in range(n_layers) for r in ("resid_pre", "resid_mid", "resid_post")]
            qkv_layers = range(n_layers)
        names += [f"blocks.{L}.attn.hook_{c}" for L in qkv_layers for c in "qkv"]
        logits, acts = capture(model, clean, names)
        acts["last_logits"] = logits[:, -1].clone()  # not a view: the full logits can be freed
        _, corrupt_acts = capture(model, corrupt, zs)
        if cache is None:
            return acts, corrupt_acts, logits if need_logits else None
        cache.update(clean_tokens=clean, corrupted_tokens=corrupt, clean=acts, corrupted=corrupt_acts)
        if need_logits:
            cache["clean_logits"] = logits
    if need_logits and "clean_logits" not in cache:
        cache["clean_logits"] = model(clean)
    return cache["clean"], cache["corrupted"], cache.get("clean_logits") if need_logits else None


# --------------------------------------------------------------------------------------
# Path patching: reference implementation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def path_patch_reference(
    model,
    clean_tokens,
    corrupted_tokens,
    metric: Callable,
    *,
    receivers: Any = "logits",
    receiver_input: Any = "q",
    senders: Iterable[Head] | None = None,
    sender_positions: Any = None,
    named_positions: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Path patching done plainly: hooked forward passes, one sender at a time.

    Same arguments and result as :func:`path_patch`. Pass C is a full forward pass on the
    clean tokens with every ``hook_z`` set to its cached clean value except the sender's,
    which takes its corrupted value at ``sender_positions``. For the final-residual receiver
    the score is the metric of pass C's logits (pass D would copy the whole final residual).
    For head receivers, pass C records the receivers' ``hook_q``/``hook_k``/``hook_v`` (a
    head's query/key/value is a fixed function of its input, so replacing it is replacing
    the input), and pass D is a full forward pass with those replaced at every position.
    """
    clean, corrupt, recv, senders, reachable, smask = _prepare(
        model, clean_tokens, corrupted_tokens, receivers, receiver_input, senders, sender_positions, named_positions
    )
    dev = model.cfg.device
    clean, corrupt, smask = clean.to(dev), corrupt.to(dev), smask.to(dev)
    n_layers = model.cfg.n_layers
    zs = [_z(L) for L in range(n_layers)]
    _, clean_acts = capture(model, clean, zs)
    _, corrupt_acts = capture(model, corrupt, zs)
    recv_hooks: dict[str, list[tuple[int, str]]] = {}
    if recv is not None:
        for (L, h), cs in recv.items():
            for c in cs:
                recv_hooks.setdefault(f"blocks.{L}.attn.hook_{c}", []).append((h, c))

    out = torch.full((n_layers, model.cfg.n_heads), math.nan)
    iterator = reachable
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(reachable, desc="path patching (reference)")
    for sL, sh in iterator:
        fwd = []
        for L in range(n_layers):

            def freeze(z, hook, _L=L):
                frozen = clean_acts[_z(_L)].clone()
                if _L == sL:
                    frozen[:, :, sh] = torch.where(
                        smask[..., None], corrupt_acts[_z(_L)][:, :, sh], frozen[:, :, sh]
                    )
                return frozen

            fwd.append((_z(L), freeze))
        if recv is None:
            logits = model.run_with_hooks(clean, fwd_hooks=fwd)
            out[sL, sh] = _scalar(metric(logits))
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
        out[sL, sh] = _scalar(metric(logits))
    return out


# --------------------------------------------------------------------------------------
# Path patching: fast implementation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def path_patch(
    model,
    clean_tokens,
    corrupted_tokens,
    metric: Callable,
    *,
    receivers: Any = "logits",
    receiver_input: Any = "q",
    senders: Iterable[Head] | None = None,
    sender_positions: Any = None,
    named_positions: Mapping[str, Any] | None = None,
    chunk_tokens: int | None = None,
    progress: bool = False,
    cache: dict | None = None,
) -> torch.Tensor:
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
        chunk_tokens: sequences × positions processed at once per chunk of senders (default
            512: on a 2-core CPU, 100 IOI prompts ran fastest one or a few senders at a time;
            chunks of 16384 were up to 1.6× slower, not faster).
        cache: ``None`` (default), or a dict shared by several calls on the same clean and
            corrupted tokens (``cache = {}``; then ``path_patch(..., cache=cache)`` each time):
            the two runs' activations are captured once instead of once per call.

    Returns the metric of pass D per sender; ``NaN`` for senders at or after the last
    receiver layer (no path) and for heads not in ``senders``. Equals
    :func:`path_patch_reference` up to float rounding.
    """
    clean, corrupt, recv, senders, reachable, smask = _prepare(
        model, clean_tokens, corrupted_tokens, receivers, receiver_input, senders, sender_positions, named_positions
    )
    dev = model.cfg.device
    clean, corrupt, smask = clean.to(dev), corrupt.to(dev), smask.to(dev)
    batch, seq = clean.shape
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.full((n_layers, n_heads), math.nan)
    if not reachable:
        return out
    w = _Weights(model)
    kind = "ld" if isinstance(metric, LogitDiffMetric) else "pos" if isinstance(metric, PositionMetric) else "full"

    first_sender_layer = min(L for L, _ in reachable)
    first_recv = n_layers if recv is None else min(L for L, _ in recv)
    acts, corrupt_acts, clean_logits = _path_patch_captures(
        model, clean, corrupt, first_sender_layer, first_recv, need_logits=kind == "full", cache=cache
    )
    _self_check(w, acts, acts["last_logits"], first_sender_layer)

    # The sender's change of output, at the sender positions (flattened (prompt, pos) pairs).
    # Where clean and corrupted prompts agree up to a position, both runs are the same there
    # and the sender's change is zero: those positions are skipped.
    differs = (clean != corrupt).long().cumsum(1) > 0
    sb, sp = (smask & differs).nonzero(as_tuple=True)

    def sender_delta(L, hs, b_idx, p_idx, sel=None):
        dz = corrupt_acts[_z(L)][b_idx, p_idx][:, hs] - acts[_z(L)][b_idx, p_idx][:, hs]  # [m, s, dh]
        delta = torch.einsum("mse,sed->smd", dz, w.W_O[L][hs])  # [s, m, d]
        if sel is not None:
            delta = delta * sel[None, :, None].to(delta)
        return delta

    def frozen_attn(L, b_idx, p_idx):
        return acts[f"blocks.{L}.hook_resid_mid"][b_idx, p_idx] - acts[f"blocks.{L}.hook_resid_pre"][b_idx, p_idx]

    def propagate(x_mid, L_from, L_to, b_idx, p_idx, record=()):
        """Pass C at some positions: from resid_mid of ``L_from`` to resid_pre of ``L_to``."""
        kept = {}
        x = x_mid
        for L in range(L_from, L_to):
            if L > L_from:
                x = x + frozen_attn(L, b_idx, p_idx)
            x = x + w.mlp(L, x)
            if L + 1 in record:
                kept[L + 1] = x
        return x, kept

    rows = torch.arange(batch, device=dev)
    mpos = _metric_positions(metric, batch, seq).to(dev) if kind != "full" else None
    if kind == "ld":
        answer, wrong = (torch.as_tensor(t, device=dev) for t in (metric.answer, metric.wrong))
        direction = (w.W_U[:, answer] - w.W_U[:, wrong]).T  # [B, d]
        bias = w.b_U[answer] - w.b_U[wrong]

    def score(final, b_idx=None, p_idx=None) -> list[float]:
        """The metric of ``s`` runs from their final-residual rows ``[s, m, d]``.

        "ld"/"pos": the rows are each prompt's metric row, in prompt order (only the logits
        the metric reads are computed). "full": the rows sit at ``(b_idx, p_idx)`` and replace
        the clean logits there.
        """
        if kind == "ld":
            return ((w.ln(final) * direction).sum(-1) + bias).mean(-1).tolist()
        lg = w.ln(final) @ w.W_U + w.b_U
        if kind == "pos":
            return [_scalar(metric.fn(lg[j])) for j in range(len(lg))]
        values = []
        for j in range(len(lg)):
            full = clean_logits.clone()
            full[b_idx, p_idx] = lg[j]
            values.append(_scalar(metric(full)))
        return values

    budget = _token_budget(chunk_tokens)
    groups = _group_senders(reachable)
    progress_bar = None
    if progress:
        from tqdm.auto import tqdm

        progress_bar = tqdm(total=len(reachable), desc="path patching")

    if recv is None:
        for L, hs in groups.items():
            if kind == "full":
                b_idx, p_idx, sel = sb, sp, None
                per = max(1, budget // max(1, len(sb)))
                per = min(per, max(1, int(4e7 // (batch * seq * w.W_U.shape[1]))))
            else:
                b_idx, p_idx = rows, mpos
                sel = smask[rows, mpos]
                per = max(1, budget // batch)
                if kind == "pos":
                    per = min(per, max(1, int(2.5e7 // (batch * w.W_U.shape[1]))))
            for i in range(0, len(hs), per):
                chunk = hs[i : i + per]
                delta = sender_delta(L, chunk, b_idx, p_idx, sel)
                x_mid = acts[f"blocks.{L}.hook_resid_mid"][b_idx, p_idx][None] + delta
                final, _ = propagate(x_mid, L, n_layers, b_idx, p_idx)
                for h, v in zip(chunk, score(final, b_idx, p_idx)):
                    out[L, h] = v
                if progress_bar is not None:
                    progress_bar.update(len(chunk))
        if progress_bar is not None:
            progress_bar.close()
        return out

    # ---- head receivers ----
    # Pass D changes nothing before a prompt's first sender position, and (for metrics that
    # read one position) nothing after its metric position matters: each prompt is recomputed
    # only on its own window [first sender position, metric position], and prompts whose
    # window is empty are left out (their metric rows are the clean ones).
    recv_layers = sorted({L for L, _ in recv})
    clean_final = acts[f"blocks.{n_layers - 1}.hook_resid_post"]
    first = torch.full((batch,), seq, dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, sb, sp, reduce="amin")
    last = mpos if kind != "full" else torch.full((batch,), seq - 1, dtype=torch.long, device=dev)
    active = (first <= last).nonzero(as_tuple=True)[0]  # [A] prompts pass D can change
    n_act = len(active)
    if n_act == 0:  # no sender position can reach a metric position: every score is the clean one
        value = _scalar(metric(clean_logits)) if kind == "full" else score(clean_final[rows, mpos][None])[0]
        for L, h in reachable:
            out[L, h] = value
        if progress_bar is not None:
            progress_bar.update(len(reachable))
            progress_bar.close()
        return out
    win = _Window.build(first[active], (last - first + 1)[active], seq)
    win_rows, win_pos = active[win.rows], win.pos  # [R] prompt and position of each row
    n_rows = len(win_rows)

    for L, hs in groups.items():
        reach = [RL for RL in recv_layers if RL > L]
        start = reach[0]
        per = max(1, budget // max(1, n_rows, len(sb)))
        if kind == "pos":
            per = min(per, max(1, int(2.5e7 // (batch * w.W_U.shape[1]))))
        if kind == "full":
            per = min(per, max(1, int(4e7 // (n_rows * w.W_U.shape[1]))))
        for i in range(0, len(hs), per):
            chunk = hs[i : i + per]
            s = len(chunk)
            # pass C at the sender positions, recording resid_pre at the receiver layers
            delta = sender_delta(L, chunk, sb, sp)
            x_mid = acts[f"blocks.{L}.hook_resid_mid"][sb, sp][None] + delta
            _, kept = propagate(x_mid, L, reach[-1], sb, sp, record=set(reach))
            overrides: dict[int, dict] = {}
            for RL in reach:
                normed = w.ln(kept[RL])  # [s, m, d]
                layer_over = {}
                for (QL, qh), cs in recv.items():
                    if QL != RL:
                        continue
                    for c in cs:
                        val = acts[f"blocks.{RL}.attn.hook_{c}"][:, :, qh][None].repeat(s, 1, 1, 1)  # [s, B, S, dh]
                        val[:, sb, sp] = w.proj(RL, normed, c, [qh])[..., 0, :]
                        layer_over[(c, qh)] = val[:, win_rows, win_pos]  # [s, R, dh]
                overrides[RL] = layer_over
            # pass D from the first reachable receiver layer, on the windows' rows only
            x = acts[f"blocks.{start}.hook_resid_pre"][win_rows, win_pos][None].repeat(s, 1, 1)  # [s, R, d]
            for RL in range(start, n_layers):
                k_clean = acts[f"blocks.{RL}.attn.hook_k"][active]  # [A, S, H, dh]
                v_clean = acts[f"blocks.{RL}.attn.hook_v"][active]
                if RL == n_layers - 1 and kind != "full":
                    # last layer: only the metric's row per prompt is read afterwards
                    x_end = x[:, win.end]  # [s, A, d]
                    x_end = x_end + w.attn(RL, x, win, k_clean, v_clean, overrides.get(RL, {}), end_only=True)
                    final_rows = x_end + w.mlp(RL, x_end)
                    break
                x = x + w.attn(RL, x, win, k_clean, v_clean, overrides.get(RL, {}))
                x = x + w.mlp(RL, x)
            if kind == "full":
                values = score(x, win_rows, win_pos)  # every window row
            else:
                final = clean_final[rows, mpos][None].repeat(s, 1, 1)  # [s, B, d]
                final[:, active] = final_rows
                values = score(final)
            for h, v in zip(chunk, values):
                out[L, h] = v
            if progress_bar is not None:
                progress_bar.update(s)
    if progress_bar is not None:
        progress_bar.close()
    return out
