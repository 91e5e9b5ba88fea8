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
    "role_values",
    "KnockoutResult",
    "attention_knockout",
    "logit_lens",
    "rome_noise_scale",
    "direct_effects",
    "neuron_direct_effects",
    "gain_by_scaling",
    "GainFit",
    "fit_head_gains",
    "head_outputs",
    "scale_hooks",
    "layer_window",
    "trace_heatmap",
    "trace_heatmaps",
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
    method: str = "fast",
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
      layers around ``l`` (:func:`layer_window`, centred on ``l`` as in ROME's code).
      ``window`` is required for these kinds: ROME's 10 was for GPT-2 XL's 48 layers.

    Positions before the subject are never noised, so restoring them is a no-op: their
    score is set to the corrupted probability without running them. ``tokens``:
    ``[n, L]`` right-padded (``lengths`` gives each prompt's real length; default ``L``);
    ``answers``: ``[n]`` token ids.

    ``method="fast"`` (default) runs each prompt once clean and once noised (all draws in
    one batch), then runs every restoration only from the first block it changes, and only
    at positions from the restored one on: the noised run's residual stream there is the
    input, and earlier positions' keys and values come from the noised run (the bridge's
    key-value cache path). All restorations at one position share one pass over the
    blocks, each joining the batch at its first block (at most ``batch_tokens`` tokens a
    pass). ``method="plain"`` runs every restoration as a full forward pass (the
    reference; ``scripts/bench_tracing.py`` compares them and prints the work each does).
    Both give the same numbers (tested to 1e-4). If a self-check of the cached path fails
    on this model, the fast method falls back to the plain one for that prompt set.
    """
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {TRACE_KINDS}, got {kind!r}")
    if method not in ("fast", "plain"):
        raise ValueError(f"method must be 'fast' or 'plain', got {method!r}")
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
    if window is None:
        if kind != "resid":
            raise ValueError(
                f"kind={kind!r} needs a window (layers restored together): ROME used 10 of "
                f"GPT-2 XL's 48 layers; scale it to the model (2-3 of GPT-2 small's 12), or 1"
            )
        window = 1
    window = int(window)
    if window < 1 or window > model.cfg.n_layers:
        raise ValueError(f"window must be 1..{model.cfg.n_layers} layers, got {window}")
    mask = subject_mask(first, last, seq)
    if noise is None:
        noise = noise_scale(model, tokens, mask)
    n_layers, d_model, dev = model.cfg.n_layers, model.cfg.d_model, model.cfg.device
    names = [hook_name(_TRACE_HOOK[kind], L) for L in range(n_layers)]
    scores = torch.full((n, n_layers, seq), math.nan)
    clean_p, corrupt_p = torch.zeros(n), torch.zeros(n)
    iterator = range(n)
    if progress:
        from .display import tqdm

        iterator = tqdm(iterator, desc=f"causal tracing ({kind}, window {window})")
    checked = method == "plain"
    for i in iterator:
        Li, f, s_last, a = int(lengths[i]), int(first[i]), int(last[i]), int(answers[i])
        toks = tokens[i : i + 1, :Li].to(dev)
        logits, acts = capture(model, toks, names)
        clean_p[i] = logits[0, -1].float().softmax(-1)[a].cpu()
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        draws = (noise * torch.randn(n_samples, s_last - f + 1, d_model, generator=g)).to(dev)
        add_noise = _noise_hook(draws, f, s_last)
        configs = [(L, p) for L in range(n_layers) for p in range(f, Li)]
        if not checked:
            checked = True
            if not _fast_path_ok(model, toks, add_noise, n_samples):
                import warnings

                warnings.warn("causal_trace: the cached fast path does not reproduce this "
                              "model's forward pass; using method='plain'", stacklevel=2)
                method = "plain"
        if method == "plain":
            noised = toks.expand(n_samples, Li)
            base = logits_at_positions(model, noised, None, fwd_hooks=[(hook_name("embed"), add_noise)])
            corrupt_p[i] = base.float().softmax(-1)[:, a].mean().cpu()
            out = _trace_plain(model, toks, a, configs, n_samples, kind, window, acts,
                               add_noise, batch_tokens)
        else:
            corrupt_p[i], out = _trace_fast(model, toks, a, configs, n_samples, kind, window,
                                            acts, add_noise, batch_tokens)
        scores[i, :, :f] = corrupt_p[i]
        scores[i, :, f:Li] = out.reshape(n_layers, Li - f)
    return TraceResult(kind, window, n_samples, float(noise), scores, clean_p, corrupt_p, first, last, lengths)


def _noise_hook(draws: torch.Tensor, f: int, s_last: int):
    """Embedding hook adding ``draws[r % n_samples]`` to the subject tokens of row ``r``."""

    def add_noise(emb, hook):
        emb = emb.clone()
        idx = torch.arange(emb.shape[0], device=emb.device) % draws.shape[0]
        emb[:, f : s_last + 1] = emb[:, f : s_last + 1] + draws.to(emb.device)[idx].to(emb.dtype)
        return emb

    return add_noise


def _trace_plain(model, toks, a, configs, n_samples, kind, window, acts, add_noise, batch_tokens):
    """Every restoration as a full forward pass of the noised prompt (the reference)."""
    n_layers, Li = model.cfg.n_layers, toks.shape[1]
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
    return torch.cat(out)


def _noised_states(model, toks, add_noise, n_samples):
    """The noised run (every draw a row): ``resid_pre`` of every layer, every layer's keys
    and values (``[S, heads, pos, d_head]``) and the final residual."""
    from ._sweeps import FINAL

    n_layers = model.cfg.n_layers
    names = [hook_name("resid_pre", L) for L in range(n_layers)]
    names += [hook_name(k, L) for L in range(n_layers) for k in ("k", "v")]
    noised = toks.expand(n_samples, toks.shape[1])
    hooks = [(hook_name("embed"), add_noise)]
    store: dict[str, torch.Tensor] = {}

    def saver(name):
        def save(t, hook):
            store[name] = t.detach()

        return save

    model.run_with_hooks(noised, fwd_hooks=hooks + [(nm, saver(nm)) for nm in [*names, FINAL]])
    resid = [store[hook_name("resid_pre", L)] for L in range(n_layers)] + [store[FINAL]]
    kv = {L: (store[hook_name("k", L)].transpose(1, 2), store[hook_name("v", L)].transpose(1, 2))
          for L in range(n_layers)}
    return resid, kv


def _run_blocks(model, x, start, fwd_hooks, cache=None, stop=None):
    """The residual after block ``stop − 1`` (default: the last), running the bridge's
    blocks ``start …`` on ``x`` (the residual entering ``start``); ``cache``: keys and
    values of earlier positions."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for block in model.blocks[start:stop]:
            y = block(x) if cache is None else block(x, past_key_values=cache)
            x = y[0] if isinstance(y, tuple) else y
    return x


def _fast_path_ok(model, toks, add_noise, n_samples) -> bool:
    """Does running the last two blocks from the noised residual, the first half of the
    positions read from the key-value cache, reproduce the noised run's final residual?"""
    from ._sweeps import _kv_cache

    resid, kv = _noised_states(model, toks, add_noise, n_samples)
    n_layers, Li = model.cfg.n_layers, toks.shape[1]
    start = max(0, n_layers - 2)
    s = Li // 2
    want = resid[n_layers][:, s:]
    try:
        cache = _kv_cache(kv, start, 1, s) if s > 0 else None
        got = _run_blocks(model, resid[start][:, s:], start, [], cache)
    except Exception:  # noqa: BLE001 - any failure means: do not use the cached path
        return False
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())))


def _start_layer(kind: str, layer: int, window: int, n_layers: int) -> int:
    """The first block a restoration changes: ``resid`` restores block ``layer``'s output,
    so the run resumes at the next block; MLP / attention restore outputs inside the
    window's first block."""
    return layer + 1 if kind == "resid" else layer_window(layer, window, n_layers)[0]


def _trace_fast(model, toks, a, configs, n_samples, kind, window, acts, add_noise, batch_tokens):
    """``(p(answer) noised, [len(configs)] restored)``: restorations run from the first
    block and position they change (see :func:`causal_trace`).

    All restorations at one position ``p`` share one pass over the blocks
    (:func:`_progressive_pass`), so no position before ``p`` is recomputed.
    """
    n_layers, Li, S = model.cfg.n_layers, toks.shape[1], n_samples
    resid, kv = _noised_states(model, toks, add_noise, S)

    def prob(final_rows):
        lg = model.unembed(model.ln_final(final_rows[:, None]))[:, 0].float()
        return lg.softmax(-1)[:, a]

    corrupted = prob(resid[n_layers][:, -1]).mean().cpu()
    values = torch.zeros(len(configs))
    by_pos: dict[int, list[int]] = {}
    for j, (_, p) in enumerate(configs):
        by_pos.setdefault(p, []).append(j)
    for p, idx in sorted(by_pos.items()):
        idx = sorted(idx, key=lambda j: _start_layer(kind, configs[j][0], window, n_layers))
        per_pass = max(1, batch_tokens // (S * (Li - p)))
        for c0 in range(0, len(idx), per_pass):
            chunk = idx[c0 : c0 + per_pass]
            values[torch.tensor(chunk)] = _progressive_pass(
                model, kind, window, [configs[j][0] for j in chunk], p, resid, kv, acts,
                prob, corrupted)
    return corrupted, values


def _progressive_pass(model, kind, window, layers, p, resid, kv, acts, prob, corrupted):
    """``[len(layers)]``: the mean answer probability (over the noise draws, the rows of
    ``resid``) of each restoration at position ``p`` of the layers ``layers`` (sorted by
    first block), all run in one pass over the blocks.

    A restoration joins the batch at the first block it changes, its input there the noised
    run's residual at positions ``p …`` (for ``resid``, with the restored state at ``p``);
    each block then runs once on every restoration already live, earlier positions' keys
    and values read from the noised run (``kv``). A hidden state restored after the last
    block changes nothing after it: the answer's probability is the clean one if ``p`` is
    the last position, the corrupted one otherwise.
    """
    from ._sweeps import _kv_cache

    n_layers, S, last = model.cfg.n_layers, resid[0].shape[0], resid[0].shape[1] - 1
    name = _TRACE_HOOK[kind]
    starts = [_start_layer(kind, L, window, n_layers) for L in layers]
    out = torch.full((len(layers),), float(corrupted))
    if p == last:
        clean_final = acts[hook_name(name, n_layers - 1)][0, p][None]
        for c, st in enumerate(starts):
            if st >= n_layers:
                out[c] = prob(clean_final).cpu()[0]
    live = [c for c, st in enumerate(starts) if st < n_layers]
    if not live:
        return out
    x = None
    for L in range(starts[live[0]], n_layers):
        joining = [c for c in live if starts[c] == L]
        if joining:
            new = resid[L][:, p:].repeat(len(joining), 1, 1)
            if kind == "resid":  # the restored state is this block's input at position p
                new[:, 0] = acts[hook_name(name, L - 1)][0, p].to(new.dtype)
            x = new if x is None else torch.cat([x, new])
        n_live = x.shape[0] // S
        hooks = []
        if kind != "resid":
            rows = [r for i, c in enumerate(live[:n_live])
                    if L in layer_window(layers[c], window, n_layers)
                    for r in range(i * S, (i + 1) * S)]
            if rows:
                r_t = torch.tensor(rows, device=x.device)
                clean = acts[hook_name(name, L)][0, p].to(x.dtype)

                def restore(t, hook, _r=r_t, _c=clean):
                    t = t.clone()
                    t[_r, 0] = _c
                    return t

                hooks.append((hook_name(name, L), restore))
        cache = _kv_cache({L: kv[L]}, L, n_live, p) if p > 0 else None
        x = _run_blocks(model, x, L, hooks, cache, stop=L + 1)
    out[torch.tensor(live)] = prob(x[:, -1]).reshape(-1, S).mean(-1).cpu()
    return out


def role_values(result: TraceResult, *, effect: bool = True) -> torch.Tensor:
    """``[n, len(ROLES), n_layers]``: each prompt's trace by token role (NaN where the prompt
    has no such role). Roles (:data:`ROLES`) as in ROME's averaged figures: first, middle and
    last subject tokens, the first token after the subject, further tokens, the last token.
    A one-token subject has no first/middle split: its one token is the *last* subject
    token; several middle or further tokens are averaged within the prompt. ``effect``:
    indirect effect (default) or raw probability."""
    values = result.indirect_effect if effect else result.scores
    n, n_layers, _ = values.shape
    out = torch.full((n, len(ROLES), n_layers), math.nan)
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
                out[i, role] = values[i][:, pos].mean(-1)
    return out


def trace_by_role(result: TraceResult, *, effect: bool = True) -> torch.Tensor:
    """``[len(ROLES), n_layers]``: the trace averaged over prompts by token role
    (:func:`role_values`; a role a prompt does not have is left out of that role's mean)."""
    return role_values(result, effect=effect).nanmean(0)


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
        from .display import tqdm

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
def logit_lens(model, tokens, answers, positions=None, *, site: str = "resid_pre") -> tuple[torch.Tensor, torch.Tensor]:
    """``(prob, rank)``, each ``[n_layers + 1, n]``: the answer decoded from the residual.

    Row ``l < n_layers`` decodes the residual stream at ``site`` of layer ``l``:
    ``"resid_pre"`` (default) is the stream *entering* block ``l`` (before its attention),
    ``"resid_mid"`` the stream after block ``l``'s attention and *before its MLP*. The last
    row is the final residual (the model's own output). Decoding applies the final
    LayerNorm and the unembedding. ``rank`` 0 means the answer is the top token.
    """
    if site not in ("resid_pre", "resid_mid"):
        raise ValueError(f"site must be 'resid_pre' or 'resid_mid', got {site!r}")
    tokens = as_tokens(tokens)
    n, seq = tokens.shape
    answers = torch.as_tensor(answers).reshape(-1).long()
    pos = torch.full((n,), seq - 1) if positions is None else torch.as_tensor(positions).reshape(-1)
    n_layers = model.cfg.n_layers
    names = [hook_name(site, L) for L in range(n_layers)] + [hook_name("final_resid")]
    _, acts = capture(model, tokens.to(model.cfg.device), names)
    rows = torch.arange(n)
    probs, ranks = [], []
    for name in names:
        resid = acts[name][rows.to(acts[name].device), pos.to(acts[name].device)]
        logits = model.unembed(model.ln_final(resid[:, None]))[:, 0].float()
        ans = logits[rows.to(logits.device), answers.to(logits.device)]
        probs.append(logits.softmax(-1)[rows.to(logits.device), answers.to(logits.device)].cpu())
        ranks.append((logits > ans[:, None]).sum(-1).cpu())
    return torch.stack(probs), torch.stack(ranks)


def rome_noise_scale(model, subjects: Sequence[str], tokenizer=None, factor: float = 3.0) -> float:
    """ROME's noise level: ``factor`` × the std of the token embeddings of every subject.

    As ROME's ``collect_embedding_std`` does, each subject string is tokenised on its own
    (no leading space, no BOS) and the std is taken over every coordinate of every token
    embedding ``W_E[token]`` of every subject (ROME passes all 1,209 known subjects).
    """
    if not subjects:
        raise ValueError("rome_noise_scale needs at least one subject")
    tok = tokenizer if tokenizer is not None else model.tokenizer
    from .prompts import _encode_plain  # no BOS (a bridge's tokenizer adds one)

    ids = [i for s in subjects for i in _encode_plain(tok, str(s))]
    if not ids:
        raise ValueError("the subjects tokenise to nothing")
    emb = model.W_E[torch.tensor(ids, device=model.W_E.device)]
    return float(factor * emb.float().std())


def _answer_directions(model, answers: torch.Tensor) -> torch.Tensor:
    """``[n, d_model]``: ``W_U[:, answer] − mean over the vocabulary of W_U`` (so a direct
    effect along it is the change of the answer's logit minus the mean logit)."""
    W_U = model.W_U
    return (W_U[:, answers.to(W_U.device)] - W_U.mean(-1, keepdim=True)).T


@torch.no_grad()
def direct_effects(model, tokens, positions, answers, components: Sequence[str]):
    """``[n, k]``: each component's direct effect on the answer's logit minus the mean logit.

    ``components``: heads ``"L.H"`` (output ``z W_O``, bias excluded) and MLPs
    ``"MLP L"``; each output at ``positions[i]`` goes through the final LayerNorm with its
    scale frozen at the run's (centred, divided by the scale) and onto
    ``W_U[:, answer] − mean(W_U)``. ``answers``: ``[n]`` token ids (e.g. the correct
    answer, or the top wrong token for a specificity test).
    """
    tokens = as_tokens(tokens)
    n = tokens.shape[0]
    pos = torch.as_tensor(positions).reshape(-1).long()
    answers = torch.as_tensor(answers).reshape(-1).long()
    if pos.numel() != n or answers.numel() != n:
        raise ValueError(f"positions and answers need one entry per prompt ({n})")
    parsed = []
    for c in components:
        c = str(c).strip()
        if c.upper().startswith("MLP"):
            L = int(c[3:].strip())
            if not 0 <= L < model.cfg.n_layers:
                raise ValueError(f"{c!r}: no MLP {L} in a {model.cfg.n_layers}-layer model")
            parsed.append(("mlp", L, None))
        else:
            L, h = parse_head(c)
            if not (0 <= L < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
                raise ValueError(f"{c!r}: no such head in this model")
            parsed.append(("head", L, h))
    names = {hook_name("z" if k == "head" else "mlp_out", L) for k, L, _ in parsed}
    names = sorted(names) + [hook_name("final_scale")]
    _, acts = capture(model, tokens, names)
    dev = acts[names[-1]].device
    rows, p = torch.arange(n, device=dev), pos.to(dev)
    scale = acts[hook_name("final_scale")][rows, p]  # [n, 1]
    direction = _answer_directions(model, answers).to(dev)
    out = []
    for kind, L, h in parsed:
        if kind == "head":
            v = acts[hook_name("z", L)][rows, p, h] @ model.W_O[L, h]
        else:
            v = acts[hook_name("mlp_out", L)][rows, p]
        v = (v - v.mean(-1, keepdim=True)) / scale
        out.append((v * direction).sum(-1))
    return torch.stack(out, 1).float().cpu()


@torch.no_grad()
def neuron_direct_effects(model, tokens, positions, answers, layer: int):
    """``[n, d_mlp]``: each neuron of MLP ``layer``: its activation × ``W_out`` row, through
    the frozen final LayerNorm onto ``W_U[:, answer] − mean(W_U)`` (as :func:`direct_effects`).
    The neurons' effects plus ``b_out``'s sum to the MLP's direct effect."""
    tokens = as_tokens(tokens)
    n = tokens.shape[0]
    if not 0 <= int(layer) < model.cfg.n_layers:
        raise ValueError(f"no MLP {layer} in a {model.cfg.n_layers}-layer model")
    pos = torch.as_tensor(positions).reshape(-1).long()
    answers = torch.as_tensor(answers).reshape(-1).long()
    if pos.numel() != n or answers.numel() != n:
        raise ValueError(f"positions and answers need one entry per prompt ({n})")
    post, scale_name = hook_name("post", layer), hook_name("final_scale")
    _, acts = capture(model, tokens, [post, scale_name])
    dev = acts[post].device
    rows, p = torch.arange(n, device=dev), pos.to(dev)
    W_out = model.W_out[layer]  # [d_mlp, d_model]
    d = _answer_directions(model, answers).to(dev)  # [n, d_model]
    W_c = W_out - W_out.mean(-1, keepdim=True)  # the final LayerNorm centres
    per = acts[post][rows, p] * (d @ W_c.T)  # [n, d_mlp]
    return (per / acts[scale_name][rows, p]).float().cpu()


@torch.no_grad()
def gain_by_scaling(model, tokens, positions, head: str, target: str, factor: float = 0.0):
    """``[n]``: the causal gain of ``target`` (a hook name, e.g. an MLP's output) on ``head``.

    Runs the prompts clean and with ``head``'s output scaled by ``factor`` (its ``hook_z``),
    and measures how much of the head's change the target's output follows, along the
    head's own output direction: ``g_i = <t_i(1) − t_i(factor), o_i> / ((1 − factor) ·
    |o_i|²)`` with ``o_i`` the head's clean output at ``positions[i]``. ``g = 0``: the
    target ignores the head (the head passes through to the residual with weight 1);
    ``g > 0``: it amplifies it (net weight ``1 + g``); ``g ≈ −1``: it erases it.
    """
    if factor == 1:
        raise ValueError("factor must differ from 1 (scaling by 1 changes nothing)")
    tokens = as_tokens(tokens)
    n = tokens.shape[0]
    pos = torch.as_tensor(positions).reshape(-1).long()
    o, clean = head_outputs(model, tokens, pos, [head], extra=[target])
    _, acts = capture(model, tokens, [target], fwd_hooks=scale_hooks(model, {head: factor}))
    dev = o.device
    rows = torch.arange(n, device=acts[target].device)
    scaled = acts[target][rows, pos.to(rows.device)].to(dev)
    o = o[:, 0]
    change = (clean[target].to(dev) - scaled) * o
    return (change.sum(-1) / ((1 - factor) * (o * o).sum(-1))).float().cpu()


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
    X = torch.as_tensor(vectors).float()  # float32: float64 does not exist on MPS
    y = torch.as_tensor(target).float()
    if X.ndim != 3 or y.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[2] != y.shape[1]:
        raise ValueError(f"vectors must be [n, k, d] and target [n, d]; got {tuple(X.shape)} and {tuple(y.shape)}")
    n, k, _ = X.shape
    if n < 2:
        raise ValueError("fit_head_gains needs at least 2 prompts")
    Xc = X - X.mean(0, keepdim=True)
    yc = y - y.mean(0, keepdim=True)
    A = torch.einsum("njd,nkd->jk", Xc, Xc)
    b = torch.einsum("njd,nd->j", Xc, yc)
    # the k × k system is tiny: solve it on the CPU (lstsq is missing on some accelerators)
    gains = torch.linalg.lstsq(A.cpu(), b.cpu()[:, None]).solution[:, 0].to(X.device)
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


def trace_heatmaps(panels: Sequence[tuple], row_labels: Sequence[str], *, title: str,
                   colorbar_title: str = "", marked: Sequence[str] = (),
                   xaxis: str = "window centre (layer)"):
    """Several trace maps side by side in one figure, sharing the y-axis (token roles).

    ``panels``: ``(values [rows, n_layers], subtitle)`` pairs (e.g. hidden state, MLP and
    attention windows), drawn on one colour scale; rows named in ``marked`` get a ``▶``.
    The x-axis is the restored window's centre (for a single hidden state, its layer).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not panels:
        raise ValueError("trace_heatmaps needs at least one panel")
    mats = [v.detach().float().cpu().numpy() if hasattr(v, "detach") else v for v, _ in panels]
    zmax = max(float(abs(m[~(m != m)]).max()) if (m == m).any() else 0.0 for m in mats) or 1.0
    labels = [("▶ " if lab in marked else "") + lab for lab in row_labels]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                        subplot_titles=[t for _, t in panels], horizontal_spacing=0.03)
    for c, z in enumerate(mats, start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(z.shape[1])), y=labels, colorscale="RdBu", zmid=0,
            zmin=-zmax, zmax=zmax, showscale=(c == len(mats)),
            colorbar=dict(title=colorbar_title),
            hovertemplate="%{y}<br>centre %{x}<br>%{z:.3f}<extra></extra>"), 1, c)
        fig.update_xaxes(title_text=xaxis if c == (len(mats) + 1) // 2 else "", dtick=2,
                         row=1, col=c)
    fig.update_yaxes(autorange="reversed", row=1, col=1, title_text="token role")
    fig.update_layout(title=title, height=160 + 36 * len(row_labels), margin=dict(l=10))
    return fig
