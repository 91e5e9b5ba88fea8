"""Benchmark: fast path patching (helpers.path_patch) vs the plain reference.

Runs both implementations, one after the other in one process, on the GPT-2-small stand-in
(GPT-2's architecture with seeded random weights; no network; ``--model gpt2-medium`` for
the medium one), on IOI prompts (p_IOI vs p_ABC). Two receiver settings:

1. the final residual stream (logits), every head a sender;
2. the queries of three mover heads (small: 9.9, 9.6, 10.0; medium: the first three movers
   of ``helpers.cases.circuit_reuse.MEDIUM_ROLES``); senders at or after their layers have
   no path to them and are NaN in both results.

Senders are patched at every position by default (``--sender-positions end`` for END only).
The metric is the logit difference IO - S at END, as a ``LogitDiffMetric``. Prints the wall
time of each implementation, the ratio fast/reference, and the max abs difference.

    .venv/bin/python scripts/bench_path_patching.py   # from the repository root (make bench)
    ... scripts/bench_path_patching.py --quick          # 10 prompts, 5 sender layers
    ... scripts/bench_path_patching.py --n-prompts 50
    ... scripts/bench_path_patching.py --model gpt2-medium --quick
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from helpers import LogitDiffMetric, all_heads, load_model, path_patch, path_patch_reference  # noqa: E402
from helpers.cases.ioi import make_ioi_dataset  # noqa: E402


def make_prompts(n: int, seed: int):
    """(clean, corrupted, answer, wrong, end): IOI prompts p_IOI and their p_ABC twins."""
    ds = make_ioi_dataset(n, seed=seed)
    abc = ds.corrupt_abc(seed=seed + 1)
    return ds.tokens, abc.tokens, ds.io_tokens, ds.s_tokens, ds.positions["END"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["gpt2-small", "gpt2-medium"], default="gpt2-small",
                        help="stand-in size; on gpt2-medium the query receivers are its movers")
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--quick", action="store_true",
                        help="10 prompts, senders in 5 layers (0, 1/4, 1/2, 3/4, last: 0, 3, 6, 9, 11 on small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sender-positions", choices=["all", "end"], default="all")
    parser.add_argument("--only", choices=["logits", "q", "both"], default="both")
    parser.add_argument("--progress", action="store_true", help="tqdm progress bars (on stderr)")
    parser.add_argument("--sender-layers", default=None, help="comma-separated sender layers (default: all)")
    args = parser.parse_args()
    n = 10 if args.quick and args.n_prompts == 100 else args.n_prompts

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = load_model(args.model, weights="random", seed=args.seed, device="cpu")
    print(f"model: {args.model} stand-in (random weights, seed {args.seed}), loaded in {time.perf_counter() - t0:.1f} s")
    clean, corrupt, answer, wrong, end = make_prompts(n, args.seed)
    print(f"prompts: {n} x {clean.shape[1]} tokens, IOI p_IOI vs p_ABC; torch threads: {torch.get_num_threads()}")
    metric = LogitDiffMetric(answer, wrong, end)
    senders = all_heads(model)
    n_layers = model.cfg.n_layers
    layers = tuple(sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 1})) if args.quick else None
    if args.sender_layers:
        layers = tuple(int(x) for x in args.sender_layers.split(","))
    if layers is not None:
        senders = [(L, h) for L, h in senders if L in layers]
    sender_positions = None if args.sender_positions == "all" else end
    with torch.no_grad():
        model(clean[:2])  # warm-up
        clean_ld = float(metric(model(clean)))
    print(f"senders: {len(senders)} heads, patched at {args.sender_positions} positions; clean LD {clean_ld:+.4f}")

    settings = []
    if args.only in ("logits", "both"):
        settings.append(("final residual (logits)", dict(receivers="logits")))
    if args.only in ("q", "both"):
        if args.model == "gpt2-small":
            movers = [(9, 9), (9, 6), (10, 0)]
        else:
            from helpers.cases.circuit_reuse import MEDIUM_ROLES

            movers = MEDIUM_ROLES.heads("mover")[:3]
        label = "queries of " + ", ".join(f"{L}.{h}" for L, h in movers)
        settings.append((label, dict(receivers=movers, receiver_input="q")))

    rows = []
    for label, kw in settings:
        common = dict(senders=senders, sender_positions=sender_positions, progress=args.progress, **kw)
        t = time.perf_counter()
        ref = path_patch_reference(model, clean, corrupt, metric, **common)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        fast = path_patch(model, clean, corrupt, metric, **common)
        t_fast = time.perf_counter() - t
        nan_ok = torch.equal(ref.isnan(), fast.isnan())
        scored = ~ref.isnan()
        diff = (ref - fast)[scored].abs().max().item()
        effect = (ref[scored] - clean_ld).abs().max().item()
        rows.append((label, int(scored.sum()), t_ref, t_fast, t_fast / t_ref, diff, effect, nan_ok))
        print(
            f"\n[{label}] senders scored: {int(scored.sum())}\n"
            f"  reference : {t_ref:8.1f} s\n"
            f"  fast      : {t_fast:8.1f} s\n"
            f"  ratio fast/reference : {t_fast / t_ref:.3f}  (speed-up x{t_ref / t_fast:.1f})\n"
            f"  max |fast - reference| : {diff:.2e}   (largest |score - clean LD|: {effect:.3f}; NaN pattern equal: {nan_ok})",
            flush=True,
        )

    print("\nSUMMARY")
    print(f"{'receivers':<28}{'senders':>8}{'ref s':>10}{'fast s':>10}{'ratio':>8}{'max diff':>11}")
    for label, k, tr, tf, ratio, diff, effect, nan_ok in rows:
        print(f"{label:<28}{k:>8}{tr:>10.1f}{tf:>10.1f}{ratio:>8.3f}{diff:>11.2e}")
    tot_r, tot_f = sum(r[2] for r in rows), sum(r[3] for r in rows)
    worst = max(r[5] for r in rows)
    print(f"{'total':<28}{'':>8}{tot_r:>10.1f}{tot_f:>10.1f}{tot_f / tot_r:>8.3f}{worst:>11.2e}")
    ok = all(r[4] <= 1 / 3 and r[5] <= 1e-4 and r[7] for r in rows)
    print(f"requirement (ratio <= 1/3 and max diff <= 1e-4 in every setting): {'MET' if ok else 'NOT MET'}")
    if not math.isfinite(worst):
        sys.exit(1)


if __name__ == "__main__":
    main()
