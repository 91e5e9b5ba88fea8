"""Debugging one prediction, the Transformer Debugger's way, in a notebook.

OpenAI's Transformer Debugger (TDB, Mossing et al. 2024) asks "why token A rather than
token B?" of one prompt. :class:`Debugger` answers with the same quantities:

* the **direction of interest** ``W_U[:, target] − W_U[:, distractor]``; its value is the
  logit difference;
* a **node table**: every attention head at every (destination, source) token pair and every
  MLP neuron at every token, plus the embeddings and the biases, with

  - ``activation``: the attention probability (heads) or the post-GELU value (neurons);
  - ``write_norm``: the norm of what the node adds to the residual stream;
  - ``direct_effect``: that write projected on the direction of interest through the final
    LayerNorm (its scale held at its value on this run), so the column sums to the logit
    difference exactly (embeddings and biases included);
  - ``est_total_effect``: activation × d(target)/d(activation), TDB's "estimated total
    effect": the first-order effect of zeroing the node, direct and indirect paths together;

* **ablations** (``zero`` as TDB; ``mean`` over reference prompts as the IOI chapter), which
  give a new :class:`Debugger` with its own logit difference and table;
* **trace upstream** from a node through its query, key, both, or value: the node's activation
  (its attention score for Q/K, its write along the downstream gradient for V, its value for a
  neuron) becomes the target and the table re-ranks the nodes before it;
* **two-prompt mode**: :func:`compare` puts two debuggers' tables side by side with the
  difference.

Everything goes through the TransformerLens bridge's hooks: each hooked activation gets a
zero tensor added that requires a gradient, and ``torch.autograd.grad`` of the target with
respect to those zeros gives d(target)/d(activation). No forward pass is written by hand.

A **node** is named by a label: ``"H9.9 14<-4"`` (head 9.9, destination 14, source 4; ``←``
works too), ``"H9.9"`` (every pair of the head, for ablations), ``"N5.1234@7"`` (neuron 1234
of layer 5 at position 7) or ``"N5.1234"`` (every position).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .models import CasebookError

__all__ = [
    "Debugger",
    "DebuggerInputError",
    "Node",
    "parse_node",
    "compare",
    "rank_correlation",
    "ablation_effects",
    "ReluSAE",
    "latent_table",
    "top_activating_snippets",
    "TRACE_MODES",
]

TRACE_MODES = ("q", "k", "qk", "v")
_WEIGHTS = weakref.WeakKeyDictionary()
KINDS = ("head", "neuron", "embed", "bias")
COLUMNS = ("activation", "write_norm", "direct_effect", "est_total_effect")


class DebuggerInputError(CasebookError, ValueError):
    """A prompt, token or node the debugger cannot use (the message says which and why)."""


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Node:
    """A head (at a token pair, or all pairs) or an MLP neuron (at a token, or all)."""

    kind: str  # "head" | "neuron"
    layer: int
    index: int  # head or neuron number
    dest: int | None = None  # destination token (heads) or token (neurons); None = all
    src: int | None = None  # source token (heads); None = all

    @property
    def label(self) -> str:
        if self.kind == "head":
            pair = "" if self.dest is None else f" {self.dest}<-{self.src}"
            return f"H{self.layer}.{self.index}{pair}"
        at = "" if self.dest is None else f"@{self.dest}"
        return f"N{self.layer}.{self.index}{at}"

    def __str__(self) -> str:
        return self.label


_HEAD_RE = re.compile(r"^H(\d+)\.(\d+)(?:\s+(\d+)\s*(?:<-|←)\s*(\d+))?$")
_NEURON_RE = re.compile(r"^N(\d+)\.(\d+)(?:\s*@\s*(\d+))?$")


def parse_node(spec: Any, model, n_tokens: int) -> Node:
    """A :class:`Node` from a label, a ``Node`` or a node-table row; checked to exist."""
    if isinstance(spec, pd.Series):
        spec = spec["node"] if "node" in spec else spec.name
    if isinstance(spec, Node):
        node = spec
    elif isinstance(spec, str):
        text = spec.strip()
        m = _HEAD_RE.match(text)
        n = _NEURON_RE.match(text)
        if m:
            dest, src = (None, None) if m.group(3) is None else (int(m.group(3)), int(m.group(4)))
            node = Node("head", int(m.group(1)), int(m.group(2)), dest, src)
        elif n:
            node = Node("neuron", int(n.group(1)), int(n.group(2)),
                        None if n.group(3) is None else int(n.group(3)))
        else:
            raise DebuggerInputError(
                f"Cannot read node {spec!r}: write heads as 'H<layer>.<head>' or "
                f"'H<layer>.<head> <dest><-<src>', neurons as 'N<layer>.<neuron>' or "
                f"'N<layer>.<neuron>@<position>'."
            )
    else:
        raise DebuggerInputError(f"A node is a label, a Node or a table row, not {type(spec).__name__}.")
    cfg = model.cfg
    size = cfg.n_heads if node.kind == "head" else cfg.d_mlp
    problems = []
    if not 0 <= node.layer < cfg.n_layers:
        problems.append(f"layer {node.layer} (the model has {cfg.n_layers})")
    if not 0 <= node.index < size:
        problems.append(f"{node.kind} {node.index} (each layer has {size})")
    if node.dest is not None and not 0 <= node.dest < n_tokens:
        problems.append(f"position {node.dest} (the prompt has {n_tokens} tokens)")
    if node.kind == "head" and node.dest is not None and not 0 <= node.src <= node.dest:
        problems.append(f"source {node.src} (a head at {node.dest} reads positions 0..{node.dest})")
    if problems:
        raise DebuggerInputError(f"Node {node.label!r} does not exist: no " + "; no ".join(problems) + ".")
    return node


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class _LogitTarget:
    target: int
    distractor: int

    def describe(self, model) -> str:
        return f"logit({model.to_string([self.target])!r}) − logit({model.to_string([self.distractor])!r})"


@dataclass(frozen=True)
class _NodeTarget:
    node: Node
    through: str  # "q" | "k" | "qk" | "v" | "input" (neurons)
    direction: torch.Tensor | None = None  # V traces: the downstream gradient at the head's output

    def describe(self, model) -> str:
        what = {"q": "its query", "k": "its key", "qk": "its query and key", "v": "its value",
                "input": "its input"}[self.through]
        if self.node.kind == "head":
            return f"attention score of {self.node.label} through {what}" if self.through != "v" else (
                f"write of {self.node.label} along the downstream gradient, through {what}")
        return f"activation of {self.node.label}"


# --------------------------------------------------------------------------- the hooked run


@dataclass
class _Ablation:
    nodes: tuple[Node, ...]
    how: str  # "zero" | "mean"
    means: dict[str, torch.Tensor] = field(default_factory=dict)  # hook name -> mean activation

    def apply(self, name: str, t: torch.Tensor, layer: int, site: str) -> torch.Tensor:
        chosen = [n for n in self.nodes if n.layer == layer and
                  ((site == "pattern" and n.kind == "head") or (site == "post" and n.kind == "neuron"))]
        if not chosen:
            return t
        t = t.clone()
        fill = self.means.get(name)
        for n in chosen:
            if site == "pattern":  # [batch, head, dest, src]
                idx = (slice(None), n.index, slice(None) if n.dest is None else n.dest,
                       slice(None) if n.src is None else n.src)
            else:  # [batch, pos, neuron]
                idx = (slice(None), slice(None) if n.dest is None else n.dest, n.index)
            t[idx] = 0.0 if fill is None else fill.to(t)[(0, *idx[1:])]
        return t


def _weights(model) -> dict[str, torch.Tensor]:
    """The bridge's stacked weights, read once per model (each property access rebuilds them)."""
    cache = _WEIGHTS.get(model)
    if cache is None:
        cache = {name: getattr(model, name).detach() for name in ("W_O", "W_out", "W_U", "b_O", "b_out")}
        b_U = getattr(model, "b_U", None)
        cache["b_U"] = None if b_U is None else b_U.detach()
        _WEIGHTS[model] = cache
    return cache


def _names(model, layer: int) -> dict[str, str]:
    from .hooks import hook_name

    return {site: hook_name(site, layer) for site in (
        "pattern", "post", "v", "q", "k", "attn_scores", "resid_pre", "resid_mid", "attn_out", "mlp_out")}


_DELTA_SITES = ("pattern", "post", "resid_pre", "resid_mid", "attn_out", "mlp_out")


@dataclass
class _Run:
    value: float
    logits: torch.Tensor  # [d_vocab] at the last position
    acts: dict[str, torch.Tensor]  # site -> [n_layers, ...] (no batch)
    grads: dict[str, torch.Tensor]
    final_scale: float


def _hooked_run(model, tokens: torch.Tensor, target, ablation: _Ablation | None, *,
                need_grad: bool = True) -> _Run:
    """One forward + one backward pass; activations and d(target)/d(activation) everywhere.
    ``need_grad=False``: the forward pass only (value and logits; no activations, no grads)."""
    from .hooks import hook_name

    n_layers = model.cfg.n_layers
    deltas: dict[tuple[str, int], torch.Tensor] = {}
    acts: dict[tuple[str, int], torch.Tensor] = {}
    keep: dict[str, torch.Tensor] = {}
    stop_q = stop_k = stop_v = False
    t_layer = None
    if isinstance(target, _NodeTarget) and target.node.kind == "head":
        t_layer = target.node.layer
        stop_k = target.through in ("q", "v")
        stop_q = target.through in ("k", "v")
        stop_v = target.through != "v"

    def make(site: str, layer: int, name: str):
        def hook(t, hook):
            if ablation is not None:
                t = ablation.apply(name, t, layer, site)
            if need_grad and (site in _DELTA_SITES or site in ("embed", "pos_embed")):
                d = torch.zeros_like(t, requires_grad=True)
                deltas[(site, layer)] = d
                acts[(site, layer)] = t.detach()[0]
                t = t + d
            if site == "v":
                acts[(site, layer)] = t.detach()[0]
            if layer == t_layer and ((site == "q" and stop_q) or (site == "k" and stop_k)
                                     or (site == "v" and stop_v)):
                t = t.detach()
            if layer == t_layer and site in ("attn_scores", "v", "pattern"):
                keep[site] = t
            if isinstance(target, _NodeTarget) and target.node.kind == "neuron" and \
                    layer == target.node.layer and site == "post":
                keep["post"] = t
            return t

        return hook

    hooks = [(hook_name("embed"), make("embed", -1, "embed")),
             (hook_name("pos_embed"), make("pos_embed", -1, "pos_embed"))]
    for L in range(n_layers):
        for site, name in _names(model, L).items():
            hooks.append((name, make(site, L, name)))
    scale_store = {}

    def grab_scale(t, hook):
        scale_store["s"] = t.detach()[0, -1].reshape(-1)[0]
        return t

    from .hooks import hook_name

    hooks.append((hook_name("final_scale"), grab_scale))
    with torch.set_grad_enabled(need_grad):
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        last = logits[0, -1]
        if isinstance(target, _LogitTarget):
            value = last[target.target] - last[target.distractor]
        else:
            node = target.node
            if node.kind == "neuron":
                value = keep["post"][0, node.dest, node.index]
            elif target.through == "v":
                write = keep["pattern"][0, node.index, node.dest, node.src].detach() * (
                    keep["v"][0, node.src, node.index] @ _weights(model)["W_O"][node.layer, node.index])
                value = write @ target.direction.to(write)
            else:
                value = keep["attn_scores"][0, node.index, node.dest, node.src]
        if not need_grad:
            return _Run(float(value), last.detach(), {}, {}, float(scale_store.get("s", float("nan"))))
        keys = list(deltas)
        grads = torch.autograd.grad(value, [deltas[k] for k in keys], allow_unused=True)
    grad_map = {k: (torch.zeros_like(deltas[k]) if g is None else g)[0] for k, g in zip(keys, grads)}

    def stack(store, site):
        return torch.stack([store[(site, L)] for L in range(n_layers)])

    out_acts = {s: stack(acts, s) for s in (*_DELTA_SITES, "v")}
    out_grads = {s: stack(grad_map, s) for s in _DELTA_SITES}
    for s in ("embed", "pos_embed"):
        out_acts[s], out_grads[s] = acts[(s, -1)], grad_map[(s, -1)]
    return _Run(float(value.detach()), last.detach(), out_acts, out_grads,
                float(scale_store.get("s", torch.tensor(float("nan")))))


# --------------------------------------------------------------------------- the debugger


def _single_token(model, token, role: str) -> int:
    if isinstance(token, (int, np.integer)):
        if not 0 <= int(token) < model.cfg.d_vocab:
            raise DebuggerInputError(f"The {role} token id {token} is outside the vocabulary.")
        return int(token)
    ids = model.to_tokens(token, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = model.to_str_tokens(token, prepend_bos=False)
        raise DebuggerInputError(
            f"The {role} {token!r} is {len(ids)} tokens ({pieces}); the debugger compares two "
            f"single next tokens. Choose a word that is one token (usually with a leading space)."
        )
    return ids[0]


class Debugger:
    """One prompt, a target and a distractor token: the TDB investigation of one prediction.

    ``Debugger(model, " When Mary and John ... to", " Mary", " John")``. ``prompt`` is a string
    (tokenised without BOS unless ``prepend_bos``) or a 1-D token tensor.
    """

    def __init__(self, model, prompt, target, distractor, *, prepend_bos: bool = False,
                 _target_spec=None, _ablation: _Ablation | None = None):
        self.model = model
        if isinstance(prompt, str):
            tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        else:
            tokens = torch.as_tensor(prompt).reshape(1, -1)
        if tokens.shape[1] < 1:
            raise DebuggerInputError("The prompt is empty.")
        self.tokens = tokens.long().to(model.cfg.device)
        self.prompt = prompt if isinstance(prompt, str) else model.to_string(self.tokens[0])
        self.target_id = _single_token(model, target, "target")
        self.distractor_id = _single_token(model, distractor, "distractor")
        if self.target_id == self.distractor_id:
            raise DebuggerInputError(
                f"The target and the distractor are the same token ({model.to_string([self.target_id])!r}): "
                f"the direction of interest would be zero. Pick two different tokens."
            )
        self.prepend_bos = prepend_bos
        self._target = _target_spec or _LogitTarget(self.target_id, self.distractor_id)
        self._ablation = _ablation
        self._run_cache: _Run | None = None
        self._forward_cache: _Run | None = None
        self._frame: pd.DataFrame | None = None

    # ----------------------------------------------------------------- basics
    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def str_tokens(self) -> list[str]:
        return [self.model.to_string([t]) for t in self.tokens[0].tolist()]

    @property
    def _run(self) -> _Run:
        if self._run_cache is None:
            self._run_cache = _hooked_run(self.model, self.tokens, self._target, self._ablation)
        return self._run_cache

    @property
    def target_description(self) -> str:
        return self._target.describe(self.model)

    @property
    def _forward(self) -> _Run:
        """The run without gradients, for the value alone (ablation sweeps)."""
        if self._run_cache is not None:
            return self._run_cache
        if self._forward_cache is None:
            self._forward_cache = _hooked_run(self.model, self.tokens, self._target, self._ablation, need_grad=False)
        return self._forward_cache

    @property
    def value(self) -> float:
        """The current target's value: the logit difference, or the traced node's activation."""
        return self._forward.value

    @property
    def logit_diff(self) -> float:
        """logit(target) − logit(distractor) at the last token (on this run's ablations)."""
        last = self._forward.logits
        return float(last[self.target_id] - last[self.distractor_id])

    def top_candidates(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` most likely next tokens, with logit and probability."""
        logits = self._forward.logits.float()
        probs = logits.softmax(-1)
        top = logits.topk(k).indices.tolist()
        return pd.DataFrame({
            "token": [repr(self.model.to_string([i])) for i in top],
            "logit": [float(logits[i]) for i in top],
            "prob": [float(probs[i]) for i in top],
        }, index=pd.RangeIndex(1, k + 1, name="rank"))

    def node(self, spec) -> Node:
        """A checked :class:`Node` from a label, ``Node`` or table row."""
        return parse_node(spec, self.model, self.n_tokens)

    # ----------------------------------------------------------------- the node table
    def _direction_grid(self) -> tuple[torch.Tensor, int | None, str | None]:
        """``[seq, d_model]``: what a write at each position is dotted with for the direct effect;
        the layer and site of the target's read-in (None for the logits)."""
        run, model = self._run, self.model
        if isinstance(self._target, _LogitTarget):
            W_U = _weights(model)["W_U"]
            d = (W_U[:, self.target_id] - W_U[:, self.distractor_id]).float()
            d = (d - d.mean()) / run.final_scale
            grid = torch.zeros(self.n_tokens, d.shape[0], device=d.device)
            grid[-1] = d
            return grid, None, None
        node = self._target.node
        site = "resid_pre" if node.kind == "head" else "resid_mid"
        return run.grads[site][node.layer].float(), node.layer, site

    def frame(self) -> pd.DataFrame:
        """Every node (all heads × token pairs, all neurons × tokens, embeddings, biases)."""
        if self._frame is None:
            self._frame = self._build_frame()
        return self._frame

    @torch.no_grad()
    def _build_frame(self) -> pd.DataFrame:
        model, run = self.model, self._run
        cfg = model.cfg
        S, H, Lmax = self.n_tokens, cfg.n_heads, cfg.n_layers
        grid, t_layer, t_site = self._direction_grid()
        limit_heads = Lmax if t_layer is None else (t_layer if t_site == "resid_pre" else t_layer + 1)
        limit_neurons = Lmax if t_layer is None else t_layer
        parts = []
        # heads by token pair
        pattern = run.acts["pattern"][:limit_heads].float()  # [L, H, dest, src]
        if limit_heads:
            v = run.acts["v"][:limit_heads].float()  # [L, src, H, dh]
            vo = torch.einsum("lshd,lhdm->lshm", v, _weights(model)["W_O"][:limit_heads].float())  # [L, src, H, d]
            vo_dot = torch.einsum("lshm,tm->lhts", vo, grid)  # [L, H, dest, src]
            L_, h_, d_, s_ = torch.meshgrid(*(torch.arange(n) for n in pattern.shape), indexing="ij")
            keep = (s_ <= d_).reshape(-1)
            norm = vo.norm(dim=-1).permute(0, 2, 1)[:, :, None, :]  # [L, H, 1, src]
            cols = {
                "kind": "head", "layer": L_.reshape(-1)[keep], "index": h_.reshape(-1)[keep],
                "dest": d_.reshape(-1)[keep], "src": s_.reshape(-1)[keep],
                "activation": pattern.reshape(-1)[keep],
                "write_norm": (pattern.abs() * norm).reshape(-1)[keep],
                "direct_effect": (pattern * vo_dot).reshape(-1)[keep],
                "est_total_effect": (pattern * run.grads["pattern"][:limit_heads].float()).reshape(-1)[keep],
            }
            parts.append(_to_frame(cols))
        if limit_neurons:
            post = run.acts["post"][:limit_neurons].float()  # [L, pos, N]
            W_out = _weights(model)["W_out"][:limit_neurons].float()  # [L, N, d]
            out_dot = torch.einsum("lnm,pm->lpn", W_out, grid)
            L_, p_, n_ = torch.meshgrid(*(torch.arange(n) for n in post.shape), indexing="ij")
            cols = {
                "kind": "neuron", "layer": L_.reshape(-1), "index": n_.reshape(-1),
                "dest": p_.reshape(-1), "src": torch.full((post.numel(),), -1),
                "activation": post.reshape(-1),
                "write_norm": (post.abs() * W_out.norm(dim=-1)[:, None, :]).reshape(-1),
                "direct_effect": (post * out_dot).reshape(-1),
                "est_total_effect": (post * run.grads["post"][:limit_neurons].float()).reshape(-1),
            }
            parts.append(_to_frame(cols))
        emb = (run.acts["embed"] + run.acts["pos_embed"]).float()  # [pos, d]
        emb_grad = run.grads["embed"].float()
        parts.append(_to_frame({
            "kind": "embed", "layer": torch.full((S,), -1), "index": torch.zeros(S, dtype=torch.long),
            "dest": torch.arange(S), "src": torch.full((S,), -1),
            "activation": torch.full((S,), float("nan")), "write_norm": emb.norm(dim=-1),
            "direct_effect": (emb * grid).sum(-1), "est_total_effect": (emb * emb_grad).sum(-1),
        }))
        bias_rows = []
        for L in range(Lmax):
            for site, b, limit in (("attn_out", _weights(model)["b_O"][L], limit_heads), ("mlp_out", _weights(model)["b_out"][L], limit_neurons)):
                if L >= limit:
                    continue
                b = b.float()
                bias_rows.append(dict(kind="bias", layer=L, index=0 if site == "attn_out" else 1, dest=-1, src=-1,
                                      activation=float("nan"), write_norm=float(b.norm()),
                                      direct_effect=float((grid @ b).sum()),
                                      est_total_effect=float((run.grads[site][L].float() @ b).sum())))
        if isinstance(self._target, _LogitTarget) and _weights(model)["b_U"] is not None:
            bu = float(_weights(model)["b_U"][self.target_id] - _weights(model)["b_U"][self.distractor_id])
            bias_rows.append(dict(kind="bias", layer=Lmax, index=2, dest=-1, src=-1, activation=float("nan"),
                                  write_norm=float("nan"), direct_effect=bu, est_total_effect=bu))
        parts.append(pd.DataFrame(bias_rows))
        frame = pd.concat(parts, ignore_index=True)
        for c in ("layer", "index", "dest", "src"):
            frame[c] = frame[c].astype(np.int64)
        return frame

    def table(self, sort_by: str = "est_total_effect", *, n: int | None = 20,
              kind: str | Sequence[str] | None = ("head", "neuron"), layers=None,
              ascending: bool = False, by_magnitude: bool = True,
              top_tokens: int = 3) -> pd.DataFrame:
        """The node table: ``n`` rows sorted by ``sort_by`` (by |value| unless
        ``by_magnitude=False``), filtered by ``kind`` and ``layers`` (an int, a range or a list).

        Each row is labelled (``node``: pass it to :meth:`ablate` or :meth:`trace`) and, for
        heads and neurons, shows the tokens its write up- and down-votes most through the
        unembedding (``top_tokens`` each; 0 to skip).
        """
        if sort_by not in COLUMNS:
            raise DebuggerInputError(f"sort_by must be one of {COLUMNS}, got {sort_by!r}.")
        frame = self.frame()
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                raise DebuggerInputError(f"kind must be among {KINDS}, got {bad}.")
            frame = frame[frame["kind"].isin(kinds)]
        if layers is not None:
            wanted = [layers] if isinstance(layers, int) else list(layers)
            frame = frame[frame["layer"].isin(wanted)]
        key = frame[sort_by].abs() if by_magnitude else frame[sort_by]
        order = key.sort_values(ascending=bool(ascending), na_position="last").index
        out = frame.loc[order]
        if n is not None:
            out = out.head(n)
        out = out.copy()
        out.insert(0, "node", [self._label(r) for r in out.itertuples()])
        toks = self.str_tokens
        out.insert(1, "tokens", [self._token_text(r, toks) for r in out.itertuples()])
        if top_tokens:
            ups, downs = self._voted_tokens(out, top_tokens)
            out["up_voted"] = ups
            out["down_voted"] = downs
        return out.reset_index(drop=True)

    @staticmethod
    def _label(r) -> str:
        if r.kind in ("head", "neuron"):
            return Node(r.kind, r.layer, r.index, r.dest, r.src if r.kind == "head" else None).label
        if r.kind == "embed":
            return f"E@{r.dest}"
        return f"b_U" if r.index == 2 else f"{'b_O' if r.index == 0 else 'b_out'}{r.layer}"

    @staticmethod
    def _token_text(r, toks) -> str:
        if r.kind == "head":
            return f"{toks[r.dest]!r} <- {toks[r.src]!r}"
        if r.dest >= 0:
            return repr(toks[r.dest])
        return ""

    @torch.no_grad()
    def _voted_tokens(self, rows: pd.DataFrame, k: int) -> tuple[list[str], list[str]]:
        model = self.model
        writes = []
        for r in rows.itertuples():
            if r.kind == "head":
                L, h, s = r.layer, r.index, r.src
                w = self._run.acts["v"][L, s, h].float() @ _weights(model)["W_O"][L, h].float()
                writes.append(w * float(np.sign(r.activation) or 1.0))
            elif r.kind == "neuron":
                writes.append(_weights(model)["W_out"][r.layer, r.index].float() * float(np.sign(r.activation) or 1.0))
            else:
                writes.append(None)
        ups, downs = [], []
        real = [w for w in writes if w is not None]
        if real:
            logits = torch.stack(real) @ _weights(model)["W_U"].float()
            top = logits.topk(k, dim=-1).indices.tolist()
            bottom = (-logits).topk(k, dim=-1).indices.tolist()
        it = 0
        for w in writes:
            if w is None:
                ups.append("")
                downs.append("")
                continue
            ups.append(", ".join(repr(model.to_string([i])) for i in top[it]))
            downs.append(", ".join(repr(model.to_string([i])) for i in bottom[it]))
            it += 1
        return ups, downs

    # ----------------------------------------------------------------- token effects
    def token_effects(self) -> pd.DataFrame:
        """Per prompt token: summed estimated total effect of the embeddings, the heads (summed
        by *source* token, where the information comes from) and the neurons (by token)."""
        f = self.frame()
        toks = self.str_tokens
        out = pd.DataFrame({"token": toks}, index=pd.RangeIndex(self.n_tokens, name="position"))
        out["embeddings"] = f[f.kind == "embed"].groupby("dest")["est_total_effect"].sum()
        out["attention heads"] = f[f.kind == "head"].groupby("src")["est_total_effect"].sum()
        out["MLP neurons"] = f[f.kind == "neuron"].groupby("dest")["est_total_effect"].sum()
        return out.fillna(0.0)

    def token_effect_view(self, *, mode: str | None = None):
        """circuitsvis view of :meth:`token_effects` (one colour scale per column)."""
        from .display import token_effect_view

        eff = self.token_effects()
        cols = ["embeddings", "attention heads", "MLP neurons"]
        return token_effect_view(list(eff["token"]), eff[cols].to_numpy(), cols, mode=mode)

    # ----------------------------------------------------------------- interventions
    def ablate(self, nodes, *, how: str = "zero", reference=None) -> "Debugger":
        """A new debugger with ``nodes`` ablated: ``how="zero"`` sets each node's activation to
        0 (TDB); ``how="mean"`` to its mean over ``reference`` prompts (``[n, seq]`` tokens of
        this prompt's length, e.g. the IOI chapter's p_ABC). Ablations add up with earlier ones.
        For a head at one token pair the activation is the attention probability, so zeroing
        it removes exactly that pair's write (the other pairs are not renormalised)."""
        if isinstance(nodes, pd.DataFrame):
            nodes = list(nodes["node"])
        elif isinstance(nodes, (str, Node, pd.Series)):
            nodes = [nodes]
        parsed = tuple(self.node(n) for n in nodes)
        if how not in ("zero", "mean"):
            raise DebuggerInputError(f"how must be 'zero' (as TDB) or 'mean' (as the IOI chapter), got {how!r}.")
        means: dict[str, torch.Tensor] = {}
        if how == "mean":
            if reference is None:
                raise DebuggerInputError("Mean ablation needs reference prompts (reference=[n, seq] tokens).")
            ref = torch.as_tensor(reference).long()
            if ref.ndim == 1:
                ref = ref[None]
            if ref.shape[1] != self.n_tokens:
                raise DebuggerInputError(
                    f"Reference prompts have {ref.shape[1]} tokens, this prompt {self.n_tokens}: mean "
                    f"ablation needs the same positions.")
            means = _reference_means(self.model, ref, parsed)
        old = self._ablation
        if old is not None:
            if old.how != how:
                raise DebuggerInputError(
                    f"This debugger already has {old.how} ablations; mixing zero and mean ablations is "
                    f"not supported. Start from the un-ablated debugger.")
            parsed = old.nodes + parsed
            means = {**old.means, **means}
        return Debugger(self.model, self.tokens[0], self.target_id, self.distractor_id,
                        _target_spec=self._target, _ablation=_Ablation(parsed, how, means))

    def trace(self, node, through: str = "qk") -> "Debugger":
        """Trace upstream from ``node``: a debugger whose target is that node's activation.

        Heads (at one token pair): ``through`` = ``"q"``, ``"k"`` or ``"qk"`` makes the target
        the pre-softmax attention score at the pair, with gradients only through the query, the
        key or both; ``"v"`` makes it the pair's write projected on the gradient this debugger's
        target has at the head's output (what the node contributes downstream), with gradients
        only through the value. Neurons (at one token): the target is the neuron's activation.
        The new table lists only the nodes upstream of the traced node.
        """
        n = self.node(node)
        if n.dest is None:
            raise DebuggerInputError(f"Trace a node at one position (e.g. {n.label} 14<-4 or {n.label}@14), "
                                     f"not {n.label!r} at every position.")
        if n.kind == "head":
            if through not in TRACE_MODES:
                raise DebuggerInputError(f"through must be one of {TRACE_MODES} for a head, got {through!r}.")
            direction = self._run.grads["attn_out"][n.layer, n.dest].detach().clone() if through == "v" else None
            spec = _NodeTarget(n, through, direction)
        else:
            if through not in ("qk", "input"):
                raise DebuggerInputError("A neuron has no query, key or value: trace it with through='input'.")
            spec = _NodeTarget(n, "input")
        return Debugger(self.model, self.tokens[0], self.target_id, self.distractor_id,
                        _target_spec=spec, _ablation=self._ablation)

    def __repr__(self) -> str:
        abl = "" if self._ablation is None else f", {len(self._ablation.nodes)} nodes {self._ablation.how}-ablated"
        return f"Debugger({self.prompt!r}, target: {self.target_description}{abl})"


def _to_frame(cols: dict) -> pd.DataFrame:
    return pd.DataFrame({k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in cols.items()})


@torch.no_grad()
def _reference_means(model, ref: torch.Tensor, nodes: Sequence[Node]) -> dict[str, torch.Tensor]:
    from .hooks import capture, hook_name

    names = sorted({hook_name("pattern" if n.kind == "head" else "post", n.layer) for n in nodes})
    _, store = capture(model, ref.to(model.cfg.device), names)
    return {k: v.float().mean(0, keepdim=True) for k, v in store.items()}


# --------------------------------------------------------------------------- two prompts


def compare(left: Debugger, right: Debugger, column: str = "est_total_effect", *, n: int | None = 20,
            kind=("head", "neuron")) -> pd.DataFrame:
    """Two prompts side by side: ``column`` for each and ``diff`` = left − right, by node.

    Both prompts must have the same number of tokens (nodes are matched by position).
    Rows are sorted by |diff|.
    """
    if column not in COLUMNS:
        raise DebuggerInputError(f"column must be one of {COLUMNS}, got {column!r}.")
    if left.n_tokens != right.n_tokens:
        raise DebuggerInputError(
            f"The two prompts have {left.n_tokens} and {right.n_tokens} tokens; two-prompt mode "
            f"matches nodes by position, so they must be the same length.")
    keys = ["kind", "layer", "index", "dest", "src"]
    a, b = left.frame(), right.frame()
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        a, b = a[a.kind.isin(kinds)], b[b.kind.isin(kinds)]
    merged = a[keys + [column]].merge(b[keys + [column]], on=keys, how="outer", suffixes=("_left", "_right"))
    merged = merged.fillna({f"{column}_left": 0.0, f"{column}_right": 0.0})
    merged["diff"] = merged[f"{column}_left"] - merged[f"{column}_right"]
    merged = merged.loc[merged["diff"].abs().sort_values(ascending=False).index]
    if n is not None:
        merged = merged.head(n)
    merged.insert(0, "node", [Debugger._label(r) for r in merged.itertuples()])
    return merged.reset_index(drop=True)


# --------------------------------------------------------------------------- how good are the estimates


def ablation_effects(dbg: Debugger, nodes, *, batch: int = 16) -> pd.DataFrame:
    """For each node: its estimated total effect and the actual effect of zero-ablating it
    alone (target value before − after). The ablated runs are batched, ``batch`` copies of the
    prompt per forward pass, each copy with one node zeroed (on top of ``dbg``'s ablations)."""
    labels = list(nodes["node"]) if isinstance(nodes, pd.DataFrame) else [dbg.node(n).label for n in nodes]
    parsed = [dbg.node(label) for label in labels]
    frame = dbg.frame()
    estimates = []
    for node in parsed:
        sel = frame[(frame.kind == node.kind) & (frame.layer == node.layer) & (frame["index"] == node.index)]
        if node.dest is not None:
            sel = sel[sel.dest == node.dest]
        if node.kind == "head" and node.src is not None:
            sel = sel[sel.src == node.src]
        estimates.append(float(sel["est_total_effect"].sum()))
    base = dbg.value
    if isinstance(dbg._target, _LogitTarget):
        after = []
        for i in range(0, len(parsed), batch):
            after.extend(_batched_zero_ablation(dbg, parsed[i:i + batch]))
    else:
        after = [dbg.ablate(label).value for label in labels]
    return pd.DataFrame({"node": labels, "kind": [n.kind for n in parsed], "estimated": estimates,
                         "actual": [base - a for a in after]})


@torch.no_grad()
def _batched_zero_ablation(dbg: Debugger, nodes: Sequence[Node]) -> list[float]:
    """logit(target) − logit(distractor) with each node zeroed in its own copy of the prompt."""
    from .hooks import hook_name, logits_at_positions

    model, k = dbg.model, len(nodes)
    hooks = []
    for layer in range(model.cfg.n_layers):
        for site, kind in (("pattern", "head"), ("post", "neuron")):
            rows = [(r, n) for r, n in enumerate(nodes) if n.kind == kind and n.layer == layer]
            name = hook_name(site, layer)
            if not rows and not (dbg._ablation and any(
                    n.kind == kind and n.layer == layer for n in dbg._ablation.nodes)):
                continue

            def hook(t, hook, rows=rows, site=site, layer=layer, name=name):
                if dbg._ablation is not None:
                    t = dbg._ablation.apply(name, t, layer, site)
                t = t.clone()
                for r, n in rows:
                    every = slice(None)
                    if site == "pattern":
                        t[r, n.index, every if n.dest is None else n.dest, every if n.src is None else n.src] = 0.0
                    else:
                        t[r, every if n.dest is None else n.dest, n.index] = 0.0
                return t

            hooks.append((name, hook))
    logits = logits_at_positions(model, dbg.tokens.repeat(k, 1), None, fwd_hooks=hooks)
    return (logits[:, dbg.target_id] - logits[:, dbg.distractor_id]).float().tolist()


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties), without scipy."""
    x = pd.Series(np.asarray(x, dtype=float))
    y = pd.Series(np.asarray(y, dtype=float))
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("rank_correlation needs two sequences of the same length ≥ 2.")
    rx, ry = x.rank().to_numpy(), y.rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------- latents


class ReluSAE(torch.nn.Module):
    """A ReLU sparse autoencoder ``f = ReLU((x − b_dec) W_enc + b_enc)``, ``x̂ = f W_dec + b_dec``.

    Weights named as in the common SAE file layout (``W_enc [d_in, d_sae]``, ``b_enc``,
    ``W_dec [d_sae, d_in]``, ``b_dec``). :meth:`from_files` reads a trained one from a
    ``cfg.json`` and a ``sae_weights.safetensors`` (the layout of Joseph Bloom's GPT-2 SAEs on
    the Hugging Face hub) without any SAE library; :meth:`untrained` builds one with random
    weights of a given shape, for showing the pipeline offline: its latents mean nothing.
    ``apply_b_dec_to_input=False`` drops the ``− b_dec`` before encoding, for SAEs trained so.
    """

    def __init__(self, W_enc, b_enc, W_dec, b_dec, *, hook_name: str, trained: bool,
                 apply_b_dec_to_input: bool = True):
        super().__init__()
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = W_enc, b_enc, W_dec, b_dec
        self.hook_name = hook_name
        self.trained = trained
        self.apply_b_dec_to_input = apply_b_dec_to_input

    @classmethod
    def untrained(cls, d_in: int, d_sae: int, *, hook_name: str, seed: int = 0) -> "ReluSAE":
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        return cls(W_dec.T.clone(), torch.full((d_sae,), -0.5), W_dec, torch.zeros(d_in),
                   hook_name=hook_name, trained=False)

    @classmethod
    def from_files(cls, cfg_path, weights_path, *, device="cpu") -> "ReluSAE":
        """A trained SAE from its ``cfg.json`` and ``sae_weights.safetensors``.

        Reads the config keys of either naming (``hook_name``/``hook_point``,
        ``activation_fn_str``/``activation_fn``) and refuses, with a clear error, what this
        class cannot represent: a non-ReLU activation, a non-standard architecture, input
        normalisation. A per-latent ``scaling_factor`` is folded into ``W_dec``.
        """
        import json

        from safetensors.torch import load_file

        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        arch = cfg.get("architecture", "standard")
        norm = cfg.get("normalize_activations", "none")
        if act != "relu" or arch != "standard" or norm not in (None, False, "none"):
            raise ValueError(
                f"{cfg_path}: activation {act!r}, architecture {arch!r}, input normalisation "
                f"{norm!r}; ReluSAE reads only plain ReLU SAEs without input normalisation.")
        hook = cfg.get("hook_name") or cfg.get("hook_point")
        if not hook:
            raise ValueError(f"{cfg_path} names no hook (neither 'hook_name' nor 'hook_point').")
        state = load_file(str(weights_path), device=str(device))
        missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in state]
        if missing:
            raise ValueError(f"{weights_path} lacks {missing}; it has {sorted(state)}.")
        W_enc, b_enc, W_dec, b_dec = (state[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
        d_in, d_sae = W_enc.shape
        shapes_ok = (tuple(W_dec.shape) == (d_sae, d_in) and b_enc.shape == (d_sae,)
                     and b_dec.shape == (d_in,))
        if not shapes_ok or cfg.get("d_in", d_in) != d_in or cfg.get("d_sae", d_sae) != d_sae:
            raise ValueError(
                f"{weights_path}: shapes W_enc {tuple(W_enc.shape)}, W_dec {tuple(W_dec.shape)}, "
                f"b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)} do not fit together "
                f"or the config's d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}.")
        if "scaling_factor" in state:  # decode((f * s)) = f @ (s[:, None] * W_dec)
            W_dec = W_dec * state["scaling_factor"].float()[:, None]
        return cls(W_enc, b_enc, W_dec, b_dec, hook_name=hook, trained=True,
                   apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec


@torch.no_grad()
def latent_table(dbg: Debugger, sae, layer: int, *, n: int = 20, hook: str = "resid_pre") -> tuple[pd.DataFrame, float]:
    """The node table for a residual-stream SAE's latents at ``hook`` of ``layer``.

    Each latent at each token: activation, write norm (activation × ‖decoder row‖) and the
    estimated total effect activation × (decoder row · d(target)/d(residual)). The residual is
    read from the debugger's run; the SAE is not spliced in, so its reconstruction error (the
    returned fraction of variance unexplained) is left out of the latents' sum.
    Returns ``(table, fraction of variance unexplained)``.
    """
    if hook not in ("resid_pre", "resid_mid"):
        raise DebuggerInputError(f"latent_table reads 'resid_pre' or 'resid_mid', not {hook!r}.")
    run = dbg._run
    x = run.acts[hook][layer].float()  # [pos, d]
    g = run.grads[hook][layer].float()
    W_dec = sae.W_dec.float().to(x.device)
    f = sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)).float().to(x.device)  # [pos, d_sae]
    recon = f @ W_dec + sae.b_dec.float().to(x.device)
    fvu = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    est = f * (g @ W_dec.T)  # [pos, d_sae]
    flat = est.abs().reshape(-1)
    k = min(n, int((f > 0).sum()))
    top = flat.topk(k).indices if k else torch.zeros(0, dtype=torch.long)
    pos, lat = top // f.shape[1], top % f.shape[1]
    toks = dbg.str_tokens
    norms = W_dec.norm(dim=-1)
    table = pd.DataFrame({
        "node": [f"L{layer}.{int(i)}@{int(p)}" for p, i in zip(pos, lat)],
        "token": [repr(toks[int(p)]) for p in pos],
        "activation": f[pos, lat].cpu().numpy(),
        "write_norm": (f[pos, lat] * norms[lat]).cpu().numpy(),
        "est_total_effect": est[pos, lat].cpu().numpy(),
    })
    return table, fvu


# --------------------------------------------------------------------------- dataset examples


@torch.no_grad()
def top_activating_snippets(model, text: str, neurons: Sequence, *, k: int = 3, chunk: int = 128,
                            context: int = 8) -> pd.DataFrame:
    """Each neuron's ``k`` highest activations over ``text`` (cut in ``chunk``-token pieces),
    with the ``context`` tokens before it and the max token in ⟦brackets⟧.

    ``neurons``: labels ``"N<layer>.<neuron>"`` (any position suffix is ignored) or Nodes.
    """
    from .hooks import StopForward, hook_name

    ids = model.to_tokens(text, prepend_bos=False)[0]
    if ids.numel() < 2:
        raise DebuggerInputError("The text sample is empty.")
    pieces = [ids[i:i + chunk] for i in range(0, ids.numel(), chunk)]
    parsed = []
    for spec in neurons:
        node = parse_node(spec if not isinstance(spec, str) else spec.split("@")[0], model, 10**9)
        if node.kind != "neuron":
            raise DebuggerInputError(f"top_activating_snippets takes neurons, got {node.label!r}.")
        parsed.append(node)
    layers = sorted({n.layer for n in parsed})
    acts = {L: [] for L in layers}
    for piece in pieces:
        store = {}

        def save(t, hook):
            store[hook.name] = t.detach()[0].float().cpu()
            if len(store) == len(layers):
                raise StopForward  # the layers above are not needed

        try:
            model.run_with_hooks(piece[None].to(model.cfg.device),
                                 fwd_hooks=[(hook_name("post", L), save) for L in layers])
        except StopForward:
            pass
        for L in layers:
            acts[L].append(store[hook_name("post", L)])
    all_ids = torch.cat(pieces).tolist()
    rows = []
    for node in parsed:
        a = torch.cat(acts[node.layer])[:, node.index]
        for rank, i in enumerate(a.topk(min(k, a.numel())).indices.tolist(), 1):
            before = model.to_string(all_ids[max(0, i - context):i])
            rows.append({"neuron": f"N{node.layer}.{node.index}", "rank": rank, "activation": float(a[i]),
                         "snippet": f"{before}⟦{model.to_string([all_ids[i]])}⟧"})
    return pd.DataFrame(rows)
