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

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "minimality_scores",
    "random_subsets",
    "greedy_incompleteness",
    "circuit_scores_per_prompt",
    "greedy_incompleteness_runs",
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
        from .display import tqdm

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

    def add_back(self, order, *, progress: bool = False) -> list[float]:
        """The add-back curve: every node outside the circuit ablated, then the circuit's
        heads ``order`` (``[(layer, head), ...]``, each at its circuit positions) added back
        one at a time. ``len(order) + 1`` scores: nothing kept, then the first 1, 2, ... heads
        (the last is F(C) when ``order`` covers the circuit)."""
        order = [(int(L), int(h)) for L, h in order]
        missing = [h for h in order if h not in self.circuit]
        if missing:
            raise KeyError(f"heads {missing} are not in the circuit; add-back needs circuit heads")
        rest = [h for h in self.circuit if h not in order]
        return self.scores([order[k:] + rest for k in range(len(order) + 1)], circuit=True, progress=progress)

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


# --------------------------------------------------------------------------------------
# Minimality with per-head K sets; completeness with random and greedy K
# --------------------------------------------------------------------------------------


def minimality_scores(evaluator: CircuitEvaluator, k_sets: Mapping[Head, Iterable[Head]], *,
                      progress: bool = False) -> list[dict]:
    """Minimality of every head ``v`` of ``k_sets`` with its own ``K`` (Wang et al. §4.2).

    ``k_sets``: ``{v: K}`` with heads as ``(layer, head)`` (K's heads at their circuit
    positions, as in :meth:`CircuitEvaluator.minimality`). Each distinct set (K, and
    K ∪ {v}) is scored once, in batched passes. Returns one dict per ``v``, in order:
    ``{"head", "K", "F_C_minus_K", "F_C_minus_K_v", "change" = F(C \\ (K ∪ {v})) − F(C \\ K),
    "score" = |change|}``.
    """
    configs: dict[frozenset, int] = {}
    rows = []
    for v, K in k_sets.items():
        v = (int(v[0]), int(v[1]))
        K = frozenset((int(a), int(b)) for a, b in K)
        if v in K:
            raise ValueError(f"head {v} is in its own K")
        rows.append((v, K))
        for cfg in (K, K | {v}):
            configs.setdefault(cfg, len(configs))
    order = sorted(configs, key=configs.get)
    values = evaluator.scores([sorted(c) or None for c in order], circuit=True, progress=progress)
    out = []
    for v, K in rows:
        f_k, f_kv = values[configs[K]], values[configs[K | {v}]]
        out.append({"head": v, "K": sorted(K), "F_C_minus_K": f_k, "F_C_minus_K_v": f_kv,
                    "change": f_kv - f_k, "score": abs(f_kv - f_k)})
    return out


def random_subsets(items: Sequence, n_draws: int, *, p: float = 0.5, seed: int = 0) -> list[list]:
    """``n_draws`` random subsets of ``items``, each item in with probability ``p``
    (Wang et al.'s random K for completeness, p = 1/2), seeded; empty draws are redrawn."""
    if not 0 < p <= 1 or n_draws < 0 or not items:
        raise ValueError(f"need items, n_draws ≥ 0 and 0 < p ≤ 1; got {len(items)} items, "
                         f"n_draws={n_draws}, p={p}")
    rng = random.Random(seed)
    draws = []
    while len(draws) < n_draws:
        draw = [x for x in items if rng.random() < p]
        if draw:
            draws.append(draw)
    return draws


def greedy_incompleteness(evaluator: CircuitEvaluator, candidates: Sequence[Head], steps: int, *,
                          sample: int | None = None, seed: int = 0,
                          progress: bool = False) -> list[dict]:
    """Greedy search for a K ⊆ C with a large incompleteness |F(C \\ K) − F(M \\ K)|.

    Starting from K = ∅, each of ``steps`` steps tries adding every remaining candidate
    (or ``sample`` of them, drawn with ``seed``), scores F(C \\ (K ∪ {v})) and
    F(M \\ (K ∪ {v})) in batched passes, and keeps the v with the largest gap. Costs
    2 × (candidates tried) ablated runs per step. Returns one dict per step:
    ``{"K", "F_C_minus_K", "F_M_minus_K", "gap"}`` (K as a list of heads, in the order added).
    """
    if steps < 1 or steps > len(candidates):
        raise ValueError(f"steps must be in 1..{len(candidates)} (the candidates), got {steps}")
    rng = random.Random(seed)
    K: list[Head] = []
    trace = []
    for _ in range(steps):
        pool = [c for c in candidates if c not in K]
        if sample is not None and sample < len(pool):
            pool = rng.sample(pool, sample)
        configs = [K + [v] for v in pool]
        f_c = evaluator.scores(configs, circuit=True, progress=progress)
        f_m = evaluator.scores(configs, progress=progress)
        gaps = [abs(c - m) for c, m in zip(f_c, f_m)]
        best = max(range(len(pool)), key=gaps.__getitem__)
        K = configs[best]
        trace.append({"K": list(K), "F_C_minus_K": f_c[best], "F_M_minus_K": f_m[best],
                      "gap": gaps[best]})
    return trace


# --------------------------------------------------------------------------------------
# Per-prompt scores (for standard errors) and the authors' greedy search
# --------------------------------------------------------------------------------------


@torch.no_grad()
def circuit_scores_per_prompt(evaluator: CircuitEvaluator, removals: list, *, circuit: bool = False,
                              batch_tokens: int = 2048, progress: bool = False) -> torch.Tensor:
    """``[len(removals), batch]``: each prompt's logit difference in each configuration.

    The same configurations as :meth:`CircuitEvaluator.scores` (F(C \\ r) with
    ``circuit=True``, else F(M \\ r); ``None`` removes nothing), kept per prompt so that
    differences and ratios get standard errors; the mean over prompts is ``scores``'s value.
    The evaluator's metric must be a :class:`~helpers.metrics.LogitDiffMetric`. On the CPU.
    """
    metric = evaluator.metric
    if not isinstance(metric, LogitDiffMetric):
        raise TypeError(
            f"circuit_scores_per_prompt needs a LogitDiffMetric (one logit difference per "
            f"prompt), got {type(metric).__name__}; use CircuitEvaluator.scores for other metrics.")
    model, tokens = evaluator.model, evaluator.tokens
    batch, seq = tokens.shape
    circ = evaluator.circuit if circuit else None
    nodes = [_nodes_of(r, evaluator.circuit) for r in removals]
    keep = None if circ is None else node_mask(circ, model, batch, seq,
                                               named_positions=evaluator.named_positions)
    masks = []
    for remove in nodes:
        removed = node_mask(_nodes_of(remove, circ), model, batch, seq,
                            named_positions=evaluator.named_positions)
        masks.append(removed if keep is None else ~(keep & ~removed))
    per_pass = max(1, batch_tokens // (batch * seq))
    starts = range(0, len(masks), per_pass)
    if progress:
        from .display import tqdm

        starts = tqdm(starts, desc=f"{len(masks)} ablation configurations")
    out = []
    for start in starts:
        chunk = masks[start : start + per_pass]
        n = len(chunk)
        rows = _ablated_metric_logits(model, tokens.repeat(n, 1), evaluator.means, torch.cat(chunk),
                                      metric, copies=n)  # [n · batch, d_vocab]
        dev = rows.device
        answer = torch.as_tensor(metric.answer, device=dev).reshape(-1).repeat(n)
        wrong = torch.as_tensor(metric.wrong, device=dev).reshape(-1).repeat(n)
        idx = torch.arange(rows.shape[0], device=dev)
        out.append((rows[idx, answer] - rows[idx, wrong]).float().cpu().view(n, batch))
        del rows
    return torch.cat(out) if out else torch.zeros(0, batch)


def greedy_incompleteness_runs(evaluator: CircuitEvaluator, candidates: Sequence[Head], *,
                               runs: int = 10, steps: int = 10, sample: int = 10, seed: int = 0,
                               progress: bool = False) -> list[dict]:
    """Wang et al.'s greedy search for a K ⊆ C with a large |F(C \\ K) − F(M \\ K)|, as
    their code runs it (Easy-Transformer ``completeness.py``, ``new_greedy_search``).

    Each of ``runs`` independent runs starts from K = ∅ and the gap |F(C) − F(M)|; each of
    its ``steps`` steps draws ``sample`` heads not yet in K (without replacement), scores
    K ∪ {v} for each, and adds the best v **only if its gap is larger than the current one**
    (otherwise K stays as it was). The authors: 10 runs, 10 steps, 10 candidates. The runs
    advance in lockstep so that one batched call scores every run's candidates of a step
    (same numbers as running them one after another with the same draws). Costs
    2 · runs · steps · sample ablated runs of the evaluator's prompts. Returns one dict per
    run: ``{"K", "F_C_minus_K", "F_M_minus_K", "gap", "accepted"}`` (K in the order added;
    ``accepted``: the steps that grew K).
    """
    if runs < 1 or steps < 1 or sample < 1:
        raise ValueError(f"runs, steps and sample must be at least 1, got runs={runs}, "
                         f"steps={steps}, sample={sample}")
    candidates = [(int(L), int(h)) for L, h in candidates]
    if not candidates:
        raise ValueError("greedy_incompleteness_runs needs candidate heads (the circuit's)")
    rng = random.Random(seed)
    f_c0 = evaluator.F(circuit=True)
    f_m0 = evaluator.F()
    state = [{"K": [], "F_C_minus_K": f_c0, "F_M_minus_K": f_m0, "gap": abs(f_c0 - f_m0),
              "accepted": []} for _ in range(runs)]
    for step in range(steps):
        pools = []
        for run in state:
            rest = [c for c in candidates if c not in run["K"]]
            pools.append(rng.sample(rest, min(sample, len(rest))))
        configs = [run["K"] + [v] for run, pool in zip(state, pools) for v in pool]
        if not configs:
            break
        f_c = evaluator.scores(configs, circuit=True, progress=progress)
        f_m = evaluator.scores(configs, progress=progress)
        at = 0
        for run, pool in zip(state, pools):
            gaps = [abs(f_c[at + j] - f_m[at + j]) for j in range(len(pool))]
            if gaps:
                best = max(range(len(pool)), key=gaps.__getitem__)
                if gaps[best] > run["gap"]:
                    run.update(K=run["K"] + [pool[best]], F_C_minus_K=f_c[at + best],
                               F_M_minus_K=f_m[at + best], gap=gaps[best])
                    run["accepted"].append(step)
            at += len(pool)
    return state
