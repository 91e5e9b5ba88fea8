"""How good are the estimates? Single-node ablations beside their first-order estimates.

* :func:`ablation_effects`: each node ablated alone (zero, a value, its reference mean),
  batched one node per copy of the prompt; the estimate is ``(a − fill)·∂T/∂a`` summed over
  the ablated slice (``a·∂T/∂a``, TDB's estimated total effect, for a zero ablation;
  ``(a − ā)·∂T/∂a`` for a mean ablation);
* :func:`estimate_study`: groups of nodes chosen without looking at the estimate only
  (random pairs and neurons, every whole head, every head pair into the last token) beside
  the top nodes by estimate;
* :func:`estimate_scores`: per group, Spearman's ρ, sign agreement and R² of the estimate
  as a prediction of the actual effect.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..metrics import rank_correlation
from .core import Debugger, make_edit, reference_means
from .nodes import DebuggerInputError, sae_layer
from .run import Edit, LogitTarget, apply_edits, sae_hook


def first_order_estimate(dbg: Debugger, edit: Edit) -> float:
    """``Σ (a − fill) · ∂T/∂a`` over the slice ``edit`` replaces, on ``dbg``'s run."""
    run = dbg._run
    if edit.site == "latent":
        a, g = run.acts["latent"], run.grads["latent"]
    else:
        a, g = run.acts[edit.site][edit.layer], run.grads[edit.site][edit.layer]
    idx = edit.index()
    a, g = a[idx].float(), g[idx].float()
    fill = edit.fill.to(a) if isinstance(edit.fill, torch.Tensor) else edit.fill
    return float(((a - fill) * g).sum())


def ablation_effects(dbg: Debugger, nodes, *, how: str = "zero", value: float | None = None,
                     reference=None, batch: int = 16, means=None) -> pd.DataFrame:
    """For each node: its first-order estimate and the actual effect of ablating it alone
    (target value before − after), on top of ``dbg``'s own ablations.

    For the logit difference the ablated runs are batched, ``batch`` copies of the prompt per
    forward pass, each copy with one node ablated; other targets run one at a time.
    """
    labels = (list(nodes["node"]) if isinstance(nodes, pd.DataFrame)
              else [dbg.node(n).label for n in nodes])
    parsed = [dbg.node(label) for label in labels]
    if how in ("mean", "pattern_mean") and means is None:
        means = reference_means(dbg, reference)
    edits = [make_edit(n, how, value, means) for n in parsed]
    estimates = [first_order_estimate(dbg, e) for e in edits]
    if isinstance(dbg._target, LogitTarget):
        after = []
        for i in range(0, len(edits), batch):
            after.extend(batched_ablation(dbg, edits[i:i + batch]))
    else:
        after = [dbg._derive(edits=dbg._edits + (e,)).value for e in edits]
    return pd.DataFrame({"node": labels, "kind": [n.kind for n in parsed],
                         "estimated": estimates, "actual": [dbg.value - a for a in after]})


@torch.no_grad()
def batched_ablation(dbg: Debugger, edits: Sequence[Edit]) -> list[float]:
    """logit(target) − logit(distractor) with each edit applied in its own copy of the
    prompt (and ``dbg``'s ablations in every copy)."""
    from ..hooks import hook_name, logits_at_positions

    model = dbg.model
    groups = [(slice(None), dbg._edits)] + [(r, (e,)) for r, e in enumerate(edits)]
    every = [e for _, es in groups for e in es]
    hooks = []
    for site, layer in sorted({(e.site, e.layer) for e in every if e.site != "latent"}):
        hooks.append((hook_name(site, layer),
                      lambda t, hook, s=site, L=layer: apply_edits(t, s, L, groups)))
    if dbg.sae is not None:
        hooks.append((hook_name("resid_pre", sae_layer(dbg.sae)), sae_hook(dbg.sae, groups)))
    logits = logits_at_positions(model, dbg.tokens.repeat(len(edits), 1), None,
                                 fwd_hooks=hooks)
    return (logits[:, dbg.target_id] - logits[:, dbg.distractor_id]).float().tolist()


def _rho(pairs: np.ndarray) -> float:
    return rank_correlation(pairs[:, 0], pairs[:, 1])


def _r2(pairs: np.ndarray) -> float:
    e, a = pairs[:, 0], pairs[:, 1]
    ss_tot = float(((a - a.mean()) ** 2).sum())
    return 1 - float(((a - e) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def estimate_scores(effects: pd.DataFrame, *, by: str | None = "group", atol: float = 1e-6,
                    se: bool = False, n_boot: int = 300) -> pd.DataFrame:
    """Per group of ``effects`` (columns ``estimated``, ``actual``): ``n``, Spearman's ``rho``,
    ``sign_agreement`` (share of nodes with |actual| > ``atol`` whose estimate has the same
    sign) and ``r2`` = 1 − Σ(actual − estimated)² / Σ(actual − mean actual)², the estimate
    used as the prediction itself (no fitted slope: it can be negative). ``se``: add bootstrap
    standard errors over nodes (``*_se`` columns; :func:`helpers.scorecard.bootstrap_se`)."""
    from ..scorecard import bootstrap_se

    parts = effects.groupby(by, sort=False) if by else [("all", effects)]
    rows = []
    for name, g in parts:
        pairs = np.c_[g.estimated.to_numpy(float), g.actual.to_numpy(float)]
        moved = pairs[np.abs(pairs[:, 1]) > atol]
        agree = (np.sign(moved[:, 0]) == np.sign(moved[:, 1])).astype(float)
        row = {"group": name, "n": len(g),
               "rho": _rho(pairs) if len(g) > 1 else float("nan"),
               "sign_agreement": float(agree.mean()) if len(agree) else float("nan"),
               "r2": _r2(pairs)}
        if se:
            ok = len(g) > 2
            row["rho_se"] = bootstrap_se(pairs, _rho, n_boot=n_boot) if ok else float("nan")
            row["sign_agreement_se"] = (float(agree.std(ddof=1) / np.sqrt(len(agree)))
                                        if len(agree) > 1 else float("nan"))
            row["r2_se"] = bootstrap_se(pairs, _r2, n_boot=n_boot) if ok else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def estimate_study(dbg: Debugger, n_check: int, *, n_random: int | None = None, seed: int = 0,
                   reference=None, means: dict | None = None, whole_heads: bool = True,
                   pair_census: bool = True, batch: int = 32) -> pd.DataFrame:
    """Single-node ablations by group, for :func:`estimate_scores`. Groups:

    * ``top pairs by estimate`` / ``top neurons by estimate``: the ``n_check`` largest |estimated
      total effect| (what TDB's table shows first);
    * ``random pairs`` / ``random neurons``: ``n_random`` each (default ``n_check``), drawn uniformly (seeded) from
      every head pair (source ≤ destination) and every neuron at every token;
    * ``whole heads (zero)``: every head, zeroed at every pair; ``whole heads (mean)``: every
      head's ``z`` replaced by its mean over ``reference`` (when given, or its precomputed
      ``means``), with ``(a − ā)·∂T/∂a`` (both when ``whole_heads``);
    * ``last-token pairs``: every head's pair into the last token, from every source (when
      ``pair_census``): the census from which the top pairs by *actual* effect are read.
    """
    n_random = n_check if n_random is None else n_random
    if n_check < 1 or n_random < 1:
        raise DebuggerInputError(f"n_check and n_random must be at least 1, got {n_check} "
                                 f"and {n_random}.")
    frame = dbg.frame()
    rng = np.random.default_rng(seed)
    cfg = dbg.model.cfg
    groups = {}
    for kind, name in (("head", "pairs"), ("neuron", "neurons")):
        top = dbg.table(n=n_check, kind=kind, top_tokens=0).node
        groups[f"top {name} by estimate"] = list(top)
        rows = frame[frame.kind == kind]
        pick = rows.iloc[np.sort(rng.choice(len(rows), size=min(n_random, len(rows)),
                                            replace=False))]
        groups[f"random {name}"] = [
            f"H{r.layer}.{r.index} {r.dest}<-{r.src}" if kind == "head"
            else f"N{r.layer}.{r.index}@{r.dest}" for r in pick.itertuples()]
    heads = [f"H{L}.{h}" for L in range(cfg.n_layers) for h in range(cfg.n_heads)]
    parts = [ablation_effects(dbg, nodes, batch=batch).assign(group=g)
             for g, nodes in groups.items()]
    if whole_heads:
        parts.append(ablation_effects(dbg, heads, batch=batch)
                     .assign(group="whole heads (zero)"))
    if whole_heads and (reference is not None or means is not None):
        means = reference_means(dbg, reference) if means is None else means
        parts.append(ablation_effects(dbg, heads, how="mean", batch=batch, means=means)
                     .assign(group="whole heads (mean)"))
    if pair_census:
        last = dbg.n_tokens - 1
        census = [f"{h} {last}<-{s}" for h in heads for s in range(last + 1)]
        parts.append(ablation_effects(dbg, census, batch=batch)
                     .assign(group="last-token pairs"))
    return pd.concat(parts, ignore_index=True)


def top_by_actual(effects: pd.DataFrame, group: str, k: int) -> pd.DataFrame:
    """The ``k`` nodes of ``group`` with the largest |actual| effect, with each one's rank by
    |estimate| within the group (1 = first): where the estimate underrates a node."""
    g = effects[effects.group == group].copy()
    if g.empty:
        raise DebuggerInputError(f"No group {group!r}; groups: {sorted(set(effects.group))}.")
    g["rank by |estimate|"] = g.estimated.abs().rank(ascending=False, method="min").astype(int)
    g["rank by |actual|"] = g.actual.abs().rank(ascending=False, method="min").astype(int)
    return g.sort_values("rank by |actual|").head(k).reset_index(drop=True)
