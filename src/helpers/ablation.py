"""Mean ablation of attention heads and circuit evaluation (Wang et al. 2022, §4).

* :func:`head_means`: the mean of every head's output ``z`` at every position over a
  reference distribution (e.g. p_ABC), optionally **per group** (e.g. per template: the mean
  is taken within each group, position by position, so prompts of a group must share their
  layout; the paper's ``mean_by_groups``).
* :func:`run_with_mean_ablation`: a hooked run replacing chosen (prompt, position, layer,
  head) entries of ``z`` by those means.
* Circuits. A circuit (or any set of nodes) is a dict ``{(layer, head): positions}``; the
  positions are those the head keeps (``None`` = all positions; otherwise any form accepted
  by :func:`helpers.patching.position_mask`: an int, a ``[batch]`` tensor of one position
  per prompt, ``[batch, k]``, a bool mask, a name such as ``"END"`` looked up in
  ``named_positions``, or a list of these). A *node* is one (head, position) pair. In
  F(C) every node outside C is mean-ablated, including the circuit heads at their other
  positions; MLPs and embeddings are never ablated.

  - F(M): nothing ablated; exactly the model's metric (no hooks are added).
  - F(C): everything outside C ablated. F(C \\ K): C without the nodes of K.
  - F(M \\ K): only the nodes of K ablated ("knocking out" K from the full model).
  - faithfulness |F(M) − F(C)| (and F(C)/F(M)); completeness gap |F(C \\ K) − F(M \\ K)|
    for K ⊆ C; minimality of v given K: |F(C \\ (K ∪ {v})) − F(C \\ K)|.

  K (and v) may be given as heads ``[(layer, head), ...]``: then, when a circuit is given,
  their nodes are the circuit's positions for those heads (a head outside the circuit, or
  with no circuit given, means all its positions); or as a dict ``{(layer, head): positions}``
  naming the nodes directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .patching import (
    Head,
    LogitDiffMetric,
    PositionMetric,
    _one_position_per_prompt,
    _scalar,
    _tokens,
    _z,
    capture,
    logits_at_positions,
    position_mask,
)

__all__ = [
    "head_means",
    "node_mask",
    "run_with_mean_ablation",
    "circuit_score",
    "circuit_scores",
    "faithfulness",
    "completeness",
    "minimality",
    "CircuitEvaluator",
]


# --------------------------------------------------------------------------------------
# Means
# --------------------------------------------------------------------------------------


def _group_labels(groups, n: int) -> list:
    """Per-prompt labels from ``[n]`` labels or ``{label: indices}``."""
    if groups is None:
        return [0] * n
    if isinstance(groups, Mapping):
        labels: list = [None] * n
        for key, idx in groups.items():
            for i in torch.as_tensor(idx).reshape(-1).tolist():
                labels[int(i)] = key
        if any(lab is None for lab in labels):
            missing = [i for i, lab in enumerate(labels) if lab is None][:5]
            raise ValueError(f"groups does not cover every prompt (e.g. prompts {missing})")
        return labels
    labels = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(labels) != n:
        raise ValueError(f"groups has {len(labels)} labels for {n} prompts")
    return labels


@torch.no_grad()
def head_means(
    model,
    ref_tokens,
    groups: Any = None,
    *,
    target_groups: Any = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """``[n, seq, n_layers, n_heads, d_head]``: the mean ``z`` each prompt is ablated to.

    Means are over the reference prompts ``ref_tokens`` (``[n_ref, seq]``), per position,
    within each group when ``groups`` is given (``[n_ref]`` labels such as template ids, or
    ``{label: indices}``, e.g. ``IOIDataset.groups()``); otherwise over all of them.

    Rows: one per prompt to be ablated. By default those are the reference prompts
    themselves (row ``i`` = the mean of prompt ``i``'s group), which is what you want when
    the ablated prompts are aligned with the reference ones (p_IOI and its p_ABC twin).
    ``target_groups`` (labels of other prompts) gives their groups' means instead.
    """
    ref = _tokens(ref_tokens)
    n_ref, seq = ref.shape
    labels = _group_labels(groups, n_ref)
    keys = list(dict.fromkeys(labels))
    index = {k: i for i, k in enumerate(keys)}
    gid = torch.tensor([index[lab] for lab in labels])
    n_layers = model.cfg.n_layers
    sums = None
    for start in range(0, n_ref, batch_size):
        part = ref[start : start + batch_size]
        _, acts = capture(model, part, [_z(L) for L in range(n_layers)])
        z = torch.stack([acts[_z(L)] for L in range(n_layers)], dim=2).cpu()  # [b, seq, L, H, dh]
        if sums is None:
            sums = torch.zeros((len(keys),) + tuple(z.shape[1:]), dtype=torch.float64)
        sums.index_add_(0, gid[start : start + batch_size], z.double())
    counts = torch.bincount(gid, minlength=len(keys)).double()
    means = (sums / counts.view(-1, 1, 1, 1, 1)).to(torch.float32)
    if target_groups is None:
        rows = gid
    else:
        if isinstance(target_groups, Mapping):
            n_target = sum(torch.as_tensor(v).numel() for v in target_groups.values())
        else:
            n_target = len(target_groups)
        target = _group_labels(target_groups, n_target)
        unknown = {t for t in target if t not in index}
        if unknown:
            raise KeyError(f"target groups {sorted(map(str, unknown))[:5]} have no reference prompts")
        rows = torch.tensor([index[t] for t in target])
    return means[rows].to(model.cfg.device)


# --------------------------------------------------------------------------------------
# Node sets and ablated runs
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


def _ablation_hooks(model, tokens: torch.Tensor, means: torch.Tensor, ablate: torch.Tensor, copies: int = 1) -> list:
    """``hook_z`` hooks that put ``means`` wherever ``ablate`` is True (none if nothing is).

    ``tokens`` and ``ablate`` may hold ``copies`` stacked copies of a batch that ``means``
    (``[batch or 1, seq, ...]``) describes once; the means are broadcast, not copied.
    """
    ablate = ablate.to(tokens.device)
    if tuple(ablate.shape[:2]) != tuple(tokens.shape):
        raise ValueError(f"ablate mask {tuple(ablate.shape)} does not match tokens {tuple(tokens.shape)}")
    if means.shape[1] != tokens.shape[1]:
        raise ValueError(f"means cover {means.shape[1]} positions, tokens have {tokens.shape[1]}")
    n, seq = tokens.shape
    fwd = []
    for L in range(model.cfg.n_layers):
        m = ablate[:, :, L]
        if not m.any():
            continue
        m = m.view(copies, n // copies, seq, -1, 1)

        def ablate_z(z, hook, _L=L, _m=m):
            shaped = z.view(_m.shape[:-1] + z.shape[-1:])  # [copies, batch, seq, H, dh]
            return torch.where(_m, means[None, :, :, _L].to(z), shaped).view(z.shape)

        fwd.append((_z(L), ablate_z))
    return fwd


@torch.no_grad()
def run_with_mean_ablation(model, tokens, means: torch.Tensor, ablate: torch.Tensor) -> torch.Tensor:
    """Logits of ``tokens`` with ``z`` replaced by ``means`` wherever ``ablate`` is True.

    ``means``: ``[batch, seq, n_layers, n_heads, d_head]`` (from :func:`head_means`; a
    leading dim of 1 broadcasts); ``ablate``: ``[batch, seq, n_layers, n_heads]`` bool.
    With nothing to ablate, this is the plain forward pass (no hooks).
    """
    tokens = _tokens(tokens).to(model.cfg.device)
    fwd = _ablation_hooks(model, tokens, means, ablate)
    return model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)


def _ablated_metric_logits(model, tokens, means, ablate, metric, copies: int = 1) -> torch.Tensor:
    """What ``metric`` reads from the ablated run: for a :class:`LogitDiffMetric` or
    :class:`PositionMetric`, only its row per prompt (``[batch, d_vocab]``, computed without
    the full unembedding); for any other callable, the full logits. ``tokens`` holds
    ``copies`` stacked copies of the metric's batch."""
    tokens = _tokens(tokens).to(model.cfg.device)
    fwd = _ablation_hooks(model, tokens, means, ablate, copies)
    if isinstance(metric, (LogitDiffMetric, PositionMetric)):
        batch = tokens.shape[0] // copies
        pos = _one_position_per_prompt(metric.positions, batch, tokens.shape[1]).repeat(copies)
        return logits_at_positions(model, tokens, pos, fwd_hooks=fwd)
    return model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)


def _nodes_of(spec, circuit: Mapping | None) -> Mapping | None:
    """Heads → their circuit positions (all positions outside a circuit); dicts pass through."""
    if spec is None or isinstance(spec, Mapping):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        spec = [spec]
    out = {}
    for lh in spec:
        key = (int(lh[0]), int(lh[1]))
        out[key] = circuit[key] if circuit is not None and key in circuit else None
    return out


@torch.no_grad()
def circuit_score(
    model,
    tokens,
    metric: Callable,
    means: torch.Tensor,
    *,
    circuit: Mapping[Head, Any] | None = None,
    remove: Any = None,
    named_positions: Mapping[str, Any] | None = None,
) -> float:
    """F(C \\ remove) if ``circuit`` is given (every node outside it ablated), else F(M \\ remove).

    ``remove``: heads or a node dict (see the module docstring); ``None`` removes nothing.
    """
    tokens = _tokens(tokens)
    batch, seq = tokens.shape
    removed = node_mask(_nodes_of(remove, circuit), model, batch, seq, named_positions=named_positions)
    if circuit is None:
        ablate = removed
    else:
        keep = node_mask(circuit, model, batch, seq, named_positions=named_positions)
        ablate = ~(keep & ~removed)
    return _scalar(metric(_ablated_metric_logits(model, tokens, means, ablate, metric)))


@torch.no_grad()
def circuit_scores(
    model,
    tokens,
    metric: Callable,
    means: torch.Tensor,
    removals: list,
    *,
    circuit: Mapping[Head, Any] | None = None,
    named_positions: Mapping[str, Any] | None = None,
    logits_budget_bytes: float = 8e8,
    tokens_per_pass: int = 2048,
    progress: bool = False,
) -> list[float]:
    """``[circuit_score(..., remove=r) for r in removals]``, several per forward pass.

    Each ablation configuration is a copy of the batch; copies are stacked along the batch
    dimension so that one forward pass reads the weights once for many configurations (on a
    CPU a small batch costs nearly as much as a large one). ``logits_budget_bytes`` caps the
    logits of one pass and ``tokens_per_pass`` its size: small batches (a few prompts) are
    stacked, while 100 IOI prompts (2,000 tokens) run one configuration per pass, which was
    fastest on a 2-core CPU (8 per pass took 1.8× as long). ``progress`` shows a tqdm bar.
    Same numbers as calling :func:`circuit_score` one by one.
    """
    tokens = _tokens(tokens)
    batch, seq = tokens.shape
    keep = None if circuit is None else node_mask(circuit, model, batch, seq, named_positions=named_positions)
    masks = []
    for remove in removals:
        removed = node_mask(_nodes_of(remove, circuit), model, batch, seq, named_positions=named_positions)
        masks.append(removed if keep is None else ~(keep & ~removed))
    rows_per_copy = batch if isinstance(metric, (LogitDiffMetric, PositionMetric)) else batch * seq
    per_pass = max(1, int(logits_budget_bytes // (rows_per_copy * model.cfg.d_vocab * 4)))
    per_pass = min(per_pass, max(1, tokens_per_pass // (batch * seq)))
    scores: list[float] = []
    starts = range(0, len(masks), per_pass)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{len(masks)} ablation configurations")
    for start in starts:
        chunk = masks[start : start + per_pass]
        n = len(chunk)
        logits = _ablated_metric_logits(model, tokens.repeat(n, 1), means, torch.cat(chunk), metric, copies=n)
        for j in range(n):
            scores.append(_scalar(metric(logits[j * batch : (j + 1) * batch])))
        del logits
    return scores


def faithfulness(model, tokens, metric, means, circuit, *, named_positions=None) -> dict:
    """``{"F_M", "F_C", "gap" = |F(M) − F(C)|, "ratio" = F(C)/F(M)}``."""
    f_m = circuit_score(model, tokens, metric, means, named_positions=named_positions)
    f_c = circuit_score(model, tokens, metric, means, circuit=circuit, named_positions=named_positions)
    return {"F_M": f_m, "F_C": f_c, "gap": abs(f_m - f_c), "ratio": f_c / f_m if f_m != 0 else float("nan")}


def completeness(model, tokens, metric, means, circuit, K, *, named_positions=None) -> dict:
    """``{"F_C_minus_K", "F_M_minus_K", "gap" = |F(C \\ K) − F(M \\ K)|}`` for K ⊆ C."""
    kw = dict(remove=K, named_positions=named_positions)
    f_ck = circuit_score(model, tokens, metric, means, circuit=circuit, **kw)
    f_mk = circuit_score(model, tokens, metric, means, **{**kw, "remove": _nodes_of(K, circuit)})
    return {"F_C_minus_K": f_ck, "F_M_minus_K": f_mk, "gap": abs(f_ck - f_mk)}


def minimality(model, tokens, metric, means, circuit, v, K=(), *, named_positions=None) -> dict:
    """``{"F_C_minus_K", "F_C_minus_K_v", "score" = |F(C \\ (K ∪ {v})) − F(C \\ K)|}``."""
    k_nodes = dict(_nodes_of(K, circuit) or {})
    kv_nodes = dict(k_nodes)
    for key, pos in _nodes_of(v, circuit).items():
        kv_nodes[key] = pos if key not in kv_nodes else [kv_nodes[key], pos]
    f_k = circuit_score(model, tokens, metric, means, circuit=circuit, remove=k_nodes, named_positions=named_positions)
    f_kv = circuit_score(model, tokens, metric, means, circuit=circuit, remove=kv_nodes, named_positions=named_positions)
    return {"F_C_minus_K": f_k, "F_C_minus_K_v": f_kv, "score": abs(f_kv - f_k)}


class CircuitEvaluator:
    """The functions above with the model, prompts, metric, means and circuit bound once.

    ``ev = CircuitEvaluator(model, ds.tokens, metric, head_means(model, abc.tokens,
    abc.groups()), circuit, named_positions=ds.positions)``; then ``ev.F()`` = F(M),
    ``ev.F(circuit=True)`` = F(C), ``ev.F(remove=K)`` = F(M \\ K),
    ``ev.F(circuit=True, remove=K)``, ``ev.faithfulness()``, ``ev.completeness(K)``,
    ``ev.minimality(v, K)``. F(M) is computed once and cached.
    """

    def __init__(self, model, tokens, metric, means, circuit, *, named_positions=None):
        self.model, self.tokens, self.metric, self.means = model, _tokens(tokens), metric, means
        self.circuit = dict(circuit)
        self.named_positions = named_positions
        self._f_m = None

    def F(self, *, circuit: bool = False, remove: Any = None) -> float:
        if not circuit and remove is None:
            if self._f_m is None:
                self._f_m = circuit_score(self.model, self.tokens, self.metric, self.means)
            return self._f_m
        nodes = _nodes_of(remove, self.circuit)
        return circuit_score(
            self.model, self.tokens, self.metric, self.means,
            circuit=self.circuit if circuit else None, remove=nodes, named_positions=self.named_positions,
        )

    def faithfulness(self) -> dict:
        f_m, f_c = self.F(), self.F(circuit=True)
        return {"F_M": f_m, "F_C": f_c, "gap": abs(f_m - f_c), "ratio": f_c / f_m if f_m != 0 else float("nan")}

    def completeness(self, K) -> dict:
        f_ck, f_mk = self.F(circuit=True, remove=K), self.F(remove=K)
        return {"F_C_minus_K": f_ck, "F_M_minus_K": f_mk, "gap": abs(f_ck - f_mk)}

    def minimality(self, v, K=()) -> dict:
        return minimality(
            self.model, self.tokens, self.metric, self.means, self.circuit, v, K, named_positions=self.named_positions
        )
