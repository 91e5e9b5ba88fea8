"""The hooked run: trace targets, edits (ablations) and one forward + backward pass.

Everything goes through the TransformerLens bridge's hooks: each hooked activation gets a
zero tensor added that requires a gradient, and ``torch.autograd.grad`` of the target with
respect to those zeros gives d(target)/d(activation). No forward pass is written by hand.

**Edits.** Every ablation is a list of :class:`Edit` (node, site, fill) applied by
:func:`apply_edits`, the one place that indexes an ablated activation; the single run and the
batched one-node-per-copy ablations (:mod:`.estimates`) both call it.

**SAE splice.** With a residual SAE at ``blocks.L.hook_resid_pre`` the run replaces the
residual ``x`` there by ``decode(f) + e`` with ``f = encode(x)`` (the latents, editable) and
``e = x − decode(encode(x))`` (the **error node**, TDB's name); unedited, that is ``x`` again,
so the run and every gradient upstream are unchanged.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

from ..hooks import hook_name
from .nodes import Node, sae_layer

_WEIGHTS = weakref.WeakKeyDictionary()

#: Sites that get a zero "delta" for gradients (per layer).
DELTA_SITES = ("pattern", "z", "post", "resid_pre", "resid_mid", "attn_out", "mlp_out")
_READ_SITES = ("v", "q", "k", "attn_scores")


def weights(model) -> dict[str, torch.Tensor]:
    """The bridge's stacked weights, read once per model (each property access rebuilds
    them)."""
    cache = _WEIGHTS.get(model)
    if cache is None:
        cache = {name: getattr(model, name).detach() for name in (
            "W_O", "W_out", "W_U", "b_O", "b_out", "W_E", "W_pos")}
        b_U = getattr(model, "b_U", None)
        cache["b_U"] = None if b_U is None else b_U.detach()
        _WEIGHTS[model] = cache
    return cache


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class LogitTarget:
    target: int
    distractor: int

    def describe(self, model) -> str:
        return (f"logit({model.to_string([self.target])!r}) − "
                f"logit({model.to_string([self.distractor])!r})")


@dataclass(frozen=True)
class NodeTarget:
    node: Node
    through: str  # "q" | "k" | "qk" | "v" | "input" (neurons, latents)
    what: str = "score"  # heads via q/k/qk: "score" | "score_diff" | "prob"
    direction: torch.Tensor | None = None  # V traces: downstream gradient at the head's output
    versus: int | None = None  # score_diff: the other source position

    def describe(self, model) -> str:
        n = self.node
        if n.kind != "head":
            return f"activation of {n.label}"
        via = {"q": "its query", "k": "its key", "qk": "its query and key",
               "v": "its value"}[self.through]
        if self.through == "v":
            return f"write of {n.label} along the downstream gradient, through {via}"
        if self.what == "score_diff":
            return (f"attention score of {n.label} minus that of source {self.versus}, "
                    f"through {via}")
        if self.what == "prob":
            return f"attention probability (after the softmax) of {n.label}, through {via}"
        return f"attention score of {n.label} through {via}"


# --------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """Set ``node``'s activation at ``site`` to ``fill`` (a number, or a tensor shaped like
    the indexed slice of one prompt)."""

    node: Node
    site: str  # "pattern" (head pairs) | "z" (whole-head output) | "post" | "latent"
    fill: float | torch.Tensor
    how: str  # "zero" | "value" | "mean" | "pattern_mean": for descriptions

    def index(self) -> tuple:
        n, every = self.node, slice(None)
        dest = every if n.dest is None else n.dest
        if self.site == "pattern":  # [batch, head, dest, src]
            return (n.index, dest, every if n.src is None else n.src)
        if self.site == "z":  # [batch, pos, head, d_head]
            return (dest, n.index)
        return (dest, n.index)  # post [batch, pos, neuron], latent [batch, pos, latent]

    @property
    def layer(self) -> int:
        return self.node.layer


def apply_edits(t: torch.Tensor, site: str, layer: int,
                groups: Sequence[tuple[object, Sequence[Edit]]]) -> torch.Tensor:
    """``t`` with the edits of each ``(rows, edits)`` group applied to batch ``rows`` (an int
    or a slice); returns ``t`` itself when nothing applies."""
    todo = [(rows, e) for rows, edits in groups for e in edits
            if e.site == site and e.layer == layer]
    if not todo:
        return t
    t = t.clone()
    for rows, e in todo:
        fill = e.fill.to(t) if isinstance(e.fill, torch.Tensor) else e.fill
        t[(rows, *e.index())] = fill
    return t


def sae_splice(sae, x: torch.Tensor, groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(f, error, f_edited)`` at the SAE's hook: latents, error node ``x − decode(f)``,
    and the latents after the groups' ``latent`` edits."""
    f = sae.encode(x.to(sae.W_enc.dtype)).to(x.dtype)
    error = x - sae.decode(f.to(sae.W_dec.dtype)).to(x.dtype)
    return f, error, apply_edits(f, "latent", sae_layer(sae), groups)


def sae_hook(sae, groups):
    """A forward hook at the SAE's hook point that splices it in with the groups' edits."""
    def hook(x, hook):
        _, error, f = sae_splice(sae, x, groups)
        return sae.decode(f.to(sae.W_dec.dtype)).to(x.dtype) + error
    return hook


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    value: float
    logits: torch.Tensor  # [d_vocab] at the last position
    acts: dict[str, torch.Tensor]  # site -> [n_layers, ...] (no batch)
    grads: dict[str, torch.Tensor]
    final_scale: float


def hooked_run(model, tokens: torch.Tensor, target, edits: Sequence[Edit] = (), *,
               sae=None, need_grad: bool = True) -> Run:
    """One forward + one backward pass; activations and d(target)/d(activation) everywhere.
    ``need_grad=False``: the forward pass only (value and logits; no activations, no grads)."""
    n_layers = model.cfg.n_layers
    groups = [(slice(None), tuple(edits))]
    s_layer = None if sae is None else sae_layer(sae)
    deltas: dict[tuple[str, int], torch.Tensor] = {}
    acts: dict[tuple[str, int], torch.Tensor] = {}
    keep: dict[str, torch.Tensor] = {}
    node_target = target if isinstance(target, NodeTarget) else None
    t_layer = stop = None
    if node_target is not None and node_target.node.kind == "head":
        t_layer, through = node_target.node.layer, node_target.through
        stop = {"q": through in ("k", "v"), "k": through in ("q", "v"), "v": through != "v"}

    def with_delta(site, layer, t):
        if not need_grad:
            return t
        d = torch.zeros_like(t, requires_grad=True)
        deltas[(site, layer)] = d
        acts[(site, layer)] = t.detach()[0]
        return t + d

    def make(site: str, layer: int):
        def hook(t, hook):
            t = apply_edits(t, site, layer, groups)
            if site in DELTA_SITES or site in ("embed", "pos_embed"):
                t = with_delta(site, layer, t)
            if site == "resid_pre" and layer == s_layer:  # after the delta: its gradient is
                # the gradient at the SAE's input, identical downstream of it
                f_clean, error, f = sae_splice(sae, t, groups)
                if need_grad:
                    acts[("latent_clean", layer)] = f_clean.detach()[0]
                f = with_delta("latent", layer, f)
                keep["latent"] = f
                error = with_delta("sae_error", layer, error)
                t = sae.decode(f.to(sae.W_dec.dtype)).to(t.dtype) + error
            if site == "v" and need_grad:
                acts[(site, layer)] = t.detach()[0]
            if layer == t_layer and site in stop and stop[site]:
                t = t.detach()
            if layer == t_layer and site in ("attn_scores", "v", "pattern"):
                keep[site] = t
            if node_target is not None and node_target.node.kind == "neuron" and \
                    layer == node_target.node.layer and site == "post":
                keep["post"] = t
            return t

        return hook

    hooks = [(hook_name("embed"), make("embed", -1)),
             (hook_name("pos_embed"), make("pos_embed", -1))]
    for L in range(n_layers):
        for site in (*DELTA_SITES, *_READ_SITES):
            hooks.append((hook_name(site, L), make(site, L)))
    scale_store = {}

    def grab_scale(t, hook):
        scale_store["s"] = t.detach()[0, -1].reshape(-1)[0]
        return t

    hooks.append((hook_name("final_scale"), grab_scale))
    with torch.set_grad_enabled(need_grad):
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        last = logits[0, -1]
        value = _target_value(model, target, last, keep)
        scale = float(scale_store.get("s", float("nan")))
        if not need_grad:
            return Run(float(value), last.detach(), {}, {}, scale)
        keys = list(deltas)
        grads = torch.autograd.grad(value, [deltas[k] for k in keys], allow_unused=True)
    grad_map = {k: (torch.zeros_like(deltas[k]) if g is None else g)[0]
                for k, g in zip(keys, grads)}
    out_acts, out_grads = {}, {}
    for s in (*DELTA_SITES, "v"):
        out_acts[s] = torch.stack([acts[(s, L)] for L in range(n_layers)])
        if s != "v":
            out_grads[s] = torch.stack([grad_map[(s, L)] for L in range(n_layers)])
    for s in ("embed", "pos_embed"):
        out_acts[s], out_grads[s] = acts[(s, -1)], grad_map[(s, -1)]
    if s_layer is not None:
        for s in ("latent", "sae_error"):
            out_acts[s], out_grads[s] = acts[(s, s_layer)], grad_map[(s, s_layer)]
        out_acts["latent_clean"] = acts[("latent_clean", s_layer)]
    return Run(float(value.detach()), last.detach(), out_acts, out_grads, scale)


def _target_value(model, target, last, keep) -> torch.Tensor:
    if isinstance(target, LogitTarget):
        return last[target.target] - last[target.distractor]
    node = target.node
    if node.kind == "neuron":
        return keep["post"][0, node.dest, node.index]
    if node.kind == "latent":
        return keep["latent"][0, node.dest, node.index]
    if target.through == "v":
        W_O = weights(model)["W_O"][node.layer, node.index]
        write = keep["pattern"][0, node.index, node.dest, node.src].detach() * (
            keep["v"][0, node.src, node.index] @ W_O.to(keep["v"].dtype))
        return write @ target.direction.to(write)
    if target.what == "prob":
        return keep["pattern"][0, node.index, node.dest, node.src]
    score = keep["attn_scores"][0, node.index, node.dest]
    if target.what == "score_diff":
        return score[node.src] - score[target.versus]
    return score[node.src]
