"""Private engine behind the activation-patching sweeps (``patch_heads`` and friends).

A sweep runs the *target* prompts once per configuration with one activation taken from the
*source* run. Done plainly, every configuration is a full forward pass. This engine does
less, and stays exact:

* **Start where the patch starts.** Patching something in layer ``L`` cannot change layers
  ``0 … L−1``, so each configuration starts from the target run's cached residual stream at
  the entry of layer ``L`` (``blocks.L.hook_resid_pre``) and runs only the bridge's blocks
  ``L … n−1``, with the patch applied through the bridge's own hook points
  (``model.hooks``). These are the very modules ``model.forward`` runs: no second forward
  pass is written here. ``TransformerBridge.forward(start_at_layer=L)`` (TransformerLens
  4.3) gives the same numbers but still executes blocks ``0 … L−1`` internally and
  discards their output, so it saves no time; it is kept as a fallback, used when a
  self-check on the model's last block fails (``_Engine.mode``).
* **Stop where the metric reads.** For a :class:`LogitDiffMetric` only
  ``W_U[:, answer] − W_U[:, wrong]`` is applied to each prompt's metric row; for a
  :class:`PositionMetric` only those rows are unembedded. Positions after a prompt's metric
  position cannot reach it (a causal model never looks right), so prompts are run in groups
  of similar metric position, each cut after its last one (``_partition``; IOI prompts are
  right-padded to the longest, ~19% of the token grid is padding). Other metrics get full
  logits, one group.
* **Start where the patch starts, in positions too.** A patch changes nothing before the
  first (prompt, position) where it puts in a different activation (an earlier position of
  the source run is the target's own when the prompts agree up to there). Positions before
  that column are not run again: each block's attention reads their keys and values from
  the target run, through the bridge's own key-value cache path (``past_key_values``, a
  ``transformers`` ``DynamicCache``, the path ``generate`` uses), so a patch at column
  ``p`` runs ``seq − p`` positions. This is what makes by-position sweeps and the layer
  sweep at END cheap; a patch at every position still starts at the prompts' first
  differing token.
* **Skip what patches nothing.** Where every patched (prompt, position) of a group precedes
  that prompt's first token that differs between the two runs, the source's activation is
  the target's own: the group keeps its unpatched rows without a run, and a configuration
  that touches no group is the unpatched metric.

Every sweep starts with two checks on the model: the last block run from the cached residual
(its second half of positions, the first half read from the key-value cache) must reproduce
the cached final residual (else the cache is not used; if the last block alone does not
reproduce it either, the bridge-forward fallback is used), and the
scorer's unpatched value must equal the metric of the library's full logits (else full
logits are used throughout).

Configurations starting at the same layer are stacked along the batch axis (``copies``,
from the public ``batch_tokens``; by default up to ``patching.DEFAULT_SWEEP_TOKENS`` tokens a
pass): with few prompts the bridge's fixed Python cost per pass dominates and stacking pays
(4× at 2 prompts), with many it does not (``scripts/bench_activation_patching.py --copies``). Memory: the target's
``resid_pre`` at the needed layers plus the source's patched activations, each
``[batch, seq, d_model]`` per layer (GPT-2 medium, 100 prompts × 20 tokens: ~8 MB a layer,
~0.4 GB for a whole-model sweep), the target's keys and values from the first patched layer
on (twice that; above ``KV_CACHE_BYTES`` the position cut is off and they are not kept), and
one configuration's activations at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .hooks import hook_name
from .metrics import LogitDiffMetric, PositionMetric, metric_positions, metric_scalar

FINAL = hook_name("final_resid")  # the residual after the last block

Site = str  # "z" (a head's hook_z), "resid_pre", "resid_mid", "resid_post"
FORCE_MODE: str | None = None  # "start_at_layer" forces the fallback (benchmarks and tests)
USE_KV_CACHE = True  # False: every configuration runs all positions (benchmarks and tests)
KV_CACHE_BYTES = 2 * 2**30  # most memory the target's keys and values may take


@dataclass(frozen=True)
class Config:
    """One configuration: at ``layer``'s ``site`` (and ``head`` for ``"z"``), take the
    source's activation where ``mask`` ``[batch, seq]`` is True."""

    layer: int
    site: Site
    head: int | None
    mask: torch.Tensor


class _Stop(Exception):
    pass


def _hook_name(layer: int, site: Site) -> str:
    return hook_name(site, layer)


def _start_layer(cfg: Config) -> int:
    return cfg.layer + 1 if cfg.site == "resid_post" else cfg.layer


@torch.no_grad()
def _capture(model, tokens: torch.Tensor, names: Sequence[str], *, until: str | None = None) -> dict:
    """Activations at ``names`` (and ``until``) from one run of ``tokens``; the run stops as
    soon as all are recorded, so later layers and the logits are not computed."""
    store: dict[str, torch.Tensor] = {}
    wanted = list(dict.fromkeys([*names, *([until] if until else [])]))

    def saver(name):
        def save(t, hook):
            store[name] = t.detach()
            if len(store) == len(wanted):
                raise _Stop

        return save

    try:
        model.run_with_hooks(tokens, fwd_hooks=[(n, saver(n)) for n in wanted])
    except _Stop:
        pass
    missing = set(wanted) - set(store)
    if missing:
        raise RuntimeError(f"activation patching: hook points never fired: {sorted(missing)}")
    return store


def _partition(cuts: torch.Tensor, overhead: int) -> list[torch.Tensor]:
    """Prompts grouped by the length they need (``cuts``: metric position + 1 each), so each
    group runs without the padding after its longest metric position. Contiguous runs of the
    sorted lengths, chosen to minimise sum(group size × group length) + ``overhead`` per group
    (a pass over a small group costs fixed Python and kernel overhead)."""
    values = sorted(set(cuts.tolist()))
    counts = [int((cuts == v).sum()) for v in values]
    k = len(values)
    best = [0.0] + [math.inf] * k  # best[j]: cost of the first j distinct lengths
    back = [0] * (k + 1)
    for j in range(1, k + 1):
        n = 0
        for i in range(j - 1, -1, -1):  # group = values[i:j], length values[j - 1]
            n += counts[i]
            cost = best[i] + n * values[j - 1] + overhead
            if cost < best[j]:
                best[j], back[j] = cost, i
    groups, j = [], k
    while j > 0:
        i = back[j]
        lo, hi = values[i], values[j - 1]
        groups.append(((cuts >= lo) & (cuts <= hi)).nonzero(as_tuple=True)[0])
        j = i
    return groups[::-1]


GROUP_OVERHEAD_ROWS = 64  # token rows an extra pass over one more prompt group costs (a guess: not measured reliably)


class _Part:
    """A group of prompts run together, cut after its last metric position."""

    def __init__(self, idx: torch.Tensor, cut: int, differs: torch.Tensor, mpos: torch.Tensor | None):
        self.idx, self.cut, self.n = idx, cut, len(idx)
        self.differs = differs[idx, :cut]
        self.mpos = mpos[idx] if mpos is not None else None
        self.rows = torch.arange(self.n, device=idx.device)
        self.resid: dict[int, torch.Tensor] = {}
        self.src: dict[str, torch.Tensor] = {}
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer: [n, heads, cut, d_head] each

    def mask(self, c: Config) -> torch.Tensor:
        return c.mask[self.idx, : self.cut]

    def touched(self, c: Config) -> bool:
        """False when every patched (prompt, position) of this group precedes that prompt's
        first token that differs between the runs: the source's activation there is the
        target's own (or the position is cut: it cannot reach the metric)."""
        return bool((self.mask(c) & self.differs).any())

    def first_column(self, group: Sequence[Config]) -> int:
        """The first column where some configuration of ``group`` puts in a different
        activation for some prompt of this group: earlier columns need not run again."""
        live = torch.zeros(self.cut, dtype=torch.bool, device=self.idx.device)
        for c in group:
            live |= (self.mask(c) & self.differs).any(0)
        hit = live.nonzero()
        return int(hit[0]) if len(hit) else self.cut


class _Engine:
    """Target run cached once; runs configurations from their start layer, scores them."""

    def __init__(self, model, target: torch.Tensor, source: torch.Tensor, metric: Callable, copies=None):
        self.model = model
        self.metric = metric
        self.n_layers = model.cfg.n_layers
        dev = model.cfg.device
        self.target, self.source = target.to(dev), source.to(dev)
        self.batch, self.seq = self.target.shape
        self.copies = max(1, int(copies)) if copies else 1
        self.kind = (
            "ld" if isinstance(metric, LogitDiffMetric) else "pos" if isinstance(metric, PositionMetric) else "full"
        )
        self.rows = torch.arange(self.batch, device=dev)
        self.differs = (self.target != self.source).long().cumsum(1) > 0
        self.mpos = None
        if self.kind != "full":
            self.mpos = metric_positions(metric, self.batch, self.seq).to(dev)
        if self.kind == "ld":
            answer = torch.as_tensor(metric.answer, device=dev)
            wrong = torch.as_tensor(metric.wrong, device=dev)
            self.direction = (model.W_U[:, answer] - model.W_U[:, wrong]).T  # [batch, d_model]
            self.bias = model.b_U[answer] - model.b_U[wrong]
        self.mode = "blocks"
        self.use_kv = USE_KV_CACHE

    # ---- captures ------------------------------------------------------------------

    def prepare(self, configs: Sequence[Config]) -> None:
        n = self.n_layers
        starts = sorted({_start_layer(c) for c in configs} | {n - 1})
        names = [hook_name("resid_pre", L) for L in starts if L < n]
        kv_layers = list(range(min(starts), n))
        d_model = self.model.cfg.d_model
        kv_bytes = 2 * len(kv_layers) * self.batch * self.seq * d_model * self.model.W_U.element_size()
        if FORCE_MODE or kv_bytes > KV_CACHE_BYTES:
            self.use_kv = False
        if self.use_kv:
            names += [hook_name(kind, L) for L in kv_layers for kind in ("k", "v")]
        acts = _capture(self.model, self.target, names, until=FINAL)
        final = acts[FINAL]
        src_names = sorted({_hook_name(c.layer, c.site) for c in configs}, key=_order)
        src = _capture(self.model, self.source, src_names) if src_names else {}
        kv = {}
        if self.use_kv:  # hook_k / hook_v are [batch, seq, heads, d_head]; the cache wants heads first
            kv = {L: (acts.pop(hook_name("k", L)).transpose(1, 2), acts.pop(hook_name("v", L)).transpose(1, 2)) for L in kv_layers}
        self._check_blocks(acts[hook_name("resid_pre", n - 1)], final, kv.get(n - 1))
        library = metric_scalar(self.metric(self.model.unembed(self.model.ln_final(final))))
        if self.kind != "full":
            self.base_rows = final[self.rows, self.mpos]  # [batch, d]
            self.base = self._score_rows(self.base_rows[None])[0]
            if not math.isclose(self.base, library, rel_tol=1e-5, abs_tol=1e-5):
                self.kind, self.mpos = "full", None  # the scorer disagrees: read full logits
        if self.kind == "full":
            self.base = library
            groups = [(self.rows, self.seq)]
        else:
            cuts = self.mpos + 1
            groups = [(g, int(cuts[g].max())) for g in _partition(cuts.cpu(), GROUP_OVERHEAD_ROWS)]
        self.parts = []
        for idx, cut in groups:
            part = _Part(idx.to(self.rows.device), cut, self.differs, self.mpos)
            part.resid = {L: acts[hook_name("resid_pre", L)][idx, :cut] for L in starts if L < n}
            part.resid[n] = final[idx, :cut]
            part.src = {k: v[idx, :cut] for k, v in src.items()}
            part.kv = {L: (k[idx, :, :cut], v[idx, :, :cut]) for L, (k, v) in kv.items()}
            self.parts.append(part)

    def _check_blocks(self, resid_last: torch.Tensor, final: torch.Tensor, kv_last=None) -> None:
        """Run the last block from the cached residual: does it reproduce the full run? First
        with the first half of the positions read from the key-value cache; if that fails,
        without the cache; if that fails too, the bridge-forward fallback is used."""
        last = self.n_layers - 1

        def same(got, want):
            return torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

        if FORCE_MODE:
            self.mode, self.use_kv = FORCE_MODE, False
            return
        if self.use_kv and kv_last is not None:
            s = self.seq // 2
            cache = _kv_cache({last: (kv_last[0][:, :, :s], kv_last[1][:, :, :s])}, last, 1)
            if same(self._blocks(resid_last[:, s:], last, [], cache), final[:, s:]):
                return
        self.use_kv = False
        if not same(self._blocks(resid_last, last, []), final):
            self.mode = "start_at_layer"

    # ---- running -------------------------------------------------------------------

    def _blocks(self, x: torch.Tensor, start: int, fwd_hooks, cache=None) -> torch.Tensor:
        """The residual after the last block, running the bridge's blocks ``start …``;
        ``cache``: the keys and values of the positions before ``x``'s (``_kv_cache``)."""
        if start >= self.n_layers:
            return x
        model = self.model
        if self.mode == "start_at_layer":
            out: dict[str, torch.Tensor] = {}

            def grab(t, hook):
                out["x"] = t
                raise _Stop

            try:
                model.run_with_hooks(x, start_at_layer=start, fwd_hooks=[*fwd_hooks, (FINAL, grab)])
            except _Stop:
                pass
            return out["x"]
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            for block in model.blocks[start:]:
                y = block(x) if cache is None else block(x, past_key_values=cache)
                x = y[0] if isinstance(y, tuple) else y
        return x

    def _score_rows(self, rows: torch.Tensor) -> list[float]:
        """Metric of each copy from its prompts' final residual rows ``[k, batch, d]``."""
        normed = self.model.ln_final(rows)
        if self.kind == "ld":
            return ((normed * self.direction).sum(-1) + self.bias).mean(-1).tolist()
        logits = self.model.unembed(normed)
        return [metric_scalar(self.metric.fn(logits[i])) for i in range(len(rows))]

    def _score_full(self, final: torch.Tensor) -> list[float]:
        """Metric of each copy from its final residual ``[k · batch, seq, d]`` (full logits)."""
        k = final.shape[0] // self.batch
        logits = self.model.unembed(self.model.ln_final(final)).view(k, self.batch, self.seq, -1)
        return [metric_scalar(self.metric(logits[i])) for i in range(k)]

    def _start(self, part: _Part, L: int, group: Sequence[Config], s: int) -> torch.Tensor:
        """The stacked residual entering layer ``L`` at positions ``s …``, with
        resid_pre/resid_post patches applied."""
        k = len(group)
        x = part.resid[L][:, s:]
        x = x.repeat(k, 1, 1) if k > 1 else x.clone()
        view = x.view(k, part.n, part.cut - s, -1)
        for i, c in enumerate(group):
            if c.site in ("resid_pre", "resid_post"):
                src = part.src[_hook_name(c.layer, c.site)][:, s:]
                view[i] = torch.where(part.mask(c)[:, s:, None], src, view[i])
        return x

    def _hooks(self, part: _Part, group: Sequence[Config], s: int):
        """Hooks patching ``hook_z`` / ``resid_mid`` (positions ``s …``) for each copy of the
        stacked batch."""
        by_name: dict[str, list[tuple[int, Config]]] = {}
        for i, c in enumerate(group):
            if c.site in ("z", "resid_mid"):
                by_name.setdefault(_hook_name(c.layer, c.site), []).append((i, c))
        k, n, cut = len(group), part.n, part.cut - s
        hooks = []
        for name, items in by_name.items():
            src = part.src[name][:, s:]

            def patch(t, hook, _items=items, _src=src):
                t = t.clone()
                view = t.view(k, n, cut, *t.shape[2:])
                for i, c in _items:
                    m = part.mask(c)[:, s:, None]
                    if c.site == "z":
                        view[i, :, :, c.head] = torch.where(m, _src[:, :, c.head], view[i, :, :, c.head])
                    else:
                        view[i] = torch.where(m, _src, view[i])
                return t

            hooks.append((name, patch))
        return hooks

    def _final(self, part: _Part, L: int, group: Sequence[Config]) -> tuple[torch.Tensor, int]:
        """(final residual ``[k · n, cut − s, d]`` of the group's configurations, ``s``): the
        run from layer ``L``, positions ``s …`` only (earlier ones from the key-value cache)."""
        s = part.first_column(group) if self.use_kv else 0
        s = min(s, part.cut - 1)
        cache = _kv_cache(part.kv, L, len(group), s) if s > 0 else None
        x = self._blocks(self._start(part, L, group, s), L, self._hooks(part, group, s), cache)
        return x, s

    def _run_group(self, L: int, group: Sequence[Config]) -> list[float]:
        """Values of up to ``copies`` configurations starting at layer ``L``, run together."""
        k = len(group)
        if self.kind == "full":
            part = self.parts[0]
            final, s = self._final(part, L, group)
            if s > 0:  # the positions before s are the target's own
                final = torch.cat([part.resid[self.n_layers][:, :s].repeat(k, 1, 1), final], 1)
            return self._score_full(final)
        rows = self.base_rows[None].repeat(k, 1, 1)  # untouched prompts keep their rows
        for part in self.parts:
            live = [i for i, c in enumerate(group) if part.touched(c)]
            if not live:
                continue
            sub = [group[i] for i in live]
            final, s = self._final(part, L, sub)
            reached = part.mpos >= s  # a metric row before s is the target's own
            got = final.view(len(sub), part.n, part.cut - s, -1)[:, part.rows[reached], part.mpos[reached] - s]
            for a, i in enumerate(live):
                rows[i, part.idx[reached]] = got[a]
        return self._score_rows(rows)

    @torch.no_grad()
    def run(self, configs: Sequence[Config], progress: bool = False, desc: str = "patching") -> list[float]:
        configs = list(configs)
        if not configs:
            return []
        dev = self.target.device
        configs = [Config(c.layer, c.site, c.head, c.mask.to(dev)) for c in configs]
        self.prepare(configs)
        values: list[float | None] = [None] * len(configs)
        todo: dict[int, list[int]] = {}
        for j, c in enumerate(configs):
            if any(part.touched(c) for part in self.parts):
                todo.setdefault(_start_layer(c), []).append(j)
            else:
                values[j] = self.base
        bar = None
        if progress:
            from .display import tqdm

            bar = tqdm(total=len(configs), desc=desc)
            bar.update(len(configs) - sum(map(len, todo.values())))
        for L in sorted(todo):
            idx = todo[L]
            for g in range(0, len(idx), self.copies):
                chunk = idx[g : g + self.copies]
                for j, v in zip(chunk, self._run_group(L, [configs[j] for j in chunk])):
                    values[j] = v
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return values  # type: ignore[return-value]


def _kv_cache(kv: dict, start: int, copies: int, s: int | None = None):
    """A ``transformers`` ``DynamicCache`` holding layers ``start …`` keys and values
    (``kv[L]``, ``[n, heads, pos, d_head]``), positions ``:s``, repeated ``copies`` times
    along the batch: what the bridge's attention concatenates its new positions to."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for L in sorted(kv):
        if L < start:
            continue
        k, v = kv[L]
        if s is not None:
            k, v = k[:, :, :s], v[:, :, :s]
        if copies > 1:
            k, v = k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)
        cache.update(k, v, L)
    return cache


def _order(name: str) -> tuple[int, int]:
    parts = name.split(".")
    layer = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
    rank = {"hook_resid_pre": 0, "attn": 1, "hook_resid_mid": 2, "hook_resid_post": 3}.get(parts[2] if len(parts) > 2 else "", 4)
    return layer, rank


# --------------------------------------------------------------------------------------
# The sweeps the public functions delegate to
# --------------------------------------------------------------------------------------


def _column(batch: int, seq: int, p: int, device) -> torch.Tensor:
    m = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    m[:, p] = True
    return m


def sweep_heads(model, target, source, metric, heads, mask, *, copies=None, progress=False) -> list[float]:
    """One value per head in ``heads``: its ``hook_z`` from the source at ``mask``."""
    eng = _Engine(model, target, source, metric, copies)
    configs = [Config(L, "z", h, mask) for L, h in heads]
    return eng.run(configs, progress, "heads")


def sweep_heads_by_position(
    model, target, source, metric, heads, positions, *, copies=None, progress=False
) -> list[list[float]]:
    """``values[i][j]``: head ``heads[i]`` patched at column ``positions[j]`` only."""
    eng = _Engine(model, target, source, metric, copies)
    batch, seq = eng.batch, eng.seq
    cols = {p: _column(batch, seq, p, eng.target.device) for p in positions}
    configs = [Config(L, "z", h, cols[p]) for L, h in heads for p in positions]
    flat = eng.run(configs, progress, "heads by position")
    n = len(positions)
    return [flat[i * n : (i + 1) * n] for i in range(len(heads))]


def sweep_resid(model, target, source, metric, layers, masks, *, hook="resid_pre", copies=None, progress=False):
    """``values[i][j]``: layer ``layers[i]``'s residual ``hook`` from the source at ``masks[j]``."""
    eng = _Engine(model, target, source, metric, copies)
    configs = [Config(L, hook, None, m) for L in layers for m in masks]
    flat = eng.run(configs, progress, f"{hook} sweep")
    n = len(masks)
    return [flat[i * n : (i + 1) * n] for i in range(len(layers))]
