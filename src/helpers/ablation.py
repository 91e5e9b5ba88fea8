"""Mean ablation of attention heads and circuit evaluation (Wang et al. 2022, §4).

* :func:`head_means`: the mean of every head's output ``z`` at every position over a
  reference distribution (e.g. p_ABC), optionally **per group** (e.g. per template: the mean
  is taken within each group, position by position, so prompts of a group must share their
  layout; the paper's ``mean_by_groups``).
* :func:`run_with_mean_ablation`: a hooked run replacing chosen (prompt, position, layer,
  head) entries of ``z`` by those means.
* Circuits. A circuit (or any set of nodes) is a :class:`~helpers.circuits.Circuit` or a
  dict ``{(layer, head): positions}``; the
  positions are those the head keeps (``None`` = all positions; otherwise any form accepted
  by :func:`helpers.hooks.position_mask`: an int, a ``[batch]`` tensor of one position
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

from .circuits import Circuit, Head
from .hooks import as_tokens, capture, hook_name, logits_at_positions, one_position_per_prompt
from .metrics import LogitDiffMetric, PositionMetric, metric_scalar
from .patching import node_mask, replace_z_hooks

__all__ = [
    "head_means",
    "run_with_mean_ablation",
    "circuit_score",
    "circuit_scores",
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
    ref = as_tokens(ref_tokens)
    n_ref, seq = ref.shape
    labels = _group_labels(groups, n_ref)
    keys = list(dict.fromkeys(labels))
    index = {k: i for i, k in enumerate(keys)}
    gid = torch.tensor([index[lab] for lab in labels])
    n_layers = model.cfg.n_layers
    sums = None
    for start in range(0, n_ref, batch_size):
        part = ref[start : start + batch_size]
        _, acts = capture(model, part, [hook_name("z", L) for L in range(n_layers)])
        z = torch.stack([acts[hook_name("z", L)] for L in range(n_layers)], dim=2).cpu()  # [b, seq, L, H, dh]
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


@torch.no_grad()
def run_with_mean_ablation(model, tokens, means: torch.Tensor, ablate: torch.Tensor) -> torch.Tensor:
    """Logits of ``tokens`` with ``z`` replaced by ``means`` wherever ``ablate`` is True.

    ``means``: ``[batch, seq, n_layers, n_heads, d_head]`` (from :func:`head_means`; a
    leading dim of 1 broadcasts); ``ablate``: ``[batch, seq, n_layers, n_heads]`` bool.
    With nothing to ablate, this is the plain forward pass (no hooks).
    """
    tokens = as_tokens(tokens).to(model.cfg.device)
    fwd = replace_z_hooks(model, means, ablate)
    return model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)


def _ablated_metric_logits(model, tokens, means, ablate, metric, copies: int = 1) -> torch.Tensor:
    """What ``metric`` reads from the ablated run: for a :class:`LogitDiffMetric` or
    :class:`PositionMetric`, only its row per prompt (``[batch, d_vocab]``, computed without
    the full unembedding); for any other callable, the full logits. ``tokens`` holds
    ``copies`` stacked copies of the metric's batch."""
    tokens = as_tokens(tokens).to(model.cfg.device)
    fwd = replace_z_hooks(model, means, ablate, copies=copies)
    if isinstance(metric, (LogitDiffMetric, PositionMetric)):
        batch = tokens.shape[0] // copies
        pos = one_position_per_prompt(metric.positions, batch, tokens.shape[1]).repeat(copies)
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
    circuit: Circuit | Mapping[Head, Any] | None = None,
    remove: Any = None,
    named_positions: Mapping[str, Any] | None = None,
) -> float:
    """F(C \\ remove) if ``circuit`` is given (every node outside it ablated), else F(M \\ remove).

    ``remove``: heads or a node dict (see the module docstring); ``None`` removes nothing.
    """
    tokens = as_tokens(tokens)
    batch, seq = tokens.shape
    circuit = circuit.nodes() if isinstance(circuit, Circuit) else circuit
    removed = node_mask(_nodes_of(remove, circuit), model, batch, seq, named_positions=named_positions)
    if circuit is None:
        ablate = removed
    else:
        keep = node_mask(circuit, model, batch, seq, named_positions=named_positions)
        ablate = ~(keep & ~removed)
    return metric_scalar(metric(_ablated_metric_logits(model, tokens, means, ablate, metric)))


_LOGITS_BUDGET_BYTES = 8e8


@torch.no_grad()
def circuit_scores(
    model,
    tokens,
    metric: Callable,
    means: torch.Tensor,
    removals: list,
    *,
    circuit: Circuit | Mapping[Head, Any] | None = None,
    named_positions: Mapping[str, Any] | None = None,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> list[float]:
    """``[circuit_score(..., remove=r) for r in removals]``, several per forward pass.

    Each ablation configuration is a copy of the batch; copies are stacked along the batch
    dimension so that one forward pass reads the weights once for many configurations (on a
    CPU a small batch costs nearly as much as a large one). ``batch_tokens`` caps the tokens
    of one pass: a few small prompts are stacked, 100 IOI prompts (2,000 tokens) run one
    configuration per pass, which was fastest on a 2-core CPU. The logits of a pass are also
    kept under ~800 MB. ``progress`` shows a tqdm bar.
    Same numbers as calling :func:`circuit_score` one by one.
    """
    tokens = as_tokens(tokens)
    batch, seq = tokens.shape
    circuit = circuit.nodes() if isinstance(circuit, Circuit) else circuit
    keep = None if circuit is None else node_mask(circuit, model, batch, seq, named_positions=named_positions)
    masks = []
    for remove in removals:
        removed = node_mask(_nodes_of(remove, circuit), model, batch, seq, named_positions=named_positions)
        masks.append(removed if keep is None else ~(keep & ~removed))
    rows_per_copy = batch if isinstance(metric, (LogitDiffMetric, PositionMetric)) else batch * seq
    per_pass = max(1, int(_LOGITS_BUDGET_BYTES // (rows_per_copy * model.cfg.d_vocab * 4)))
    per_pass = min(per_pass, max(1, batch_tokens // (batch * seq)))
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
            scores.append(metric_scalar(metric(logits[j * batch : (j + 1) * batch])))
        del logits
    return scores


class CircuitEvaluator:
    """Circuit evaluation (Wang et al. 2022, §4) with the model, prompts, metric, means and
    circuit bound once.

    ``ev = CircuitEvaluator(model, ds.tokens, metric, head_means(model, abc.tokens,
    abc.groups()), circuit, named_positions=ds.positions)``; then ``ev.F()`` = F(M),
    ``ev.F(circuit=True)`` = F(C), ``ev.F(remove=K)`` = F(M \\ K),
    ``ev.F(circuit=True, remove=K)`` = F(C \\ K), ``ev.faithfulness()``,
    ``ev.completeness(K)``, ``ev.minimality(v, K)``, and ``ev.scores(removals)`` for many
    configurations in batched passes. ``circuit``: a :class:`~helpers.circuits.Circuit` or
    ``{(layer, head): positions}``. F(M) is computed once and cached.
    """

    def __init__(self, model, tokens, metric, means, circuit, *, named_positions=None):
        self.model, self.tokens, self.metric, self.means = model, as_tokens(tokens), metric, means
        self.circuit = circuit.nodes() if isinstance(circuit, Circuit) else dict(circuit)
        self.named_positions = named_positions
        self._f_m = None

    def F(self, *, circuit: bool = False, remove: Any = None) -> float:
        """F(M) / F(C) without ``remove`` (heads, or ``{(layer, head): positions}`` nodes)."""
        if not circuit and remove is None:
            if self._f_m is None:
                self._f_m = circuit_score(self.model, self.tokens, self.metric, self.means)
            return self._f_m
        nodes = _nodes_of(remove, self.circuit)
        return circuit_score(
            self.model, self.tokens, self.metric, self.means,
            circuit=self.circuit if circuit else None, remove=nodes, named_positions=self.named_positions,
        )

    def scores(self, removals: list, *, circuit: bool = False, progress: bool = False) -> list[float]:
        """``[F(C \\ r) or F(M \\ r) for r in removals]``, batched (see :func:`circuit_scores`)."""
        return circuit_scores(
            self.model, self.tokens, self.metric, self.means,
            [_nodes_of(r, self.circuit) for r in removals],
            circuit=self.circuit if circuit else None, named_positions=self.named_positions,
            progress=progress,
        )

    def faithfulness(self) -> dict:
        """``{"F_M", "F_C", "gap" = |F(M) − F(C)|, "ratio" = F(C)/F(M)}``."""
        f_m, f_c = self.F(), self.F(circuit=True)
        return {"F_M": f_m, "F_C": f_c, "gap": abs(f_m - f_c), "ratio": f_c / f_m if f_m != 0 else float("nan")}

    def completeness(self, K) -> dict:
        """``{"F_C_minus_K", "F_M_minus_K", "gap" = |F(C \\ K) − F(M \\ K)|}`` for K ⊆ C."""
        f_ck, f_mk = self.F(circuit=True, remove=K), self.F(remove=K)
        return {"F_C_minus_K": f_ck, "F_M_minus_K": f_mk, "gap": abs(f_ck - f_mk)}

    def minimality(self, v, K=()) -> dict:
        """``{"F_C_minus_K", "F_C_minus_K_v", "score" = |F(C \\ (K ∪ {v})) − F(C \\ K)|}``."""
        k_nodes = dict(_nodes_of(K, self.circuit) or {})
        kv_nodes = dict(k_nodes)
        for key, pos in _nodes_of(v, self.circuit).items():
            kv_nodes[key] = pos if key not in kv_nodes else [kv_nodes[key], pos]
        f_k = self.F(circuit=True, remove=k_nodes)
        f_kv = self.F(circuit=True, remove=kv_nodes)
        return {"F_C_minus_K": f_k, "F_C_minus_K_v": f_kv, "score": abs(f_kv - f_k)}
