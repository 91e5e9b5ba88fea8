"""Nodes of the debugger's graph and their labels.

A **node** is named by a label: ``"H9.9 14<-4"`` (head 9.9, destination 14, source 4; ``←``
works too), ``"H9.9"`` (every pair of the head, for ablations), ``"N5.1234@7"`` (neuron 1234
of layer 5 at position 7), ``"N5.1234"`` (every position), ``"L8.517@3"`` (latent 517 of the
residual SAE read at layer 8, at position 3) or ``"L8.517"`` (every position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..models import CasebookError

TRACE_MODES = ("q", "k", "qk", "v")
#: What a head trace makes its target (``through`` q/k/qk only; V traces a write).
HEAD_TARGETS = ("score", "score_diff", "prob")
KINDS = ("head", "neuron", "latent", "sae_error", "embed", "bias")
COLUMNS = ("activation", "write_norm", "direct_effect", "est_total_effect")


class DebuggerInputError(CasebookError, ValueError):
    """A prompt, token or node the debugger cannot use (the message says which and why)."""


@dataclass(frozen=True)
class Node:
    """A head (at a token pair, or all pairs), an MLP neuron or an SAE latent (at a token, or
    all tokens)."""

    kind: str  # "head" | "neuron" | "latent"
    layer: int
    index: int  # head, neuron or latent number
    dest: int | None = None  # destination token (heads) or token; None = all
    src: int | None = None  # source token (heads); None = all

    @property
    def label(self) -> str:
        if self.kind == "head":
            pair = "" if self.dest is None else f" {self.dest}<-{self.src}"
            return f"H{self.layer}.{self.index}{pair}"
        at = "" if self.dest is None else f"@{self.dest}"
        return f"{'N' if self.kind == 'neuron' else 'L'}{self.layer}.{self.index}{at}"

    def __str__(self) -> str:
        return self.label


_HEAD_RE = re.compile(r"^H(\d+)\.(\d+)(?:\s+(\d+)\s*(?:<-|←)\s*(\d+))?$")
_POINT_RE = re.compile(r"^([NL])(\d+)\.(\d+)(?:\s*@\s*(\d+))?$")


def read_label(spec: Any) -> Node:
    """A :class:`Node` from a label, a ``Node`` or a node-table row (not checked)."""
    if isinstance(spec, pd.Series):
        spec = spec["node"] if "node" in spec else spec.name
    if isinstance(spec, Node):
        return spec
    if not isinstance(spec, str):
        raise DebuggerInputError(
            f"A node is a label, a Node or a table row, not {type(spec).__name__}.")
    text = spec.strip()
    m, p = _HEAD_RE.match(text), _POINT_RE.match(text)
    if m:
        pair = (None, None) if m.group(3) is None else (int(m.group(3)), int(m.group(4)))
        return Node("head", int(m.group(1)), int(m.group(2)), *pair)
    if p:
        kind = "neuron" if p.group(1) == "N" else "latent"
        return Node(kind, int(p.group(2)), int(p.group(3)),
                    None if p.group(4) is None else int(p.group(4)))
    raise DebuggerInputError(
        f"Cannot read node {spec!r}: write heads as 'H<layer>.<head>' or "
        f"'H<layer>.<head> <dest><-<src>', neurons as 'N<layer>.<neuron>' or "
        f"'N<layer>.<neuron>@<position>', SAE latents as 'L<layer>.<latent>@<position>'.")


def parse_node(spec: Any, model, n_tokens: int, *, sae=None) -> Node:
    """A :class:`Node` from a label, a ``Node`` or a node-table row; checked to exist.

    Latents (``L<layer>.<i>``) exist only when ``sae`` is given and read ``layer``'s residual
    stream (the debugger was built with that SAE)."""
    node = read_label(spec)
    cfg = model.cfg
    problems = []
    if node.kind == "latent":
        if sae is None:
            raise DebuggerInputError(
                f"{node.label!r} is an SAE latent, but this debugger has no SAE: build it with "
                f"Debugger(..., sae=sae) to splice the SAE into the forward pass.")
        if node.layer != sae_layer(sae):
            problems.append(f"latents at layer {node.layer} (the SAE reads layer "
                            f"{sae_layer(sae)}'s residual stream)")
        size = int(sae.W_dec.shape[0])
    else:
        size = cfg.n_heads if node.kind == "head" else cfg.d_mlp
    if not 0 <= node.layer < cfg.n_layers:
        problems.append(f"layer {node.layer} (the model has {cfg.n_layers})")
    if not 0 <= node.index < size:
        problems.append(f"{node.kind} {node.index} (each layer has {size})")
    if node.dest is not None and not 0 <= node.dest < n_tokens:
        problems.append(f"position {node.dest} (the prompt has {n_tokens} tokens)")
    if node.kind == "head" and node.dest is not None and not 0 <= node.src <= node.dest:
        problems.append(f"source {node.src} (a head at {node.dest} reads positions "
                        f"0..{node.dest})")
    if problems:
        raise DebuggerInputError(
            f"Node {node.label!r} does not exist: no " + "; no ".join(problems) + ".")
    return node


def sae_layer(sae) -> int:
    """The layer whose ``hook_resid_pre`` a residual SAE reads (from its ``hook_name``)."""
    m = re.match(r"^blocks\.(\d+)\.hook_resid_pre$", getattr(sae, "hook_name", "") or "")
    if not m:
        raise DebuggerInputError(
            f"The debugger splices residual SAEs read at blocks.<layer>.hook_resid_pre; this "
            f"one reads {getattr(sae, 'hook_name', None)!r}.")
    return int(m.group(1))
