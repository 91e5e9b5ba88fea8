"""TDB's other panes: two prompts side by side, and the input tokens that up-vote a node."""

from __future__ import annotations

import pandas as pd
import torch

from .core import Debugger
from .nodes import COLUMNS, DebuggerInputError
from .run import weights
from .table import label_of, token_text


def compare(left: Debugger, right: Debugger, column: str = "est_total_effect", *,
            n: int | None = 20, kind=("head", "neuron")) -> pd.DataFrame:
    """Two prompts side by side, TDB's Left / Diff / Right: ``column`` for each and ``diff``
    = left − right, by node; rows sorted by |diff|.

    The prompts may differ (two sentences of the same length) or be one prompt with and
    without ablations. Nodes are matched by position, so both need the same number of tokens.
    """
    if column not in COLUMNS:
        raise DebuggerInputError(f"column must be one of {COLUMNS}, got {column!r}.")
    if left.n_tokens != right.n_tokens:
        raise DebuggerInputError(
            f"The two prompts have {left.n_tokens} and {right.n_tokens} tokens; two-prompt "
            f"mode matches nodes by position, so they must be the same length.")
    keys = ["kind", "layer", "index", "dest", "src"]
    a, b = left.frame(), right.frame()
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        a, b = a[a.kind.isin(kinds)], b[b.kind.isin(kinds)]
    merged = a[keys + [column]].merge(b[keys + [column]], on=keys, how="outer",
                                      suffixes=("_left", "_right"))
    merged = merged.fillna({f"{column}_left": 0.0, f"{column}_right": 0.0})
    merged["diff"] = merged[f"{column}_left"] - merged[f"{column}_right"]
    merged = merged.loc[merged["diff"].abs().sort_values(ascending=False).index]
    if n is not None:
        merged = merged.head(n)
    merged.insert(0, "node", [label_of(r) for r in merged.itertuples()])
    lt, rt = left.str_tokens, right.str_tokens
    merged.insert(1, "left tokens", [token_text(r, lt) for r in merged.itertuples()])
    merged.insert(2, "right tokens", [token_text(r, rt) for r in merged.itertuples()])
    order = ["node", "left tokens", "right tokens", *keys, f"{column}_left", "diff",
             f"{column}_right"]
    return merged[order].reset_index(drop=True)


@torch.no_grad()
def input_tokens(dbg: Debugger, node, through: str = "input", *, k: int = 8) -> pd.DataFrame:
    """The vocabulary tokens whose embedding, written at the position the node reads, most
    raises (``up``) or lowers (``down``) its activation to first order: TDB's "input tokens
    that up-vote the MLP / the attention Q / K".

    ``node``: a neuron or latent at one token (``through="input"``), or a head pair with
    ``through="q"`` (read at the destination) or ``"k"`` (read at the source). The score of a
    token is its embedding ``W_E[t]`` dotted with the gradient of the node's activation (the
    attention score for a head) at the residual stream the node reads.
    """
    n = dbg.node(node)
    if n.kind == "head" and through not in ("q", "k"):
        raise DebuggerInputError(f"For a head, through is 'q' or 'k', not {through!r}.")
    traced = dbg.trace(n, through if n.kind == "head" else "input")
    site = "resid_mid" if n.kind == "neuron" else "resid_pre"
    pos = n.src if through == "k" else n.dest
    with torch.enable_grad():
        grad = traced._run.grads[site][n.layer, pos].float()
    scores = weights(dbg.model)["W_E"].float() @ grad
    up, down = scores.topk(k), (-scores).topk(k)
    tok = dbg.model.to_string
    return pd.DataFrame({
        "up": [repr(tok([i])) for i in up.indices.tolist()],
        "up score": up.values.cpu().numpy(),
        "down": [repr(tok([i])) for i in down.indices.tolist()],
        "down score": (-down.values).cpu().numpy(),
    }, index=pd.RangeIndex(1, k + 1, name="rank"))
