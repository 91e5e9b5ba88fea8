"""The :class:`Debugger`: one prompt, a target and a distractor, TDB's investigation of one
prediction (node table, ablations, trace upstream)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .nodes import (COLUMNS, HEAD_TARGETS, KINDS, TRACE_MODES, DebuggerInputError, Node,
                    parse_node)
from .run import Edit, LogitTarget, NodeTarget, Run, hooked_run
from .table import build_frame, label_of, token_text, voted_tokens

ABLATIONS = ("zero", "value", "mean", "pattern_mean")


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
            f"single next tokens. Choose a word that is one token (usually with a leading "
            f"space).")
    return ids[0]


class Debugger:
    """One prompt, a target and a distractor token: the TDB investigation of one prediction.

    ``Debugger(model, " When Mary and John ... to", " Mary", " John")``. ``prompt`` is a string
    (tokenised without BOS unless ``prepend_bos``) or a 1-D token tensor. ``sae``: a residual
    SAE (:class:`helpers.ReluSAE`) spliced in at its ``hook_resid_pre`` with its error node, so
    its latents (``L<layer>.<i>@<pos>``) are nodes: in the table, ablatable, traceable.
    """

    def __init__(self, model, prompt, target, distractor, *, prepend_bos: bool = False,
                 sae=None, _target_spec=None, _edits: tuple[Edit, ...] = ()):
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
                f"The target and the distractor are the same token "
                f"({model.to_string([self.target_id])!r}): the direction of interest would be "
                f"zero. Pick two different tokens.")
        self.prepend_bos = prepend_bos
        if sae is not None:
            from .latents import check_sae_fits

            check_sae_fits(model, sae)
            bos = getattr(model.tokenizer, "bos_token_id", None)
            if getattr(sae, "prepend_bos", None) and int(self.tokens[0, 0]) != bos:
                raise DebuggerInputError(
                    "This SAE was trained on contexts that start with the BOS token, and this "
                    "prompt does not: build the debugger with prepend_bos=True (without BOS, "
                    "position 0's large residual is one the SAE never saw).")
            device = torch.device(model.cfg.device)
            if sae.W_enc.device != device and hasattr(sae, "to"):
                sae = sae.to(device)
        self.sae = sae
        self._target = _target_spec or LogitTarget(self.target_id, self.distractor_id)
        self._edits = tuple(_edits)
        self._run_cache: Run | None = None
        self._forward_cache: Run | None = None
        self._frame: pd.DataFrame | None = None

    def _derive(self, *, target=None, edits=None) -> "Debugger":
        return Debugger(self.model, self.tokens[0], self.target_id, self.distractor_id,
                        prepend_bos=self.prepend_bos, sae=self.sae,
                        _target_spec=target or self._target,
                        _edits=self._edits if edits is None else edits)

    # ----------------------------------------------------------------- basics
    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def str_tokens(self) -> list[str]:
        return [self.model.to_string([t]) for t in self.tokens[0].tolist()]

    @property
    def _run(self) -> Run:
        if self._run_cache is None:
            self._run_cache = hooked_run(self.model, self.tokens, self._target, self._edits,
                                         sae=self.sae)
        return self._run_cache

    @property
    def _forward(self) -> Run:
        """The run without gradients, for the value alone (ablation sweeps)."""
        if self._run_cache is not None:
            return self._run_cache
        if self._forward_cache is None:
            self._forward_cache = hooked_run(self.model, self.tokens, self._target,
                                             self._edits, sae=self.sae, need_grad=False)
        return self._forward_cache

    @property
    def target_description(self) -> str:
        return self._target.describe(self.model)

    @property
    def value(self) -> float:
        """The current target's value: the logit difference, or the traced node's value."""
        return self._forward.value

    @property
    def logit_diff(self) -> float:
        """logit(target) − logit(distractor) at the last token (on this run's ablations)."""
        last = self._forward.logits
        return float(last[self.target_id] - last[self.distractor_id])

    @property
    def ablations(self) -> list[str]:
        """This debugger's ablations, as ``"<node> -> <how>"`` lines."""
        return [f"{e.node.label} -> {e.how}" + (f" {e.fill:g}" if e.how == "value" else "")
                for e in self._edits]

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
        return parse_node(spec, self.model, self.n_tokens, sae=self.sae)

    # ----------------------------------------------------------------- the node table
    def frame(self) -> pd.DataFrame:
        """Every node: all heads × token pairs, all neurons × tokens, the SAE's active latents
        and error node (with an SAE), embeddings and biases."""
        if self._frame is None:
            self._frame = build_frame(self)
        return self._frame

    def table(self, sort_by: str = "est_total_effect", *, n: int | None = 20,
              kind: str | Sequence[str] | None = ("head", "neuron"), layers=None,
              ascending: bool = False, by_magnitude: bool = True,
              top_tokens: int = 3) -> pd.DataFrame:
        """The node table: ``n`` rows sorted by ``sort_by`` (by |value| unless
        ``by_magnitude=False``), filtered by ``kind`` and ``layers`` (an int, a range or a
        list).

        Each row is labelled (``node``: pass it to :meth:`ablate` or :meth:`trace`) and, for
        heads, neurons and latents, shows the tokens its write up- and down-votes most
        through the unembedding (``top_tokens`` each; 0 to skip).
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
        out.insert(0, "node", [label_of(r) for r in out.itertuples()])
        toks = self.str_tokens
        out.insert(1, "tokens", [token_text(r, toks) for r in out.itertuples()])
        if top_tokens:
            out["up_voted"], out["down_voted"] = voted_tokens(self, out, top_tokens)
        return out.reset_index(drop=True)

    def voted_tokens(self, node, k: int = 5) -> tuple[str, str]:
        """``(up, down)``: the ``k`` tokens one node's write up- and down-votes most through
        the unembedding (the table's columns, for one node at one position)."""
        n = self.node(node)
        if n.dest is None:
            raise DebuggerInputError(f"Give {n.label!r} at one position.")
        rows = self.frame()
        rows = rows[(rows.kind == n.kind) & (rows.layer == n.layer) & (rows["index"] == n.index)
                    & (rows.dest == n.dest) & (rows.src == (n.src if n.kind == "head" else -1))]
        if rows.empty:
            raise DebuggerInputError(f"{n.label!r} is not in this debugger's table.")
        up, down = voted_tokens(self, rows, k)
        return up[0], down[0]

    # ----------------------------------------------------------------- token effects
    def token_effects(self) -> pd.DataFrame:
        """Per prompt token: summed estimated total effect of the embeddings, the heads (summed
        by destination token, as TDB's token display credits them, and by source token, where
        the information comes from) and the neurons (by token)."""
        f = self.frame()
        out = pd.DataFrame({"token": self.str_tokens},
                           index=pd.RangeIndex(self.n_tokens, name="position"))
        heads = f[f.kind == "head"]
        out["embeddings"] = f[f.kind == "embed"].groupby("dest")["est_total_effect"].sum()
        out["heads (destination)"] = heads.groupby("dest")["est_total_effect"].sum()
        out["heads (source)"] = heads.groupby("src")["est_total_effect"].sum()
        out["MLP neurons"] = f[f.kind == "neuron"].groupby("dest")["est_total_effect"].sum()
        return out.fillna(0.0)

    def token_effect_view(self, *, mode: str | None = None):
        """circuitsvis view of :meth:`token_effects` (one colour scale per column)."""
        from ..display import token_effect_view

        eff = self.token_effects()
        cols = list(eff.columns[1:])
        return token_effect_view(list(eff["token"]), eff[cols].to_numpy(), cols, mode=mode)

    def attention_view(self, heads, *, mode: str | None = None):
        """circuitsvis view of the attention patterns of ``heads`` (labels ``"H9.9"`` or
        ``(layer, head)`` pairs) on this run (ablations included)."""
        from ..display import attention_view

        pairs = []
        for h in [heads] if isinstance(heads, (str, Node, tuple)) else list(heads):
            node = self.node(f"H{h[0]}.{h[1]}" if isinstance(h, tuple) else h)
            if node.kind != "head":
                raise DebuggerInputError(f"attention_view shows heads, not {node.label!r}.")
            pairs.append((node.layer, node.index))
        pattern = self._run.acts["pattern"]
        return attention_view(self.str_tokens, torch.stack(
            [pattern[L, h] for L, h in pairs]).float().cpu(), pairs, mode=mode)

    # ----------------------------------------------------------------- interventions
    def ablate(self, nodes, *, how: str = "zero", value: float | None = None,
               reference=None, means: dict | None = None) -> "Debugger":
        """A new debugger with ``nodes`` ablated (on top of this one's ablations).

        ``how``: ``"zero"`` (TDB) sets each node's activation to 0; ``"value"`` to ``value``;
        ``"mean"`` (the IOI chapter's mean ablation) replaces a whole head's output ``z`` at
        every position, or a neuron's activation, by its mean over ``reference`` prompts
        (``[n, seq]`` tokens of this prompt's length, e.g. p_ABC); ``"pattern_mean"`` replaces
        a head's attention probabilities by their reference mean (values stay clean). For a
        head the activation is the attention probability, so zeroing it at one pair removes
        exactly that pair's write (the other pairs are not renormalised). ``means``: the
        :func:`reference_means` of ``reference``, computed once for many ablations."""
        if isinstance(nodes, pd.DataFrame):
            nodes = list(nodes["node"])
        elif isinstance(nodes, (str, Node, pd.Series)):
            nodes = [nodes]
        parsed = [self.node(n) for n in nodes]
        if how not in ABLATIONS:
            raise DebuggerInputError(f"how must be one of {ABLATIONS}, got {how!r}.")
        if (how == "value") != (value is not None):
            raise DebuggerInputError("Give value= with how='value' (and only then).")
        if how in ("mean", "pattern_mean") and means is None:
            means = reference_means(self, reference)
        edits = tuple(make_edit(n, how, value, means) for n in parsed)
        return self._derive(edits=self._edits + edits)

    def trace(self, node, through: str = "qk", *, target: str = "score",
              versus: int | None = None) -> "Debugger":
        """Trace upstream from ``node``: a debugger whose target is that node's activation.

        Heads (at one token pair): ``through`` = ``"q"``, ``"k"`` or ``"qk"`` keeps gradients
        only through the query, the key or both, and ``target`` picks what is traced: the
        pre-softmax attention ``"score"`` at the pair, ``"score_diff"`` (that score minus
        the score towards source ``versus``) or ``"prob"`` (the attention probability after
        the softmax). ``"v"`` makes the target the pair's write projected on the gradient this
        debugger's target has at the head's output, with gradients only through the value.
        Neurons and latents (at one token, ``through="input"``): the activation. The new
        table lists only the nodes upstream of the traced node.
        """
        n = self.node(node)
        if n.dest is None:
            raise DebuggerInputError(
                f"Trace a node at one position (e.g. {n.label} 14<-4 or {n.label}@14), "
                f"not {n.label!r} at every position.")
        if n.kind != "head":
            if through not in ("qk", "input"):
                raise DebuggerInputError(
                    f"A {n.kind} has no query, key or value: trace it with through='input'.")
            return self._derive(target=NodeTarget(n, "input", "activation"))
        if through not in TRACE_MODES:
            raise DebuggerInputError(
                f"through must be one of {TRACE_MODES} for a head, got {through!r}.")
        if through == "v":
            direction = self._run.grads["attn_out"][n.layer, n.dest].detach().clone()
            return self._derive(target=NodeTarget(n, "v", "write", direction))
        if target not in HEAD_TARGETS:
            raise DebuggerInputError(f"target must be one of {HEAD_TARGETS}, got {target!r}.")
        if target == "score_diff" and (versus is None or not 0 <= versus <= n.dest
                                       or versus == n.src):
            raise DebuggerInputError(
                f"target='score_diff' needs versus=<another source position 0..{n.dest}>, "
                f"not {versus!r}.")
        return self._derive(target=NodeTarget(n, through, target, None, versus))

    def __repr__(self) -> str:
        abl = f", {len(self._edits)} ablations" if self._edits else ""
        return f"Debugger({self.prompt!r}, target: {self.target_description}{abl})"


# --------------------------------------------------------------------------- ablation fills


@torch.no_grad()
def reference_means(dbg: Debugger, reference) -> dict[str, torch.Tensor]:
    """Means over reference prompts: ``z`` ``[seq, L, H, d_head]`` (the IOI chapter's
    :func:`helpers.head_means`), ``post`` ``[L, seq, d_mlp]`` and ``pattern`` ``[L, H, seq,
    seq]``."""
    from ..ablation import head_means
    from ..hooks import capture, hook_name

    if reference is None:
        raise DebuggerInputError(
            "Mean ablation needs reference prompts (reference=[n, seq] tokens).")
    ref = torch.as_tensor(reference).long()
    ref = ref[None] if ref.ndim == 1 else ref
    if ref.shape[1] != dbg.n_tokens:
        raise DebuggerInputError(
            f"Reference prompts have {ref.shape[1]} tokens, this prompt {dbg.n_tokens}: mean "
            f"ablation needs the same positions.")
    model = dbg.model
    ref = ref.to(model.cfg.device)
    L = model.cfg.n_layers
    z = head_means(model, ref)[0]
    names = [hook_name(s, layer) for s in ("post", "pattern") for layer in range(L)]
    _, store = capture(model, ref, names)
    post = torch.stack([store[hook_name("post", i)].float().mean(0) for i in range(L)])
    pattern = torch.stack([store[hook_name("pattern", i)].float().mean(0) for i in range(L)])
    return {"z": z, "post": post, "pattern": pattern}


def make_edit(node: Node, how: str, value, means) -> Edit:
    """The :class:`Edit` that ablates ``node`` the ``how`` way."""
    every = slice(None)
    dest = every if node.dest is None else node.dest
    if how in ("zero", "value"):
        fill = 0.0 if how == "zero" else float(value)
        site = {"head": "pattern", "neuron": "post", "latent": "latent"}[node.kind]
        return Edit(node, site, fill, how)
    if node.kind == "latent":
        raise DebuggerInputError(
            f"{node.label}: latents take how='zero' or how='value', not {how!r}.")
    if how == "mean":
        if node.kind == "head":
            if node.dest is not None:
                raise DebuggerInputError(
                    f"Mean ablation replaces a whole head's output z (the IOI chapter's way): "
                    f"ablate {node.label.split(' ')[0]!r}, not the pair {node.label!r} "
                    f"(how='pattern_mean' works on pairs).")
            return Edit(node, "z", means["z"][:, node.layer, node.index], how)
        return Edit(node, "post", means["post"][node.layer][dest, node.index], how)
    if node.kind != "head":
        raise DebuggerInputError(f"how='pattern_mean' is for heads, not {node.label!r}.")
    p = means["pattern"][node.layer, node.index]
    return Edit(node, "pattern", p[dest, every if node.src is None else node.src], how)
