"""Task metrics on logits: logit difference, answer probability, normalised score, and the
metric objects that tell patching code which logits they read.

Shapes: ``logits`` is ``[batch, seq, d_vocab]`` (or already ``[batch, d_vocab]`` at the
answer position); ``answer``/``wrong`` are token ids ``[batch]``; ``positions`` is the
position to read per prompt ``[batch]`` (default: the last position).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hooks import one_position_per_prompt

__all__ = [
    "logits_at",
    "logit_diff",
    "logit_diff_vs_rivals",
    "strongest_rival",
    "answer_prob",
    "normalized_metric",
    "percent_change",
    "LogitDiffMetric",
    "PositionMetric",
    "metric_positions",
    "metric_scalar",
    "rank_correlation",
]


def logits_at(logits: torch.Tensor, positions: torch.Tensor | int | None = None) -> torch.Tensor:
    """``[batch, d_vocab]``: each prompt's logits at its own position (default: last)."""
    if logits.ndim == 2:
        return logits
    if positions is None:
        return logits[:, -1]
    if isinstance(positions, int):
        return logits[:, positions]
    positions = torch.as_tensor(positions, device=logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), positions]


def logit_diff(
    logits: torch.Tensor,
    answer: torch.Tensor,
    wrong: torch.Tensor,
    positions: torch.Tensor | int | None = None,
    *,
    mean: bool = True,
) -> torch.Tensor:
    """logit(answer) − logit(wrong) at each prompt's position; the mean unless ``mean=False``."""
    final = logits_at(logits, positions)
    rows = torch.arange(final.shape[0], device=final.device)
    diff = final[rows, torch.as_tensor(answer, device=final.device)] - final[
        rows, torch.as_tensor(wrong, device=final.device)
    ]
    return diff.mean() if mean else diff


def strongest_rival(logits: torch.Tensor, answer: torch.Tensor, rivals: torch.Tensor,
                    positions: torch.Tensor | int | None = None) -> torch.Tensor:
    """``[batch]`` token ids: each prompt's highest-scoring token among ``rivals`` other than
    its answer (``rivals``: ``[k]`` ids shared by every prompt, e.g. the 26 capital letters)."""
    final = logits_at(logits, positions)
    rivals = torch.as_tensor(rivals, device=final.device).reshape(-1)
    answer = torch.as_tensor(answer, device=final.device).reshape(-1)
    if answer.shape[0] != final.shape[0]:
        raise ValueError(f"answer has {answer.shape[0]} entries for {final.shape[0]} prompts")
    rival_logits = final[:, rivals].masked_fill(rivals[None, :] == answer[:, None], float("-inf"))
    return rivals[rival_logits.argmax(-1)]


def logit_diff_vs_rivals(logits: torch.Tensor, answer: torch.Tensor, rivals: torch.Tensor,
                         positions: torch.Tensor | int | None = None, *, mean: bool = True) -> torch.Tensor:
    """logit(answer) − the largest logit among ``rivals`` other than the answer
    (:func:`strongest_rival`); the mean over prompts unless ``mean=False``."""
    wrong = strongest_rival(logits, answer, rivals, positions)
    return logit_diff(logits, answer, wrong, positions, mean=mean)


def answer_prob(
    logits: torch.Tensor,
    answer: torch.Tensor,
    positions: torch.Tensor | int | None = None,
    *,
    mean: bool = True,
) -> torch.Tensor:
    """Softmax probability of the answer token at each prompt's position."""
    probs = logits_at(logits, positions).float().softmax(-1)
    rows = torch.arange(probs.shape[0], device=probs.device)
    p = probs[rows, torch.as_tensor(answer, device=probs.device)]
    return p.mean() if mean else p


def normalized_metric(patched, clean, corrupted) -> torch.Tensor | float:
    """(patched − clean) / (clean − corrupted): 0 = no effect, −1 = as bad as corrupted.

    A course convention (ARENA's ``ioi_metric_2``), not Wang et al.'s: their path-patching
    plots use :func:`percent_change`. Add 1 for ARENA's ``ioi_metric``,
    (patched − corrupted)/(clean − corrupted), where 1 means clean.
    """
    return (patched - clean) / (clean - corrupted)


def percent_change(patched, clean) -> torch.Tensor | float:
    """(patched − clean) / clean × 100: the "% change in logit difference" of Wang et al.'s
    path-patching figures (0 = no effect, −100 = the metric falls to zero).

    Works on floats, arrays and tensors (e.g. a ``[n_layers, n_heads]`` map of patched
    scores against one clean score). A clean value of exactly 0 raises: the change is
    undefined; a clean value near 0 makes every change large (noise made large).
    """
    if isinstance(clean, torch.Tensor):
        zero = bool((clean == 0).any())
    else:
        zero = clean == 0
    if zero:
        raise ZeroDivisionError("percent_change: the clean value is 0, so a % change is undefined")
    return (patched - clean) / clean * 100


@dataclass(frozen=True)
class LogitDiffMetric:
    """Mean over prompts of logit(answer) − logit(wrong) at one position per prompt.

    ``answer``, ``wrong``: ``[batch]`` token ids; ``positions``: ``[batch]``, an int, or
    ``None`` for the last position. Calling it on logits ``[batch, seq, d_vocab]`` equals
    :func:`helpers.metrics.logit_diff`; :func:`helpers.path_patch` uses the fields to compute only
    the two logits per prompt that it needs.
    """

    answer: torch.Tensor
    wrong: torch.Tensor
    positions: torch.Tensor | int | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, self.answer, self.wrong, self.positions)


@dataclass(frozen=True)
class PositionMetric:
    """``fn(logits at one position per prompt [batch, d_vocab]) -> scalar``.

    E.g. ``PositionMetric(lambda lg: lg.softmax(-1)[rows, io].mean(), ds.positions["END"])``.
    :func:`helpers.path_patch` computes the logits only at those positions.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor | int | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits_at(logits, self.positions))


def metric_positions(metric, batch: int, seq: int) -> torch.Tensor:
    """``[batch]``: the one position per prompt a metric object reads."""
    return one_position_per_prompt(metric.positions, batch, seq)


def metric_scalar(value) -> float:
    """A metric's value as a float; a clear error if it is not one number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"The metric must return a scalar, got a tensor of shape {tuple(value.shape)} "
                f"(average over prompts, e.g. logit_diff(..., mean=True))."
            )
        return float(value.detach().float().item())
    return float(value)


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties), without scipy: the Pearson
    correlation of the ranks; NaN when either sequence is constant."""
    import numpy as np
    import pandas as pd

    x = pd.Series(np.asarray(x, dtype=float))
    y = pd.Series(np.asarray(y, dtype=float))
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"rank_correlation needs two sequences of the same length >= 2, got "
                         f"lengths {len(x)} and {len(y)}.")
    rx, ry = x.rank().to_numpy(), y.rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
