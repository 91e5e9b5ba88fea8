"""Reference solutions and known mistakes of the short checks, kept out of ``helpers``.

The package's short checks (``helpers.exercises.<slug>.check_...``) build seeded inputs and
compare the learner's output with stored answers; :func:`build_answers` computes those
answers (the reference's output and each known mistake's, per input) from the functions
below and writes ``src/helpers/exercises/_answers.py``. ``tests/test_exercises.py`` checks
that the stored file is what this module gives today.

    python scripts/student_notebooks.py --answers   # regenerate after changing a check
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.metrics import rank_correlation as _spearman
from helpers.exercises import acronyms, circuit_reuse, debugging, factual_recall, ioi, successor_heads, tour
from helpers.hooks import folded_layer_norm
from helpers.metrics import logit_diff_vs_rivals
from helpers.tracing import fit_head_gains

ROOT = Path(__file__).resolve().parents[1]
ANSWERS_FILE = ROOT / "src" / "helpers" / "exercises" / "_answers.py"


# ------------------------------------------------------------------------------- tour

def logit_diff(logits, answer, wrong, end):
    rows = torch.arange(logits.shape[0])
    return logits[rows, end, answer] - logits[rows, end, wrong]


def dla(stack, scale, direction):
    return ((stack - stack.mean(-1, keepdim=True)) / scale) @ direction


def _rows(lg):
    return torch.arange(lg.shape[0])


# ------------------------------------------------------------------------------- IOI

def copy_score(resid, W_V, W_O, W_U, tokens, k=5):
    out = folded_layer_norm(resid, 1e-5) @ W_V @ W_O
    logits = folded_layer_norm(out, 1e-5) @ W_U
    return (logits.topk(k, dim=-1).indices == tokens[:, None]).any(-1).float().mean()


def mean_ablation(z, means, head, positions):
    out = z.clone()
    rows = torch.arange(z.shape[0])
    out[rows, positions, head] = means[rows, positions, head]
    return out


def _everywhere(z, m, h, p):
    out = z.clone()
    out[:, :, h] = m[:, :, h]
    return out


def _zeros_at(z, m, h, p):
    out = z.clone()
    out[torch.arange(z.shape[0]), p, h] = 0
    return out


# ------------------------------------------------------------------------------- acronyms

def letter_logit_diff(logits, answers, letter_ids):
    return torch.stack([logit_diff_vs_rivals(logits[:, i], answers[:, i], letter_ids, mean=False)
                        for i in range(3)], dim=1)


def _with_answer(lg, a, ids):
    return lg.gather(2, a[..., None])[..., 0] - lg[:, :, ids].max(-1).values


def _whole_vocab(lg, a, ids):
    others = lg.scatter(2, a[..., None], float("-inf"))
    return lg.gather(2, a[..., None])[..., 0] - others.max(-1).values


_Q, _K = acronyms.PREDICTS, acronyms.CAPITALS


def mover_attention(pattern):
    return torch.stack([pattern[:, :, q, k].mean(0) for q, k in zip(_Q, _K)], dim=1)


# ------------------------------------------------------------------------------- successor heads

def succession_score(logits, successor):
    has = successor >= 0
    return (logits[has].argmax(-1) == successor[has]).float().mean()


def residue_directions(x, values):
    centred = x - x.mean(0)
    return torch.stack([centred[values % 10 == r].mean(0) for r in range(10)])


# ------------------------------------------------------------------------------- factual recall

def noise_scale(W_E, tokens, mask):
    return 3 * W_E[tokens[mask]].std()


def gain_fit(X, y):  # noqa: D103
    return fit_head_gains(X, y).gains


def _no_centring(X, y):
    A = torch.einsum("njd,nkd->jk", X, X)
    b = torch.einsum("njd,nd->j", X, y)
    return torch.linalg.solve(A, b)


# ------------------------------------------------------------------------------- circuit reuse

def wrong_color_rows(asked, seq, color_positions):
    rows = torch.zeros(len(asked), seq)
    for j, pos in enumerate(color_positions):
        rows[:, pos] = (asked != j).float() * 0.5
    return rows


def _on_answer(a, s, c):
    rows = torch.zeros(len(a), s)
    for j, pos in enumerate(c):
        rows[:, pos] = (a == j).float()
    return rows


def _thirds(a, s, c):
    rows = torch.zeros(len(a), s)
    rows[:, list(c)] = 1 / 3
    return rows


def block_keys(pattern, query, block):
    out = pattern.clone()
    rows = torch.arange(len(query))
    row = out[rows, :, query].masked_fill(block[:, None, :], 0.0)
    out[rows, :, query] = row / row.sum(-1, keepdim=True)
    return out


def _no_renorm(p, q, b):
    out = p.clone()
    rows = torch.arange(len(q))
    out[rows, :, q] = out[rows, :, q].masked_fill(b[:, None, :], 0.0)
    return out


def _every_query(p, q, b):
    out = p.masked_fill(b[:, None, None, :], 0.0)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


# ------------------------------------------------------------------------------- debugging

def pair_direct_effect(pattern, v, W_O, scale, direction):
    writes = torch.einsum("hs,shd,hdm->hsm", pattern, v, W_O)
    return writes @ direction / scale


def rank_correlation(x, y):
    return torch.tensor(_spearman(x.tolist(), y.tolist()))


def _pearson(x, y):
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    return (x * y).sum() / (x.norm() * y.norm())


#: check name -> (the package's case builder, reference, {known mistake: implementation})
SHORT_CHECKS = {
    "logit difference": (tour._logit_cases, logit_diff, {
        "you read the last column for every prompt; read each prompt's own END position":
            lambda lg, a, w, e: lg[_rows(lg), -1, a] - lg[_rows(lg), -1, w],
        "you compared with the wrong token at the previous position (off by one)":
            lambda lg, a, w, e: lg[_rows(lg), e - 1, a] - lg[_rows(lg), e - 1, w],
    }),
    "direct logit attribution": (tour._dla_cases, dla, {
        "you forgot to centre each component (the folded LayerNorm subtracts its mean first)":
            lambda s, sc, d: (s / sc) @ d,
        "you forgot to divide by the final LayerNorm's scale":
            lambda s, sc, d: (s - s.mean(-1, keepdim=True)) @ d,
    }),
    "copy score": (ioi._copy_cases, copy_score, {
        "the head reads its input through a LayerNorm: normalise the residual before W_V":
            lambda r, V, O, U, t, k=5: ((folded_layer_norm(r @ V @ O, 1e-5) @ U).topk(k, -1).indices
                                        == t[:, None]).any(-1).float().mean(),
        "you counted only the top-1 token; the copy score asks for the top 5":
            lambda r, V, O, U, t, k=5: copy_score(r, V, O, U, t, k=1),
    }),
    "mean ablation": (ioi._ablation_cases, mean_ablation, {
        "you ablated the head at every position; the circuit keeps it only at its own "
        "position, so replace it there only": _everywhere,
        "you set the output to zero (zero ablation); mean ablation uses the mean": _zeros_at,
        "you ablated the next head (off by one in the head index)":
            lambda z, m, h, p: mean_ablation(z, m, (h + 1) % z.shape[2], p),
    }),
    "letter logit difference": (acronyms._letter_cases, letter_logit_diff, {
        "the maximum includes the answer itself: leave the answer out of the rivals "
        "(else the value is never above 0)": _with_answer,
        "you took the largest logit over the whole vocabulary; the rivals are the 26 "
        "capital letters only": _whole_vocab,
    }),
    "mover attention": (acronyms._attention_cases, mover_attention, {
        "query and key are swapped: the pattern is indexed [..., query, key], and the "
        "query is the prediction position":
            lambda p: torch.stack([p[:, :, k, q].mean(0) for q, k in zip(_Q, _K)], dim=1),
        "you read the attention to Ti (the rest of the word); the mover looks at the capital Ci":
            lambda p: torch.stack([p[:, :, q, k + 1].mean(0) for q, k in zip(_Q, _K)], dim=1),
        "off by one in the query: letter i is predicted one position before it appears "
        "(letter 1 at '(', column 8)":
            lambda p: torch.stack([p[:, :, q - 1, k].mean(0) for q, k in zip(_Q, _K)], dim=1),
    }),
    "succession score": (successor_heads._succession_cases, succession_score, {
        "you counted the rows without a successor (successor −1) too: leave them out":
            lambda lg, s: (lg.argmax(-1) == s).float().mean(),
        "you scored copying (each token's own column); the score asks for the successor":
            lambda lg, s: (lg[s >= 0].argmax(-1) == torch.arange(len(s))[s >= 0]).float().mean(),
        "you took the maximum down the columns; each row is one input token, so take the "
        "argmax along the row (dim -1)":
            lambda lg, s: (lg[:, s >= 0].argmax(0) == torch.arange(len(s))[s >= 0]).float().mean(),
    }),
    "residue directions": (successor_heads._residue_cases, residue_directions, {
        "you grouped by the tens digit (value // 10); the residue is value % 10":
            lambda x, v: torch.stack([(x - x.mean(0))[(v // 10) % 10 == r].mean(0) for r in range(10)]),
        "you did not subtract the mean over all tokens: every direction then carries the "
        "shared offset": lambda x, v: torch.stack([x[v % 10 == r].mean(0) for r in range(10)]),
        "off by one: row r must hold the tokens with value % 10 == r (you used value − 1)":
            lambda x, v: residue_directions(x, v - 1),
    }),
    "noise scale": (factual_recall._noise_cases, noise_scale, {
        "you used the std of the whole vocabulary's embeddings, not the subject tokens'":
            lambda W, t, m: 3 * W.std(),
        "you used every token of the prompts, not only the subject's": lambda W, t, m: 3 * W[t].std(),
        "you forgot the factor 3": lambda W, t, m: W[t[m]].std(),
    }),
    "head gains": (factual_recall._gain_cases, gain_fit, {
        "you fitted without an intercept: centre X and y over prompts (dimension 0) first": _no_centring,
    }),
    "wrong-color rows": (circuit_reuse._color_cases, wrong_color_rows, {
        "you put the attention on the answer's color; the intervention sends it to the two "
        "*wrong* colors, as the inhibition heads do in IOI": _on_answer,
        "you spread the attention over all three colors; the asked one gets none": _thirds,
        "the row does not sum to 1: ½ on each of the two wrong colors":
            lambda a, s, c: 2 * wrong_color_rows(a, s, c),
    }),
    "block keys": (circuit_reuse._block_cases, block_keys, {
        "the edited row no longer sums to 1: renormalise it after zeroing the blocked keys": _no_renorm,
        "you blocked the keys at every query position; only the query position (END) changes":
            _every_query,
    }),
    "pair direct effect": (debugging._pair_cases, pair_direct_effect, {
        "you left out the final LayerNorm's scale: divide the write by it (the logits see the "
        "normalised residual)": lambda p, v, O, s, d: pair_direct_effect(p, v, O, 1.0, d),
        "you multiplied by the LayerNorm's scale; the LayerNorm divides by it":
            lambda p, v, O, s, d: pair_direct_effect(p, v, O, 1 / s, d),
        "you left out the attention probability: each pair writes its value times the "
        "attention it gets": lambda p, v, O, s, d: pair_direct_effect(torch.ones_like(p), v, O, s, d),
    }),
    "rank correlation": (debugging._rank_cases, rank_correlation, {
        "that is Pearson's correlation of the values; Spearman's correlates their ranks": _pearson,
        "argsort gives the order of the indices, not the ranks: the ranks are "
        "x.argsort().argsort()": lambda x, y: _pearson(x.argsort(), y.argsort()),
    }),
}


def _plain(t) -> object:
    """Nested lists of floats with 7 significant digits (float32's precision)."""
    def short(x):
        return [short(v) for v in x] if isinstance(x, list) else float(f"{x:.7g}")
    return short(torch.as_tensor(t).detach().float().cpu().tolist())


def answers() -> dict:
    """``{check: {case label: {"expected": nested list, "mistakes": {description: list}}}}``."""
    out = {}
    for name, (cases, reference, mistakes) in SHORT_CHECKS.items():
        out[name] = {}
        for label, args in cases():
            clone = lambda: tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)  # noqa: E731
            out[name][label] = {
                "expected": _plain(reference(*clone())),
                "mistakes": {d: _plain(m(*clone())) for d, m in mistakes.items()},
            }
    return out


def answers_source() -> str:
    lines = [
        '"""Stored answers of the short checks: each input\'s expected output and each known',
        "mistake's output. GENERATED by ``python scripts/student_notebooks.py --answers`` from",
        '``teacher/short_checks.py`` (the reference solutions live there, not here): do not edit."""',
        "",
        "import json",
        "",
        "ANSWERS = {}",
    ]
    for name, value in answers().items():
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
        lines.append(f"ANSWERS[{name!r}] = json.loads({text!r})")
    return "\n".join(lines) + "\n"


def build_answers(path: Path = ANSWERS_FILE) -> Path:
    path.write_text(answers_source(), encoding="utf-8")
    return path
