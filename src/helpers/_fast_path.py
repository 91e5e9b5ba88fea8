"""The fast path-patching engine (private: use :func:`helpers.path_patch`).

**Why the fast path is exact.** With every head frozen, pass C's only change is the sender's
output at the sender positions, and the only things recomputed, MLPs and LayerNorms, act on
each position separately: pass C's residual stream differs from the clean one only at the
sender positions, and there it is a function of that position's own residual. So pass C is
computed by pushing the sender's output change through the later MLPs at those positions only,
for many senders at once (positions where the clean and corrupted prompts agree so far are
skipped: both runs are identical there). For head receivers, pass D is recomputed from the
clean residual at the first receiver layer, for each prompt only on its own window of
positions, from its first sender position (earlier positions cannot change in a causal model)
to the metric's position (later ones cannot reach it), packed without padding and in chunks
of senders; prompts with an empty window keep their clean value, and in the last layer only
the metric's row is computed. Only the logits the metric needs are computed. The attention
and MLP arithmetic is done from the model's own (folded, centred) weights ``W_Q, W_K, W_V,
W_O, b_*, W_in, W_out, W_U``; a cheap self-check against the model's own activations runs
first and raises if the model is not a GPT-2-style bridge in compatibility mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .circuits import Head
from .hooks import capture, folded_layer_norm, hook_name
from .metrics import LogitDiffMetric, PositionMetric, metric_positions, metric_scalar

#: (prompt, position) rows processed at once per chunk of senders. On a 2-core CPU small
#: chunks were fastest (NOTES.md has the measurements).
DEFAULT_BATCH_TOKENS = 512


class _Weights:
    """The model's folded weights, read once, plus the manual forward used by the fast path.

    Per layer, q/k/v weights are fused into one ``[d_model, 3 · n_heads · d_head]`` matrix
    and every projection is one ``addmm`` on a flattened batch.
    """

    def __init__(self, model):
        cfg = model.cfg
        if getattr(cfg, "normalization_type", "LN") not in ("LN", "LNPre") or getattr(cfg, "parallel_attn_mlp", False):
            raise NotImplementedError("path_patch's fast path supports GPT-2-style models only")
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            raise NotImplementedError("scale_attn_by_inverse_layer_idx is not supported")
        from transformers.activations import ACT2FN

        if cfg.act_fn in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
        else:
            self.act = ACT2FN[cfg.act_fn]
        self.eps = float(cfg.eps)
        self.n_layers, self.n_heads, self.d_head = cfg.n_layers, cfg.n_heads, cfg.d_head
        self.scale = self.d_head**-0.5
        self.W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}  # [L, H, d_model, d_head]
        self.b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}  # [L, H, d_head]
        self.W_O, self.b_O = model.W_O, model.b_O  # [L, H, d_head, d_model], [L, d_model]
        self.W_in, self.b_in = model.W_in, model.b_in
        self.W_out, self.b_out = model.W_out, model.b_out
        self._qkv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._W_U = None
        self._model = model

    @property
    def W_U(self):
        if self._W_U is None:
            self._W_U = self._model.W_U
            b_U = getattr(self._model, "b_U", None)
            self._b_U = torch.zeros(self._W_U.shape[1], device=self._W_U.device) if b_U is None else b_U
        return self._W_U

    @property
    def b_U(self):
        _ = self.W_U
        return self._b_U

    def qkv_weights(self, L):
        if L not in self._qkv:
            d = self.W["q"].shape[2]
            W = torch.cat([self.W[c][L].permute(1, 0, 2).reshape(d, -1) for c in "qkv"], 1).contiguous()
            b = torch.cat([self.b[c][L].reshape(-1) for c in "qkv"])
            self._qkv[L] = (W, b)
        return self._qkv[L]

    def ln(self, x):
        return folded_layer_norm(x, self.eps)

    @staticmethod
    def _affine(x, W, b):
        """``x @ W + b`` over the last dim, as one addmm on the flattened leading dims."""
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1])

    def mlp(self, L, x_mid):
        hidden = self.act(self._affine(self.ln(x_mid), self.W_in[L], self.b_in[L]))
        return self._affine(hidden, self.W_out[L], self.b_out[L])

    def proj(self, L, x_normed, which, heads=None):
        """``[..., H, d_head]`` (or the given heads only) from an LN'd residual ``[..., d_model]``."""
        W, b = self.W[which][L], self.b[which][L]
        if heads is not None:
            W, b = W[heads], b[heads]
        d = W.shape[1]
        out = self._affine(x_normed, W.permute(1, 0, 2).reshape(d, -1), b.reshape(-1))
        return out.view(*x_normed.shape[:-1], W.shape[0], self.d_head)

    def attn(self, L, x, win: "_Window", k_clean, v_clean, overrides, end_only: bool = False):
        """Attention output of layer ``L`` at the packed window rows of ``win``.

        ``x``: ``[s, R, d]`` residual (resid_pre) at the ``R`` window rows, for ``s`` copies
        (senders); ``k_clean``/``v_clean``: ``[A, S, H, d_head]`` keys/values of the ``A``
        prompts' whole sequences, kept where the window does not recompute them (before it);
        ``overrides``: ``{(which, head): [s, R, d_head]}`` replacing the computed q/k/v.
        Returns ``[s, R, d]``, or with ``end_only`` ``[s, A, d]`` at each prompt's last window
        row only (keys and values still cover every row).
        """
        s, R, _ = x.shape
        H, dh = self.n_heads, self.d_head
        A, S = k_clean.shape[:2]
        W, b = self.qkv_weights(L)
        qkv = self._affine(self.ln(x), W, b).view(s, R, 3, H, dh)
        q, k, v = qkv.unbind(2)
        if overrides:
            q, k, v = q.clone(), k.clone(), v.clone()
            for (c, head), val in overrides.items():
                {"q": q, "k": k, "v": v}[c][:, :, head] = val
        k_all = k_clean[None].expand(s, -1, -1, -1, -1).clone()  # [s, A, S, H, dh]
        v_all = v_clean[None].expand(s, -1, -1, -1, -1).clone()
        k_all[:, win.rows, win.pos] = k
        v_all[:, win.rows, win.pos] = v
        if end_only:
            q_pad = q[:, win.end][:, :, None]  # [s, A, 1, H, dh]
            query_pos = win.pos[win.end][:, None]  # [A, 1]
        else:
            q_pad = q.new_zeros(s, A, win.t, H, dh)
            q_pad[:, win.rows, win.cols] = q
            query_pos = win.pos_pad  # [A, t]
        scores = torch.matmul(q_pad.transpose(2, 3), k_all.permute(0, 1, 3, 4, 2)) * self.scale  # [s, A, H, t, S]
        allowed = torch.arange(S, device=x.device)[None, None, :] <= query_pos[:, :, None]  # [A, t, S]
        scores = scores.masked_fill(~allowed[None, :, None], float("-inf"))
        z = torch.matmul(scores.softmax(-1), v_all.transpose(2, 3))  # [s, A, H, t, dh]
        z = z.transpose(2, 3).reshape(s, A, -1, H * dh)  # [s, A, t, H·dh]
        z = z[:, :, 0] if end_only else z[:, win.rows, win.cols]
        return self._affine(z, self.W_O[L].reshape(H * dh, -1), self.b_O[L])


@dataclass(frozen=True)
class _Window:
    """Ragged per-prompt windows of positions, packed into ``R`` rows.

    Prompt ``a`` (of ``A``) covers positions ``first[a] .. first[a] + span[a] - 1``. Row ``r``
    is prompt ``rows[r]``, window column ``cols[r]``, absolute position ``pos[r]``;
    ``pos_pad`` ``[A, t]`` is the padded layout (positions clamped to the sequence);
    ``end[a]`` is the row of prompt ``a``'s last position.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    pos: torch.Tensor
    pos_pad: torch.Tensor
    end: torch.Tensor
    t: int

    @staticmethod
    def build(first: torch.Tensor, span: torch.Tensor, seq: int) -> "_Window":
        t = int(span.max())
        offs = torch.arange(t, device=first.device)
        valid = offs[None, :] < span[:, None]  # [A, t]
        pos_pad = (first[:, None] + offs[None, :]).clamp(max=seq - 1)
        rows, cols = valid.nonzero(as_tuple=True)  # row-major: each prompt's rows in order
        end = torch.cumsum(span, 0) - 1
        return _Window(rows, cols, pos_pad[rows, cols], pos_pad, end, t)


def _self_check(w: _Weights, clean_acts, last_logits, layer: int, n: int = 4) -> None:
    """The manual arithmetic must reproduce the model's own activations; raise if not.

    ``last_logits``: ``[>= n, d_vocab]`` the model's logits at the last position of the first
    prompts."""
    x = clean_acts[hook_name("resid_pre", layer)][:n]
    n, seq = x.shape[:2]
    win = _Window.build(torch.zeros(n, dtype=torch.long, device=x.device), torch.full((n,), seq, device=x.device), seq)
    empty = x.new_zeros(n, seq, w.n_heads, w.d_head)
    out = w.attn(layer, x.reshape(1, n * seq, -1), win, empty, empty, {}).view(n, seq, -1)
    mid = clean_acts[hook_name("resid_mid", layer)][:n]
    post = mid + w.mlp(layer, mid)
    final = clean_acts[hook_name("resid_post", w.n_layers - 1)][:n, -1]
    lg = w.ln(final) @ w.W_U + w.b_U
    errs = {
        "attention": (x + out - mid).abs().max().item() / (mid.abs().max().item() + 1e-6),
        "mlp": (post - clean_acts[hook_name("resid_post", layer)][:n]).abs().max().item()
        / (post.abs().max().item() + 1e-6),
        "unembed": (lg - last_logits[:n]).abs().max().item() / (lg.abs().max().item() + 1e-6),
    }
    bad = {k: v for k, v in errs.items() if not v < 1e-3}
    if bad:
        raise RuntimeError(
            f"path_patch's fast path could not reproduce the model's own activations "
            f"(relative errors {bad}). It needs a GPT-2-style TransformerBridge in "
            f"compatibility mode (model.enable_compatibility_mode()); use "
            f"path_patch_reference otherwise."
        )


def _group_senders(senders: list[Head]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for L, h in senders:
        by_layer.setdefault(L, []).append(h)
    return dict(sorted(by_layer.items()))


def _captures(model, clean, corrupt, first_sender_layer, first_recv, *, need_logits):
    """Clean activations (and the clean run's last-position logits), corrupted ``hook_z``,
    and (if ``need_logits``) the clean logits: only what one call needs."""
    n_layers = model.cfg.n_layers
    zs = [hook_name("z", L) for L in range(n_layers)]
    names = zs + [hook_name(r, L) for L in range(n_layers) for r in ("resid_pre", "resid_mid")]
    names += [hook_name("resid_post", first_sender_layer), hook_name("resid_post", n_layers - 1)]
    names += [hook_name(c, L) for L in range(first_recv, n_layers) for c in "qkv"]
    logits, acts = capture(model, clean, names)
    acts["last_logits"] = logits[:, -1].clone()  # not a view: the full logits can be freed
    _, corrupt_acts = capture(model, corrupt, zs)
    return acts, corrupt_acts, logits if need_logits else None


@torch.no_grad()
def run(model, clean, corrupt, recv, reachable, smask, metric, *, batch_tokens=None, progress=False):
    """Path-patching scores ``[n_layers, n_heads]`` of the ``reachable`` senders.

    ``clean``/``corrupt``: ``[batch, seq]`` on the model's device; ``recv``: ``None`` (final
    residual stream) or ``{(layer, head): ("q", ...)}``; ``smask``: ``[batch, seq]`` sender
    positions. Called by :func:`helpers.path_patching.path_patch`, which checks arguments.
    """
    batch, seq = clean.shape
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.full((n_layers, n_heads), math.nan)
    if not reachable:
        return out
    dev = model.cfg.device
    w = _Weights(model)
    kind = "ld" if isinstance(metric, LogitDiffMetric) else "pos" if isinstance(metric, PositionMetric) else "full"

    first_sender_layer = min(L for L, _ in reachable)
    first_recv = n_layers if recv is None else min(L for L, _ in recv)
    acts, corrupt_acts, clean_logits = _captures(
        model, clean, corrupt, first_sender_layer, first_recv, need_logits=kind == "full"
    )
    _self_check(w, acts, acts["last_logits"], first_sender_layer)

    # The sender's change of output, at the sender positions (flattened (prompt, pos) pairs).
    # Where clean and corrupted prompts agree up to a position, both runs are the same there
    # and the sender's change is zero: those positions are skipped.
    differs = (clean != corrupt).long().cumsum(1) > 0
    sb, sp = (smask & differs).nonzero(as_tuple=True)

    def sender_delta(L, hs, b_idx, p_idx, sel=None):
        dz = corrupt_acts[hook_name("z", L)][b_idx, p_idx][:, hs] - acts[hook_name("z", L)][b_idx, p_idx][:, hs]  # [m, s, dh]
        delta = torch.einsum("mse,sed->smd", dz, w.W_O[L][hs])  # [s, m, d]
        if sel is not None:
            delta = delta * sel[None, :, None].to(delta)
        return delta

    def frozen_attn(L, b_idx, p_idx):
        return acts[hook_name("resid_mid", L)][b_idx, p_idx] - acts[hook_name("resid_pre", L)][b_idx, p_idx]

    def propagate(x_mid, L_from, L_to, b_idx, p_idx, record=()):
        """Pass C at some positions: from resid_mid of ``L_from`` to resid_pre of ``L_to``."""
        kept = {}
        x = x_mid
        for L in range(L_from, L_to):
            if L > L_from:
                x = x + frozen_attn(L, b_idx, p_idx)
            x = x + w.mlp(L, x)
            if L + 1 in record:
                kept[L + 1] = x
        return x, kept

    rows = torch.arange(batch, device=dev)
    mpos = metric_positions(metric, batch, seq).to(dev) if kind != "full" else None
    if kind == "ld":
        answer, wrong = (torch.as_tensor(t, device=dev) for t in (metric.answer, metric.wrong))
        direction = (w.W_U[:, answer] - w.W_U[:, wrong]).T  # [B, d]
        bias = w.b_U[answer] - w.b_U[wrong]

    def score(final, b_idx=None, p_idx=None) -> list[float]:
        """The metric of ``s`` runs from their final-residual rows ``[s, m, d]``.

        "ld"/"pos": the rows are each prompt's metric row, in prompt order (only the logits
        the metric reads are computed). "full": the rows sit at ``(b_idx, p_idx)`` and replace
        the clean logits there.
        """
        if kind == "ld":
            return ((w.ln(final) * direction).sum(-1) + bias).mean(-1).tolist()
        lg = w.ln(final) @ w.W_U + w.b_U
        if kind == "pos":
            return [metric_scalar(metric.fn(lg[j])) for j in range(len(lg))]
        values = []
        for j in range(len(lg)):
            full = clean_logits.clone()
            full[b_idx, p_idx] = lg[j]
            values.append(metric_scalar(metric(full)))
        return values

    budget = int(batch_tokens) if batch_tokens else DEFAULT_BATCH_TOKENS
    groups = _group_senders(reachable)
    progress_bar = None
    if progress:
        from .display import tqdm

        progress_bar = tqdm(total=len(reachable), desc="path patching")

    if recv is None:
        for L, hs in groups.items():
            if kind == "full":
                b_idx, p_idx, sel = sb, sp, None
                per = max(1, budget // max(1, len(sb)))
                per = min(per, max(1, int(4e7 // (batch * seq * w.W_U.shape[1]))))
            else:
                b_idx, p_idx = rows, mpos
                sel = smask[rows, mpos]
                per = max(1, budget // batch)
                if kind == "pos":
                    per = min(per, max(1, int(2.5e7 // (batch * w.W_U.shape[1]))))
            for i in range(0, len(hs), per):
                chunk = hs[i : i + per]
                delta = sender_delta(L, chunk, b_idx, p_idx, sel)
                x_mid = acts[hook_name("resid_mid", L)][b_idx, p_idx][None] + delta
                final, _ = propagate(x_mid, L, n_layers, b_idx, p_idx)
                for h, v in zip(chunk, score(final, b_idx, p_idx)):
                    out[L, h] = v
                if progress_bar is not None:
                    progress_bar.update(len(chunk))
        if progress_bar is not None:
            progress_bar.close()
        return out

    # ---- head receivers ----
    # Pass D changes nothing before a prompt's first sender position, and (for metrics that
    # read one position) nothing after its metric position matters: each prompt is recomputed
    # only on its own window [first sender position, metric position], and prompts whose
    # window is empty are left out (their metric rows are the clean ones).
    recv_layers = sorted({L for L, _ in recv})
    clean_final = acts[hook_name("resid_post", n_layers - 1)]
    first = torch.full((batch,), seq, dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, sb, sp, reduce="amin")
    last = mpos if kind != "full" else torch.full((batch,), seq - 1, dtype=torch.long, device=dev)
    active = (first <= last).nonzero(as_tuple=True)[0]  # [A] prompts pass D can change
    n_act = len(active)
    if n_act == 0:  # no sender position can reach a metric position: every score is the clean one
        value = metric_scalar(metric(clean_logits)) if kind == "full" else score(clean_final[rows, mpos][None])[0]
        for L, h in reachable:
            out[L, h] = value
        if progress_bar is not None:
            progress_bar.update(len(reachable))
            progress_bar.close()
        return out
    win = _Window.build(first[active], (last - first + 1)[active], seq)
    win_rows, win_pos = active[win.rows], win.pos  # [R] prompt and position of each row
    n_rows = len(win_rows)

    for L, hs in groups.items():
        reach = [RL for RL in recv_layers if RL > L]
        start = reach[0]
        per = max(1, budget // max(1, n_rows, len(sb)))
        if kind == "pos":
            per = min(per, max(1, int(2.5e7 // (batch * w.W_U.shape[1]))))
        if kind == "full":
            per = min(per, max(1, int(4e7 // (n_rows * w.W_U.shape[1]))))
        for i in range(0, len(hs), per):
            chunk = hs[i : i + per]
            s = len(chunk)
            # pass C at the sender positions, recording resid_pre at the receiver layers
            delta = sender_delta(L, chunk, sb, sp)
            x_mid = acts[hook_name("resid_mid", L)][sb, sp][None] + delta
            _, kept = propagate(x_mid, L, reach[-1], sb, sp, record=set(reach))
            overrides: dict[int, dict] = {}
            for RL in reach:
                normed = w.ln(kept[RL])  # [s, m, d]
                layer_over = {}
                for (QL, qh), cs in recv.items():
                    if QL != RL:
                        continue
                    for c in cs:
                        val = acts[hook_name(c, RL)][:, :, qh][None].repeat(s, 1, 1, 1)  # [s, B, S, dh]
                        val[:, sb, sp] = w.proj(RL, normed, c, [qh])[..., 0, :]
                        layer_over[(c, qh)] = val[:, win_rows, win_pos]  # [s, R, dh]
                overrides[RL] = layer_over
            # pass D from the first reachable receiver layer, on the windows' rows only
            x = acts[hook_name("resid_pre", start)][win_rows, win_pos][None].repeat(s, 1, 1)  # [s, R, d]
            for RL in range(start, n_layers):
                k_clean = acts[hook_name("k", RL)][active]  # [A, S, H, dh]
                v_clean = acts[hook_name("v", RL)][active]
                if RL == n_layers - 1 and kind != "full":
                    # last layer: only the metric's row per prompt is read afterwards
                    x_end = x[:, win.end]  # [s, A, d]
                    x_end = x_end + w.attn(RL, x, win, k_clean, v_clean, overrides.get(RL, {}), end_only=True)
                    final_rows = x_end + w.mlp(RL, x_end)
                    break
                x = x + w.attn(RL, x, win, k_clean, v_clean, overrides.get(RL, {}))
                x = x + w.mlp(RL, x)
            if kind == "full":
                values = score(x, win_rows, win_pos)  # every window row
            else:
                final = clean_final[rows, mpos][None].repeat(s, 1, 1)  # [s, B, d]
                final[:, active] = final_rows
                values = score(final)
            for h, v in zip(chunk, values):
                out[L, h] = v
            if progress_bar is not None:
                progress_bar.update(s)
    if progress_bar is not None:
        progress_bar.close()
    return out
