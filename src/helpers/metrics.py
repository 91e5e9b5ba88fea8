"""Task metrics on logits: logit difference, answer probability, accuracy, normalised score.

Shapes: ``logits`` is ``[batch, seq, d_vocab]`` (or already ``[batch, d_vocab]`` at the
answer position); ``answer``/``wrong`` are token ids ``[batch]``; ``positions`` is the
position to read per prompt ``[batch]`` (default: the last position).
"""

from __future__ import annotations

import torch

__all__ = ["logits_at", "logit_diff", "answer_prob", "accuracy", "normalized_metric"]


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


def accuracy(
    logits: torch.Tensor,
    answer: torch.Tensor,
    wrong: torch.Tensor,
    positions: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Share of prompts where the answer's logit beats the wrong token's."""
    return (logit_diff(logits, answer, wrong, positions, mean=False) > 0).float().mean()


def normalized_metric(patched, clean, corrupted) -> torch.Tensor | float:
    """(patched − clean) / (clean − corrupted): 0 = no effect, −1 = as bad as corrupted.

    This is Wang et al.'s convention for path patching; add 1 for ARENA's
    (patched − corrupted)/(clean − corrupted), where 1 means clean.
    """
    return (patched - clean) / (clean - corrupted)
