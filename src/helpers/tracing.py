"""Locating factual recall: causal tracing, attention knockout, logit lens, head gains.

Generic tools for "where is a fact recalled?" experiments on any prompt set with a subject
span and a one-token answer read at each prompt's last token:

* :func:`causal_trace` (Meng et al. 2022, ROME): Gaussian noise on the subject tokens'
  embeddings, then restore one clean state (a hidden state, or the outputs of a window of
  MLP / attention layers) at one (layer, position) and measure the answer probability.
  All restorations of a prompt run as batched rows of a few forward passes.
* :func:`noise_scale`: ROME's noise level, ``factor`` × the standard deviation of the
  subject tokens' embeddings.
* :func:`trace_by_role`: averages traces over prompts by aligning token roles (first /
  middle / last subject token, first subsequent token, further tokens, last token).
* :func:`attention_knockout` (Geva et al. 2023): block attention edges from chosen source
  positions to the last position in a window of layers (scores set to −∞ before the
  softmax) and measure the answer probability.
* :func:`logit_lens`: the answer's probability and rank when each layer's residual stream
  at one position is decoded by the final LayerNorm and unembedding.
* :func:`fit_head_gains`: least squares fit of a target vector (e.g. an MLP's output) on
  several vectors (e.g. heads' outputs): one scalar gain per vector, shared over every
  dimension, plus one intercept vector; with R².
* :func:`head_outputs`: chosen heads' outputs (``z W_O``, residual basis) at one position
  per prompt, the regressors of :func:`fit_head_gains`.
* :func:`scale_hooks`: forward hooks that multiply heads' or MLPs' outputs by factors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .circuits import parse_head
from .hooks import as_tokens, capture, hook_name, logits_at_positions

__all__ = [
    "TRACE_KINDS",
    "ROLES",
    "TraceResult",
    "noise_scale",
    "subject_mask",
    "causal_trace",
    "trace_by_role",
    "KnockoutResult",
    "attention_knockout",
    "logit_lens",
    "GainFit",
    "fit_head_gains",
    "head_outputs",
    "scale_hooks",
    "layer_window",
    "trace_heatmap",
]

TRACE_KINDS = ("resid", "mlp", "attn")
_TRACE_HOOK = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
ROLES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def layer_window(layer: int, window: int, n_layers: int) -> range:
    """Layers ``[layer - window // 2, layer + window - window // 2)``, clipped to the model.

    ``window=1`` is the layer itself; ``window=10`` centred as in ROME's tracing code.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 layer, got {window}")
    lo = max(0, layer - window // 2)
    hi = min(n_layers, layer + window - window // 2)
    return range(lo, hi)


def subject_mask(first: torch.Tensor, last: torch.Tensor, seq: int) -> torch.Tensor:
    """``[n, seq]`` bool, True on positions ``first[i] .. last[i]`` (inclusive)."""
    first, last = torch.as_tensor(first).reshape(-1), torch.as_tensor(last).reshape(-1)
    if (last < first).any():
        raise ValueError("a subject's last token comes before its first")
    ar = torch.arange(seq)[None]
    return (ar >= first[:, None]) & (ar <= last[:, None])


def noise_scale(model, tokens, mask: torch.Tensor, factor: float = 3.0) -> float:
    """``factor`` × the standard deviation of the embeddings of the tokens under ``mask``.

    ROME's tracing notebook uses 3 × the std of subject-token embeddings (over its facts).
    The std is over every coordinate of every selected token's embedding ``W_E[token]``.
    """
    tokens = as_tokens(tokens)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != tokens.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the tokens' shape {tuple(tokens.shape)}")
    if not mask.any():
        raise ValueError("the subject mask selects no token: no subject to measure")
    emb = model.W_E[tokens[mask].to(model.W_E.device)]
    return float(factor * emb.float().std())


@dataclass
class TraceResult:
    """Causal-tracing output for ``n`` prompts.

    ``scores[i, layer, pos]``: mean answer probability over the noise samples with the state
    of kind ``kind`` restored at (``layer`` window, ``pos``); NaN at padding. ``clean[i]``,
    ``corrupted[i]``: the answer probability without noise, and with noise and no
    restoration. ``subject_first``/``subject_last``/``lengths``: per prompt.
    """

    kind: str
    window: int
    n_samples: int
    noise: float
    scores: torch.Tensor
    clean: torch.Tensor
    corrupted: torch.Tensor
    subject_first: torch.Tensor
    subject_last: torch.Tensor
    lengths: torch.Tensor

    @property
    def indirect_effect(self) -> torch.Tensor:
        """``scores − corrupted``: the probability each restoration brings back."""
        return self.scores - self.corrupted[:, None, None]


def _restore_hooks(kind, window, n_layers, configs, clean_acts):
    """Hooks restoring clean ``kind`` outputs per row: row r restores ``configs[r]``."""
    by_layer: dict[int, tuple[list[int], list[int]]] = {}
    for r, (layer, pos) in enumerate(configs):
        for L in layer_window(layer, window, n_layers):
            rows, poss = by_layer.setdefault(L, ([], []))
            rows.append(r)
            poss.append(pos)
    hooks = []
    for L, (rows, poss) in by_layer.items():
        name = hook_name(_TRACE_HOOK[kind], L)
        r_t, p_t = torch.tensor(rows), torch.tensor(poss)

        def restore(t, hook, _r=r_t, _p=p_t, _clean=clean_acts[name]):
            t = t.clone()
            t[_r.to(t.device), _p.to(t.device)] = _clean[0, _p.to(t.device)].to(t.dtype)
            return t

        hooks.append((name, restore))
    return hooks


@torch.no_grad()
def causal_trace(
    model,
    tokens,
    answers,
    subject_first,
    subject_last,
    *,
    lengths=None,
    kind: str = "resid",
    window: int | None = None,
    n_samples: int = 10,
    noise: float | None = None,
    seed: int = 0,
    batch_tokens: int = 4096,
    progress: bool = False,
) -> TraceResult:
    """ROME's causal tracing of the answer probability at each prompt's last token.

    For each prompt: add Gaussian noise (std ``noise``; default :func:`noise_scale` of these
    prompts, 3 × the subject-embedding std) to the token embeddings of the subject
    (positions ``subject_first..subject_last``), ``n_samples`` draws (seeded per prompt,
    the same draws for every restoration); then, for every layer ``l`` and position ``p``,
    restore the clean value of:

    * ``kind="resid"``: the hidden state after block ``l`` (``resid_post``; ``window`` 1);
    * ``kind="mlp"`` / ``"attn"``: the MLP / attention outputs at ``p`` in the ``window``
      layers around ``l`` (:func:`layer_window`; default 10, ROME's).

    Positions before the subject are never noised, so restoring them is a no-op: their
    score is set to the corrupted probability without running them. ``tokens``:
    ``[n, L]`` right-padded (``lengths`` gives each prompt's real length; default ``L``);
    ``answers``: ``[n]`` token ids. Rows are batched ``batch_tokens`` tokens at a time.
    """
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {TRACE_KINDS}, got {kind!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    tokens = as_tokens(tokens)
    n, seq = tokens.shape
    lengths = torch.full((n,), seq) if lengths is None else torch.as_tensor(lengths).reshape(-1)
    first = torch.as_tensor(subject_first).reshape(-1).long()
    last = torch.as_tensor(subject_last).reshape(-1).long()
    answers = torch.as_tensor(answers).reshape(-1).long()
    for what, v in (("lengths", lengths), ("subject_first", first), ("subject_last", last), ("answers", answers)):
        if v.numel() != n:
            raise ValueError(f"{what} has {v.numel()} entries for {n} prompts")
    if ((first < 0) | (last < first) | (last >= lengths - 1)).any():
        i = int(((first < 0) | (last < first) | (last >= lengths - 1)).nonzero()[0])
        raise ValueError(
            f"prompt {i}: subject span {int(first[i])}..{int(last[i])} must lie before its last "
            f"token ({int(lengths[i]) - 1})"
        )
    window = (1 if kind == "resid" else 10) if window is None else int(window)
    mask = subject_mask(first, last, seq)
    if noise is None:
        noise = noise_scale(model, tokens, mask)
    n_layers, d_model, dev = model.cfg.n_layers, model.cfg.d_model, model.cfg.device
    names = [hook_name(_TRACE_HOOK[kind], L) for L in range(n_layers)]
    scores = torch.full((n, n_layers, seq), math.nan)
    clean_p, corrupt_p = torch.zeros(n), torch.zeros(n)
    iterator = range(n)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"causal tracing ({kind})")
    for i in iterator:
        Li, f, s_last, a = int(lengths[i]), int(first[i]), int(last[i]), int(answers[i])
        toks = tokens[i : i + 1, :Li].to(dev)
        logits, acts = capture(model, toks, names)
        clean_p[i] = logits[0, -1].float().softmax(-1)[a].cpu()
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        draws = noise * torch.randn(n_samples, s_last - f + 1, d_model, generator=g)
        draws = draws.to(dev)

        def add_noise(emb, hook, _draws=draws, _f=f, _l=s_last):
            emb = emb.clone()
            rows = emb.shape[0]
            idx = torch.arange(rows, device=emb.device) % _draws.shape[0]
            emb[:, _f : _l + 1] = emb[:, _f : _l + 1] + _draws[idx].to(emb.dtype)
            return emb

        noised = toks.expand(n_samples, Li)
        base = logits_at_positions(model, noised, None, fwd_hooks=[(hook_name("embed"), add_noise)])
        corrupt_p[i] = base.float().softmax(-1)[:, a].mean().cpu()
        scores[i, :, :f] = corrupt_p[i]
        configs = [(L, p) for L in range(n_layers) for p in range(f, Li)]
        per_pass = max(1, batch_tokens // (Li * n_samples))
        out = []
        for start in range(0, len(configs), per_pass):
            chunk = configs[start : start + per_pass]
            rows = [c for c in chunk for _ in range(n_samples)]  # row r uses draw r % n_samples
            hooks = [(hook_name("embed"), add_noise)]
            hooks += _restore_hooks(kind, window, n_layers, rows, acts)
            lg = logits_at_positions(model, toks.expand(len(rows), Li), None, fwd_hooks=hooks)
            p = lg.float().softmax(-1)[:, a].reshape(len(chunk), n_samples).mean(-1)
            out.append(p.cpu())
        out = torch.cat(out).reshape(n_layers, Li - f)
        scores[i, :, f:Li] = out
    return TraceResult(kind, window, n_samples, float(noise), scores, clean_p, corrupt_p, first, last, lengths)


def trace_by_role(result: TraceResult, *, effect: bool = True) -> torch.Tensor:
    """``[len(ROLES), n_layers]``: the trace averaged over prompts by token role.

    Roles (:data:`ROLES`) as in ROME's averaged figures: first, middle and last subject
    tokens, the first token after the subject, further tokens, the last token. A role a
    prompt does not have (a one-token subject has no first/middle split: its one token is
    the *last* subject token; middle tokens are averaged first within each prompt) is left
    out of that role's mean. ``effect``: indirect effect (default) or raw probability.
    """
    values = result.indirect_effect if effect else result.scores
    n, n_layers, _ = values.shape
    sums = torch.zeros(len(ROLES), n_layers)
    counts = torch.zeros(len(ROLES), 1)
    for i in range(n):
        f, s_last, end = int(result.subject_first[i]), int(result.subject_last[i]), int(result.lengths[i]) - 1
        groups = {
            0: [f] if s_last > f else [],
            1: list(range(f + 1, s_last)),
            2: [s_last],
            3: [s_last + 1] if s_last + 1 < end else [],
            4: list(range(s_last + 2, end)),
            5: [end],
        }
        for role, pos in groups.items():
            if pos:
                sums[role] += values[i][:, pos].mean(-1)
                counts[role] += 1
    return sums / counts.clamp(min=1) + torch.where(counts > 0, 0.0, math.nan)


@dataclass
class KnockoutResult:
    """``clean[i]``: answer probability; ``knocked[i, l]``: with the edges blocked in the
    window of layers around ``l``; ``relative_change``: (knocked − clean) / clean."""

    window: int
    clean: torch.Tensor
    knocked: torch.Tensor

    @property
    def relative_change(self) -> torch.Tensor:
        return (self.knocked - self.clean[:, None]) / self.clean[:, None]


@torch.no_grad()
def attention_knockout(
    model,
    tokens,
    answers,
    sources: torch.Tensor,
    *,
    lengths=None,
    window: int = 1,
    batch_tokens: int = 4096,
    progress: bool = False,
) -> KnockoutResult:
    """Geva et al.'s attention knockout: block last-token → ``sources`` attention.

    For every layer ``l``, every head of the layers in :func:`layer_window` ``(l, window)``
    gets its attention score from each prompt's last token to the positions in
    ``sources`` (``[n, L]`` bool) set to −∞ before the softmax, so the last token cannot
    read them there; the answer probability at the last token is measured. The last token
    itself is never blocked (it always attends to itself). Every (prompt, layer) pair is a
    row of a batched pass (``batch_tokens`` tokens per pass).
    """
    tokens = as_tokens(tokens)
    n, seq = tokens.shape
    lengths = torch.full((n,), seq) if lengths is None else torch.as_tensor(lengths).reshape(-1)
    sources = torch.as_tensor(sources, dtype=torch.bool)
    if sources.shape != (n, seq):
        raise ValueError(f"sources must be a [n, L] = {(n, seq)} bool mask, got {tuple(sources.shape)}")
    answers = torch.as_tensor(answers).reshape(-1).long()
    n_layers, dev = model.cfg.n_layers, model.cfg.device
    last = (lengths - 1).long()
    src = sources.clone()
    src[torch.arange(n), last] = False  # the last token always sees itself
    clean = logits_at_positions(model, tokens.to(dev), last).float().softmax(-1)
    clean = clean[torch.arange(n), answers.to(clean.device)].cpu()
    # one row per (prompt, window centre), packed ``batch_tokens`` tokens per pass
    configs = [(i, l) for i in range(n) for l in range(n_layers)]
    per_pass = max(1, batch_tokens // seq)
    knocked = torch.zeros(n, n_layers)
    starts = range(0, len(configs), per_pass)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="attention knockout")
    for start in starts:
        chunk = configs[start : start + per_pass]
        prompt = torch.tensor([i for i, _ in chunk])
        hooks = []
        for L in range(n_layers):
            rows = [r for r, (_, l) in enumerate(chunk) if L in layer_window(l, window, n_layers)]
            if not rows:
                continue

            def block(scores, hook, _rows=torch.tensor(rows)):
                r = _rows.to(scores.device)
                q = last[prompt[_rows]].to(scores.device)
                keys = src[prompt[_rows]].to(scores.device)  # [rows, seq]
                sub = scores[r, :, q]  # [rows, heads, seq]
                sub = sub.masked_fill(keys[:, None, :], -math.inf)
                scores = scores.clone()
                scores[r, :, q] = sub
                return scores

            hooks.append((hook_name("attn_scores", L), block))
        lg = logits_at_positions(model, tokens[prompt].to(dev), last[prompt], fwd_hooks=hooks)
        p = lg.float().softmax(-1)[torch.arange(len(chunk)), answers[prompt].to(lg.device)]
        for (i, l), v in zip(chunk, p.cpu()):
            knocked[i, l] = v
    return KnockoutResult(window, clean, knocked)


@torch.no_grad()
def logit_lens(model, tokens, answers, positions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prob, rank)``, each ``[n_layers + 1, n]``: the answer decoded from the residual.

    Row ``l < n_layers`` decodes the residual stream entering block ``l`` (``resid_pre``);
    the last row is the final residual (the model's own output). Decoding applies the final
    LayerNorm and the unembedding. ``rank`` 0 means the answer is the top token.
    """
    tokens = as_tokens(tokens)
    n, seq = tokens.shape
    answers = torch.as_tensor(answers).reshape(-1).long()
    pos = torch.full((n,), seq - 1) if positions is None else torch.as_tensor(positions).reshape(-1)
    n_layers = model.cfg.n_layers
    names = [hook_name("resid_pre", L) for L in range(n_layers)] + [hook_name("final_resid")]
    _, acts = capture(model, tokens.to(model.cfg.device), names)
    rows = torch.arange(n)
    probs, ranks = [], []
    for name in names:
        resid = acts[name][rows.to(acts[name].device), pos.to(acts[name].device)]
        logits = model.unembed(model.ln_final(resid[:, None]))[:, 0].float()
        ans = logits[rows, answers.to(logits.device)]
        probs.append(logits.softmax(-1)[rows, answers.to(logits.device)].cpu())
        ranks.append((logits > ans[:, None]).sum(-1).cpu())
    return torch.stack(probs), torch.stack(ranks)


@dataclass
class GainFit:
    """``target[i] ≈ intercept + Σ_k gains[k] · vectors[i, k]`` (least squares).

    ``r2``: 1 − residual / total sum of squares (about the mean over prompts, summed over
    every dimension). ``labels``: the vectors' names.
    """

    gains: torch.Tensor
    intercept: torch.Tensor
    r2: float
    labels: list[str]


def fit_head_gains(vectors: torch.Tensor, target: torch.Tensor, labels: Sequence[str] | None = None) -> GainFit:
    """Fit one scalar gain per vector: ``target ≈ b + Σ_k g_k · vectors[:, k]``.

    ``vectors``: ``[n, k, d]`` (e.g. ``k`` heads' outputs at the last token of ``n``
    prompts, each in the residual basis); ``target``: ``[n, d]`` (e.g. the next MLP's output
    there); ``b``: ``[d]``, one intercept per dimension. The ``k`` gains are shared by all
    ``d`` dimensions and solved by ordinary least squares over all ``n × d`` numbers after
    centring each dimension over prompts. A gain above 1 means the target repeats and
    amplifies that vector; about 0, ignores it; negative, writes against it (erases).
    """
    X = torch.as_tensor(vectors).double()
    y = torch.as_tensor(target).double()
    if X.ndim != 3 or y.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[2] != y.shape[1]:
        raise ValueError(f"vectors must be [n, k, d] and target [n, d]; got {tuple(X.shape)} and {tuple(y.shape)}")
    n, k, _ = X.shape
    if n < 2:
        raise ValueError("fit_head_gains needs at least 2 prompts")
    Xc = X - X.mean(0, keepdim=True)
    yc = y - y.mean(0, keepdim=True)
    A = torch.einsum("njd,nkd->jk", Xc, Xc)
    b = torch.einsum("njd,nd->j", Xc, yc)
    gains = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    resid = yc - torch.einsum("k,nkd->nd", gains, Xc)
    total = float((yc**2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else math.nan
    intercept = y.mean(0) - torch.einsum("k,kd->d", gains, X.mean(0))
    labels = list(labels) if labels is not None else [str(j) for j in range(k)]
    if len(labels) != k:
        raise ValueError(f"{len(labels)} labels for {k} vectors")
    return GainFit(gains.float(), intercept.float(), r2, labels)


@torch.no_grad()
def head_outputs(model, tokens, positions, heads: Sequence[str], extra: Sequence[str] = ()):
    """``(outputs [n, k, d], acts)``: each head's output ``z W_O`` at ``positions[i]``.

    ``heads``: ``"L.H"`` labels, from any layers (bias ``b_O`` excluded: it belongs to no
    head). ``extra``: further hook names to capture in the same pass, returned in ``acts``
    already indexed at the positions (``[n, ...]``), e.g. an MLP's output to fit on them.
    """
    tokens = as_tokens(tokens)
    n = tokens.shape[0]
    pos = torch.as_tensor(positions).reshape(-1).long()
    if pos.numel() != n:
        raise ValueError(f"{pos.numel()} positions for {n} prompts")
    if not heads:
        raise ValueError("head_outputs needs at least one head")
    parsed = []
    for label in heads:
        L, h = parse_head(str(label))
        if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"{label!r}: no such head in this model")
        parsed.append((L, h))
    names = sorted({hook_name("z", L) for L, _ in parsed}) + list(extra)
    _, acts = capture(model, tokens.to(model.cfg.device), names)
    rows = torch.arange(n)
    at = {k: v[rows.to(v.device), pos.to(v.device)] for k, v in acts.items()}
    outs = [at[hook_name("z", L)][:, h] @ model.W_O[L, h] for L, h in parsed]
    return torch.stack(outs, 1), {k: at[k] for k in extra}


def scale_hooks(model, factors: Mapping[str, float]) -> list:
    """Forward hooks multiplying components' outputs by factors, at every position.

    Keys: heads ``"L.H"`` (their ``hook_z``, hence their output) or MLPs ``"MLP L"``
    (``hook_mlp_out``). A factor of 0 zero-ablates; 1 changes nothing.
    """
    heads: dict[int, list[tuple[int, float]]] = {}
    hooks = []
    for key, factor in factors.items():
        key_s = str(key).strip()
        if key_s.upper().startswith("MLP"):
            L = int(key_s[3:].strip())
            if not 0 <= L < model.cfg.n_layers:
                raise ValueError(f"{key!r}: no MLP {L} in a {model.cfg.n_layers}-layer model")

            def mlp(t, hook, _f=float(factor)):
                return t * _f

            hooks.append((hook_name("mlp_out", L), mlp))
        else:
            L, h = parse_head(key_s)
            if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
                raise ValueError(f"{key!r}: no such head in this model")
            heads.setdefault(L, []).append((h, float(factor)))
    for L, items in heads.items():

        def z_scale(z, hook, _items=items):
            z = z.clone()
            for h, f in _items:
                z[:, :, h] = z[:, :, h] * f
            return z

        hooks.append((hook_name("z", L), z_scale))
    return hooks


def trace_heatmap(values, row_labels: Sequence[str], *, title: str, colorbar_title: str = "",
                  marked: Sequence[str] = ()):
    """Rows (tokens or token roles) × layers heatmap; rows named in ``marked`` get a box
    and a ``▶`` before their label (e.g. the last subject token and the last token)."""
    import plotly.graph_objects as go

    z = values.detach().float().cpu().numpy() if hasattr(values, "detach") else values
    n_rows, n_layers = z.shape
    labels = [("▶ " if lab in marked else "") + lab for lab in row_labels]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n_layers)), y=labels, colorscale="Purples",
        colorbar=dict(title=colorbar_title),
        hovertemplate="%{y}<br>layer %{x}<br>%{z:.3f}<extra></extra>",
    ))
    for r, lab in enumerate(row_labels):
        if lab in marked:
            fig.add_shape(type="rect", x0=-0.5, x1=n_layers - 0.5, y0=r - 0.5, y1=r + 0.5,
                          line=dict(color="black", width=2))
    fig.update_layout(title=title, xaxis=dict(title="layer", dtick=1),
                      yaxis=dict(title="token", autorange="reversed"),
                      height=120 + 40 * n_rows)
    return fig
