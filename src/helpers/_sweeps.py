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
  :class:`PositionMetric` only those rows are unembedded; and positions after the last
  metric position are never computed (a causal model never looks right). Other metrics get
  full logits.
* **Skip what patches nothing.** A configuration whose positions all precede the prompt's
  first token that differs between the two runs (or lie after the last metric position)
  replaces activations by identical ones: its value is the unpatched metric, with no run.

Batching configurations along the batch axis (``copies``) is supported but off by default:
on a 2-core CPU it did not pay (see ``scripts/bench_activation_patching.py``).
Memory: the target's ``resid_pre`` at the needed layers plus the source activations, each
``[batch, seq, d_model]`` per layer (GPT-2 medium, 100 prompts × 20 tokens: ~8 MB a layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .hooks import hook_name
from .metrics import LogitDiffMetric, PositionMetric, metric_positions, metric_scalar

Site = str  # "z" (a head's hook_z), "resid_pre", "resid_mid", "resid_post"
FORCE_MODE: str | None = None  # "start_at_layer" forces the fallback (benchmarks and tests)


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
        if self.kind != "full":
            self.mpos = metric_positions(metric, self.batch, self.seq).to(dev)
            self.cut = int(self.mpos.max()) + 1  # later positions cannot reach any metric row
        else:
            self.cut = self.seq
        self.rows = torch.arange(self.batch, device=dev)
        # (prompt, position) pairs where the two runs can differ: from the first differing token on
        self.differs = ((self.target != self.source).long().cumsum(1) > 0)[:, : self.cut]
        if self.kind == "ld":
            answer = torch.as_tensor(metric.answer, device=dev)
            wrong = torch.as_tensor(metric.wrong, device=dev)
            self.direction = (model.W_U[:, answer] - model.W_U[:, wrong]).T  # [batch, d_model]
            self.bias = model.b_U[answer] - model.b_U[wrong]
        self.mode = "blocks"
        self.resid: dict[int, torch.Tensor] = {}
        self.src: dict[str, torch.Tensor] = {}

    # ---- captures ------------------------------------------------------------------

    def prepare(self, configs: Sequence[Config]) -> None:
        starts = sorted({_start_layer(c) for c in configs} | {self.n_layers - 1})
        names = [f"blocks.{L}.hook_resid_pre" for L in starts if L < self.n_layers]
        acts = _capture(self.model, self.target, names, until="ln_final.hook_in")
        self.resid = {L: acts[f"blocks.{L}.hook_resid_pre"][:, : self.cut] for L in starts if L < self.n_layers}
        final = acts["ln_final.hook_in"]
        self.resid[self.n_layers] = final[:, : self.cut]
        src_names = sorted({_hook_name(c.layer, c.site) for c in configs}, key=_order)
        if src_names:
            self.src = {k: v[:, : self.cut] for k, v in _capture(self.model, self.source, src_names).items()}
        self._check_blocks()
        # the unpatched metric, as the library computes it (full logits), and the scorer's check
        library = metric_scalar(self.metric(self.model.unembed(self.model.ln_final(final))))
        self.base = self._score(self.resid[self.n_layers])[0] if self.kind != "full" else library
        if not math.isclose(self.base, library, rel_tol=1e-5, abs_tol=1e-5):
            self.kind, self.cut, self.base = "full", self.seq, library  # read full logits instead
            self.resid = {L: acts[f"blocks.{L}.hook_resid_pre"] for L in self.resid if L < self.n_layers}
            self.resid[self.n_layers] = final
            self.differs = (self.target != self.source).long().cumsum(1) > 0
            if src_names:
                self.src = _capture(self.model, self.source, src_names)

    def _check_blocks(self) -> None:
        """Run the last block from the cached residual: does it reproduce the full run?"""
        L = self.n_layers - 1
        got = self._blocks(self.resid[L], L, [])
        want = self.resid[self.n_layers]
        if FORCE_MODE or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
            self.mode = FORCE_MODE or "start_at_layer"

    # ---- running -------------------------------------------------------------------

    def _blocks(self, x: torch.Tensor, start: int, fwd_hooks) -> torch.Tensor:
        """The residual after the last block, running the bridge's blocks ``start …``."""
        if start >= self.n_layers:
            return x
        model = self.model
        if self.mode == "start_at_layer":
            out: dict[str, torch.Tensor] = {}

            def grab(t, hook):
                out["x"] = t
                raise _Stop

            try:
                model.run_with_hooks(x, start_at_layer=start, fwd_hooks=[*fwd_hooks, ("ln_final.hook_in", grab)])
            except _Stop:
                pass
            return out["x"]
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            for block in model.blocks[start:]:
                y = block(x)
                x = y[0] if isinstance(y, tuple) else y
        return x

    def _score(self, final: torch.Tensor) -> list[float]:
        """Metric of each stacked copy from its final residual ``[k · batch, cut, d]``."""
        k = final.shape[0] // self.batch
        model = self.model
        if self.kind == "full":
            logits = model.unembed(model.ln_final(final)).view(k, self.batch, self.seq, -1)
            return [metric_scalar(self.metric(logits[i])) for i in range(k)]
        rows = final.view(k, self.batch, self.cut, -1)[:, self.rows, self.mpos]  # [k, batch, d]
        normed = model.ln_final(rows)
        if self.kind == "ld":
            return ((normed * self.direction).sum(-1) + self.bias).mean(-1).tolist()
        logits = model.unembed(normed)
        return [metric_scalar(self.metric.fn(logits[i])) for i in range(k)]

    def _start(self, L: int, group: Sequence[Config]) -> torch.Tensor:
        """The stacked residual entering layer ``L``, with resid_pre/resid_post patches applied."""
        k = len(group)
        x = self.resid[L]
        x = x.repeat(k, 1, 1) if k > 1 else x.clone()
        view = x.view(k, self.batch, self.cut, -1)
        for i, c in enumerate(group):
            if c.site in ("resid_pre", "resid_post"):
                src = self.src[_hook_name(c.layer, c.site)]
                m = c.mask[:, : self.cut, None]
                view[i] = torch.where(m, src, view[i])
        return x

    def _hooks(self, group: Sequence[Config]):
        """Hooks patching ``hook_z`` / ``resid_mid`` for each copy of the stacked batch."""
        by_name: dict[str, list[tuple[int, Config]]] = {}
        for i, c in enumerate(group):
            if c.site in ("z", "resid_mid"):
                by_name.setdefault(_hook_name(c.layer, c.site), []).append((i, c))
        k, batch, cut = len(group), self.batch, self.cut
        hooks = []
        for name, items in by_name.items():
            src = self.src[name]

            def patch(t, hook, _items=items, _src=src):
                t = t.clone()
                view = t.view(k, batch, cut, *t.shape[2:])
                for i, c in _items:
                    m = c.mask[:, :cut]
                    if c.site == "z":
                        view[i, :, :, c.head] = torch.where(m[..., None], _src[:, :, c.head], view[i, :, :, c.head])
                    else:
                        view[i] = torch.where(m[..., None], _src, view[i])
                return t

            hooks.append((name, patch))
        return hooks

    def patches_nothing(self, c: Config) -> bool:
        """True when every patched (prompt, position) precedes that prompt's first differing
        token or follows the last metric position: the source's activation there is the
        target's own, or cannot reach the metric."""
        return not bool((c.mask[:, : self.cut] & self.differs).any())

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
            if self.patches_nothing(c):
                values[j] = self.base
            else:
                todo.setdefault(_start_layer(c), []).append(j)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(configs), desc=desc)
            bar.update(len(configs) - sum(map(len, todo.values())))
        for L in sorted(todo):
            idx = todo[L]
            for g in range(0, len(idx), self.copies):
                chunk = idx[g : g + self.copies]
                group = [configs[j] for j in chunk]
                final = self._blocks(self._start(L, group), L, self._hooks(group))
                for j, v in zip(chunk, self._score(final)):
                    values[j] = v
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return values  # type: ignore[return-value]


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
