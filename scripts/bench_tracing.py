"""Benchmark: fast causal tracing (``causal_trace(method="fast")``) vs the plain reference.

Runs both methods of :func:`helpers.tracing.causal_trace`, one after the other in one
process, on the GPT-2-small stand-in (GPT-2's architecture with seeded random weights; no
network), on ROME's known facts (single-token answers), for the kinds the factual-recall
chapter traces: the hidden state (window 1), MLP and attention outputs (``--window``, 3 by
default) and MLP / attention with window 1. Both methods use the same seeded noise draws.

* **plain**: every restoration (layer × position) of a fact is a full forward pass of the
  noised prompt, ``n_samples`` rows each, batched ``batch_tokens`` tokens per pass;
* **fast**: each fact runs once clean and once noised (all draws in one batch); every
  restoration then runs only from the first layer its window touches, from the noised run's
  residual stream there, and only at positions from the restored one on (earlier positions'
  keys and values from the noised run, the bridge's key-value cache path).

Prints, per kind, the wall time of each method, the ratio plain/fast, the max abs
difference of the traced probabilities, and the token-layers each method computes
(a machine-independent count of the work). Run it on an idle machine: timings on a loaded
machine mean nothing.

    .venv/bin/python scripts/bench_tracing.py               # 20 facts, 10 draws, window 3
    .venv/bin/python scripts/bench_tracing.py --quick       # 3 facts, 3 draws
    .venv/bin/python scripts/bench_tracing.py --n-facts 100 # the chapter's default size
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
from helpers.tracing import layer_window, rome_noise_scale  # noqa: E402


def token_layers(lengths, firsts, n_layers: int, window: int, n_samples: int) -> tuple[int, int]:
    """(plain, fast): token × layer counts of the restoration passes (the clean and noised
    runs, the same for both, left out)."""
    plain = fast = 0
    for Li, f in zip(lengths.tolist(), firsts.tolist()):
        for L in range(n_layers):
            lo = layer_window(L, window, n_layers)[0]
            for p in range(f, Li):
                plain += n_samples * Li * n_layers
                fast += n_samples * (Li - p) * (n_layers - lo)
    return plain, fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-facts", type=int, default=20)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 facts, 3 draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="resid:1,mlp:W,attn:W,mlp:1,attn:1",
                        help="kind:window pairs; W is --window")
    args = parser.parse_args()
    n_facts, n_samples = (3, 3) if args.quick else (args.n_facts, args.n_samples)
    model = load_model("gpt2-small", weights="random", seed=args.seed)
    facts, _ = fr.rome_fact_set()
    ps = facts.subset(range(n_facts))
    sigma = rome_noise_scale(model, [f["subject"] for f in fr.load_known_facts()])
    print(f"{n_facts} ROME facts × {n_samples} noise draws, stand-in GPT-2 small, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'kind':<12}{'plain s':>9}{'fast s':>9}{'ratio':>8}{'max |diff|':>12}"
          f"{'plain tok·layers':>18}{'fast tok·layers':>17}")
    total = {"plain": 0.0, "fast": 0.0}
    for spec in args.kinds.split(","):
        kind, w = spec.split(":")
        window = args.window if w == "W" else int(w)
        results, seconds = {}, {}
        for method in ("plain", "fast"):
            t0 = time.perf_counter()
            results[method] = causal_trace(
                model, ps.tokens, ps.answers, ps.positions["SUBJ_FIRST"],
                ps.positions["SUBJ_LAST"], lengths=ps.lengths, kind=kind, window=window,
                n_samples=n_samples, noise=sigma, seed=args.seed, method=method)
            seconds[method] = time.perf_counter() - t0
            total[method] += seconds[method]
        diff = (results["plain"].scores - results["fast"].scores).nan_to_num().abs().max()
        plain_tl, fast_tl = token_layers(ps.lengths, ps.positions["SUBJ_FIRST"],
                                         model.cfg.n_layers, window, n_samples)
        print(f"{kind + ' w' + str(window):<12}{seconds['plain']:>9.1f}{seconds['fast']:>9.1f}"
              f"{seconds['plain'] / seconds['fast']:>8.2f}{float(diff):>12.2e}"
              f"{plain_tl:>18,}{fast_tl:>17,}")
    print(f"{'all':<12}{total['plain']:>9.1f}{total['fast']:>9.1f}"
          f"{total['plain'] / total['fast']:>8.2f}")


if __name__ == "__main__":
    main()
