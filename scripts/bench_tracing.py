"""Benchmark: fast causal tracing (``causal_trace(method="fast")``) vs the plain reference.

Runs both methods of :func:`helpers.tracing.causal_trace`, one after the other in one
process, on the GPT-2-small stand-in (GPT-2's architecture with seeded random weights; no
network), on ROME's known facts (single-token answers), for the kinds the factual-recall
chapter traces: the hidden state (window 1), MLP and attention outputs (``--window``, 3 by
default) and MLP / attention with window 1. Both methods use the same seeded noise draws.

* **plain**: every restoration (layer × position) of a fact is a full forward pass of the
  noised prompt, ``n_samples`` rows each, batched ``batch_tokens`` tokens per pass;
* **fast**: each fact runs once clean and once noised (all draws in one batch); all
  restorations at one position then share one pass over the blocks, each joining at the
  first block it changes, from the noised run's residual stream there, computing only the
  positions from the restored one on (earlier positions' keys and values come from the
  noised run: the bridge's key-value cache path).

Prints, per kind, the wall time of each method, the ratio plain/fast, the max abs
difference of the traced probabilities, the multiply-adds each method needs (a
machine-independent count of the work) and the rate the fast method reaches; then this
machine's fp32 matrix-multiply rate measured in the same run, and what the chapter's
default (``--chapter-facts`` facts × ``--n-samples`` draws) costs at the measured speed.
Run it on an idle machine: timings on a loaded machine mean nothing.

    .venv/bin/python scripts/bench_tracing.py                    # 5 facts, 10 draws, both
    .venv/bin/python scripts/bench_tracing.py --quick            # 3 facts, 3 draws
    .venv/bin/python scripts/bench_tracing.py --methods fast --n-facts 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from helpers import causal_trace, load_model  # noqa: E402
from helpers.cases import factual_recall as fr  # noqa: E402
from helpers.tracing import _start_layer, rome_noise_scale  # noqa: E402


def multiply_adds(model, lengths, firsts, kind: str, window: int, n_samples: int) -> dict[str, float]:
    """Multiply-adds of the restoration passes per method (the clean and noised runs, the
    same for both, left out): ``12 d²`` per token and block (attention projections and
    MLP; the attention scores are negligible at these lengths), ``d · vocab`` per
    unembedded row (the plain method unembeds only the last position too)."""
    cfg = model.cfg
    per_block = 12 * cfg.d_model**2
    unembed = cfg.d_model * cfg.d_vocab
    n_layers = cfg.n_layers
    plain = fast = 0.0
    for Li, f in zip(lengths.tolist(), firsts.tolist()):
        for L in range(n_layers):
            start = _start_layer(kind, L, window, n_layers)
            for p in range(f, Li):
                plain += n_samples * (Li * n_layers * per_block + unembed)
                fast += n_samples * ((Li - p) * (n_layers - start) * per_block + unembed)
    return {"plain": plain, "fast": fast}


def matmul_rate(seconds: float = 2.0) -> float:
    """This machine's fp32 multiply-add rate (per second) on a GPT-2-MLP-sized product."""
    a, w = torch.randn(2000, 768), torch.randn(768, 3072)
    for _ in range(3):
        a @ w
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w
        n += 1
    return n * 2000 * 768 * 3072 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-facts", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 facts, 3 draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="plain,fast", help="plain,fast or fast")
    parser.add_argument("--chapter-facts", type=int, default=100,
                        help="facts the chapter traces by default (for the projection)")
    parser.add_argument("--kinds", default="resid:1,mlp:W,attn:W,mlp:1,attn:1",
                        help="kind:window pairs; W is --window")
    args = parser.parse_args()
    n_facts, n_samples = (3, 3) if args.quick else (args.n_facts, args.n_samples)
    methods = [m for m in args.methods.split(",") if m]
    if not set(methods) <= {"plain", "fast"} or "fast" not in methods:
        parser.error(f"--methods must be 'plain,fast' or 'fast', got {args.methods!r}")
    model = load_model("gpt2-small", weights="random", seed=args.seed)
    facts, _ = fr.rome_fact_set()
    facts, _ = fr.select_known(model, facts, max(n_facts, 1), seed=args.seed)  # the chapter's
    ps = facts.subset(range(n_facts))
    sigma = rome_noise_scale(model, [f["subject"] for f in fr.load_known_facts()])
    print(f"{n_facts} ROME facts (the chapter's first, mean length "
          f"{ps.lengths.float().mean():.1f} tokens) × {n_samples} noise draws, stand-in GPT-2 "
          f"small, torch threads {torch.get_num_threads()}")
    print(f"{'kind':<10}" + "".join(f"{m + ' s':>9}" for m in methods)
          + (f"{'ratio':>7}{'max |diff|':>12}" if len(methods) == 2 else "")
          + f"{'plain GMAC':>12}{'fast GMAC':>11}{'fast GMAC/s':>13}")
    total = dict.fromkeys(methods, 0.0)
    macs_fast = 0.0
    for spec in args.kinds.split(","):
        kind, w = spec.split(":")
        window = args.window if w == "W" else int(w)
        results, seconds = {}, {}
        for method in methods:
            t0 = time.perf_counter()
            results[method] = causal_trace(
                model, ps.tokens, ps.answers, ps.positions["SUBJ_FIRST"],
                ps.positions["SUBJ_LAST"], lengths=ps.lengths, kind=kind, window=window,
                n_samples=n_samples, noise=sigma, seed=args.seed, method=method)
            seconds[method] = time.perf_counter() - t0
            total[method] += seconds[method]
        macs = multiply_adds(model, ps.lengths, ps.positions["SUBJ_FIRST"], kind, window,
                             n_samples)
        macs_fast += macs["fast"]
        line = f"{kind + ' w' + str(window):<10}" + "".join(f"{seconds[m]:>9.1f}" for m in methods)
        if len(methods) == 2:
            diff = (results["plain"].scores - results["fast"].scores).nan_to_num().abs().max()
            line += f"{seconds['plain'] / seconds['fast']:>7.2f}{float(diff):>12.2e}"
        line += (f"{macs['plain'] / 1e9:>12,.0f}{macs['fast'] / 1e9:>11,.0f}"
                 f"{macs['fast'] / seconds['fast'] / 1e9:>13.1f}")
        print(line)
    line = f"{'all':<10}" + "".join(f"{total[m]:>9.1f}" for m in methods)
    if len(methods) == 2:
        line += f"{total['plain'] / total['fast']:>7.2f}"
    print(line)
    rate = matmul_rate()
    per_fact = total["fast"] / n_facts
    print(f"\nthis machine's fp32 matmul rate: {rate / 1e9:.0f} GMAC/s; the fast trace reaches "
          f"{macs_fast / total['fast'] / 1e9:.0f} GMAC/s ({macs_fast / total['fast'] / rate:.0%})")
    print(f"chapter default, {args.chapter_facts} facts × {n_samples} draws, these kinds: "
          f"{per_fact * args.chapter_facts:.0f} s at {per_fact:.2f} s a fact; at the full "
          f"matmul rate at best {macs_fast / n_facts * args.chapter_facts / rate:.0f} s")


if __name__ == "__main__":
    main()
