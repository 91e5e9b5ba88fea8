"""Benchmark: the casebook's activation-patching sweeps vs TransformerLens's own, side by side.

One process, one stand-in model (GPT-2's architecture with seeded random weights, no
network), the same IOI prompts (p_IOI as the clean run, p_ABC as the corrupted run) and the
same metric (logit difference IO − S at END, a ``LogitDiffMetric``, which is also an ordinary
callable on full logits). TransformerLens patches clean activations into the corrupted run,
so the casebook runs ``direction="clean->corrupted"``. Sweeps:

* ``heads``: every head's output (``hook_z``) at every position —
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` vs ``patch_heads``;
* ``heads_by_pos``: every head at each of a few columns — TransformerLens's
  ``generic_activation_patch`` with ``layer_pos_head_vector_patch_setter`` on ``z`` (what
  ``get_act_patch_attn_head_out_by_pos`` runs) restricted by ``index_df`` to those columns,
  vs ``patch_heads_by_position(positions=...)``; the full (layer, pos, head) grid takes
  n_layers · seq · n_heads forward passes (6,144 on GPT-2 medium), too long to time here;
* ``resid``: ``resid_pre`` at every (layer, position) — ``get_act_patch_resid_pre`` vs
  ``patch_resid_by_position``;
* ``layers``: the whole ``resid_pre`` of one layer at each prompt's END —
  ``generic_activation_patch`` over ``["layer"]`` with a setter that copies the END rows,
  vs ``patch_resid_by_layer(positions=END)``.

The TransformerLens time includes its ``run_with_cache`` of the clean run (its sweeps take
a cache; the casebook's capture what they need themselves). Prints, per sweep, both wall
times, the ratio casebook / TransformerLens and the largest absolute difference.

    PYTHONPATH=src .venv/bin/python scripts/bench_activation_patching.py --model gpt2-small
    PYTHONPATH=src .venv/bin/python scripts/bench_activation_patching.py --model gpt2-medium --n-prompts 20
    ... --only heads,resid      --by-pos-columns 4      --copies 2
    ... --engine start_at_layer   (force the bridge-forward fallback: to see why it is not used)
    ... --no-kv-cache             (run every position: to see what the position cut saves)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from helpers import (  # noqa: E402
    LogitDiffMetric,
    _sweeps,
    load_model,
    patch_heads,
    patch_heads_by_position,
    patch_resid_by_layer,
    patch_resid_by_position,
)
from helpers.cases.ioi import make_ioi_dataset  # noqa: E402
from helpers.patching import _copies  # noqa: E402

SWEEPS = ("heads", "heads_by_pos", "resid", "layers")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2-small", help="gpt2-small or gpt2-medium (stand-in)")
    parser.add_argument("--n-prompts", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(SWEEPS), help=f"comma-separated subset of {SWEEPS}")
    parser.add_argument("--by-pos-columns", type=int, default=4, help="columns for heads_by_pos (evenly spaced, last included)")
    parser.add_argument("--copies", type=int, default=None,
                        help="configurations stacked per pass in the casebook's sweeps (default: the library's, "
                        "as many as fit in helpers.patching.DEFAULT_SWEEP_TOKENS tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--engine", choices=["blocks", "start_at_layer"], default="blocks")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="run every position of every configuration (no key-value cache for the positions before the patch)")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown sweeps {sorted(unknown)}; choose from {SWEEPS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engine != "blocks":
        _sweeps.FORCE_MODE = args.engine
    if args.no_kv_cache:
        _sweeps.USE_KV_CACHE = False

    from importlib.metadata import version

    from transformer_lens import patching as tlp

    t0 = time.perf_counter()
    model = load_model(args.model, weights="random", seed=args.seed, device="cpu")
    print(f"model: {args.model} stand-in (random weights, seed {args.seed}), loaded in {time.perf_counter() - t0:.1f} s")
    ds = make_ioi_dataset(args.n_prompts, seed=args.seed)
    abc = ds.corrupt_abc(seed=args.seed + 1)
    clean, corrupt = ds.tokens, abc.tokens
    end = ds.positions["END"]
    batch, seq = clean.shape
    metric = LogitDiffMetric(ds.io_tokens, ds.s_tokens, end)
    print(
        f"prompts: {batch} IOI prompts (p_IOI clean, p_ABC corrupted), padded to {seq} tokens; "
        f"metric: logit diff IO - S at END; transformer-lens {version('transformer-lens')}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; casebook engine: {args.engine}, "
        f"copies: {args.copies or _copies(batch, seq, None)}, key-value cache for unpatched positions: {not args.no_kv_cache}"
    )
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    cols = sorted({round(i * (seq - 1) / args.by_pos_columns) for i in range(1, args.by_pos_columns + 1)})

    def tl_cache():
        _, cache = model.run_with_cache(clean)
        return cache

    def tl_heads():
        return tlp.get_act_patch_attn_head_out_all_pos(model, corrupt, tl_cache(), metric)

    def tl_heads_by_pos():
        import pandas as pd

        rows = [(L, p, h) for L in range(n_layers) for p in cols for h in range(n_heads)]
        index_df = pd.DataFrame(rows, columns=["layer", "pos", "head"])
        flat = tlp.generic_activation_patch(
            model, corrupt, tl_cache(), metric, tlp.layer_pos_head_vector_patch_setter, "z", index_df=index_df
        )
        out = torch.full((n_layers, seq, n_heads), float("nan"))
        for (L, p, h), v in zip(rows, flat.tolist()):
            out[L, p, h] = v
        return out[:, cols]

    def tl_resid():
        return tlp.get_act_patch_resid_pre(model, corrupt, tl_cache(), metric)

    def end_rows_setter(act, index, clean_act):
        rows = torch.arange(act.shape[0])
        act[rows, end] = clean_act[rows, end]
        return act

    def tl_layers():
        return tlp.generic_activation_patch(
            model, corrupt, tl_cache(), metric, end_rows_setter, "resid_pre", index_axis_names=["layer"]
        )

    kw = dict(direction="clean->corrupted", batch_tokens=args.copies * batch * seq if args.copies else None)
    casebook = {
        "heads": lambda: patch_heads(model, clean, corrupt, metric, **kw),
        "heads_by_pos": lambda: patch_heads_by_position(model, clean, corrupt, metric, positions=cols, **kw)[:, cols],
        "resid": lambda: patch_resid_by_position(model, clean, corrupt, metric, **kw),
        "layers": lambda: patch_resid_by_layer(model, clean, corrupt, metric, positions=end, **kw),
    }
    theirs = {"heads": tl_heads, "heads_by_pos": tl_heads_by_pos, "resid": tl_resid, "layers": tl_layers}
    configs = {
        "heads": f"{n_layers * n_heads} heads",
        "heads_by_pos": f"{n_layers * n_heads * len(cols)} (heads x columns {cols})",
        "resid": f"{n_layers * seq} (layer, pos)",
        "layers": f"{n_layers} layers at END",
    }
    with torch.no_grad():
        model(clean[:2])  # warm-up
    print()
    print(f"| sweep | configurations | TransformerLens | casebook | ratio | max abs diff |")
    print(f"|---|---|---|---|---|---|")
    for name in only:
        ref, t_ref = timed(theirs[name])
        got, t_got = timed(casebook[name])
        diff = (ref.float() - got.float()).abs().max().item()
        print(f"| {name} | {configs[name]} | {t_ref:.1f} s | {t_got:.1f} s | {t_got / t_ref:.3f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
