"""Small sparse autoencoders and linear probes on a matrix of activations.

Enough for a chapter that asks "is there a sparse, interpretable basis for these few hundred
vectors?" on CPU in seconds: a one-layer ReLU autoencoder with an L1 penalty, trained full
batch with Adam, decoder rows kept at unit norm; a multinomial logistic-regression probe; and
:func:`match_features`, which pairs each class of a labelling with the feature that fires
most selectively on it.

* :class:`SparseAutoencoder`: ``encode(x) = relu((x - b_dec) @ W_enc + b_enc)``,
  ``decode(f) = f @ W_dec + b_dec``; rows of ``W_dec`` are the feature directions.
* :func:`train_sae`: seeded; returns the autoencoder and its final losses.
* :func:`train_probe`: ``[n_classes, d]`` class directions (and biases) of a softmax probe.
* :func:`match_features`: per class, the feature with the best F1 between "fires" and
  "is in the class", with its coverage (recall) and precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import contextlib

import torch

__all__ = ["SparseAutoencoder", "train_sae", "train_probe", "match_features"]


@contextlib.contextmanager
def _one_thread():
    """Small full-batch problems: one thread is faster than two that wait on each other
    (measured figures in NOTES.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class SparseAutoencoder:
    """A trained autoencoder: ``W_enc [d, F]``, ``b_enc [F]``, ``W_dec [F, d]``, ``b_dec [d]``."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    losses: dict

    @property
    def n_features(self) -> int:
        return int(self.W_dec.shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec


def train_sae(
    x: torch.Tensor,
    n_features: int,
    *,
    l1: float = 1e-2,
    steps: int = 2000,
    lr: float = 3e-3,
    seed: int = 0,
    normalize: bool = True,
) -> SparseAutoencoder:
    """Train a sparse autoencoder on ``x`` ``[n, d]`` (full batch, Adam), seeded.

    Loss: mean squared reconstruction error + ``l1`` × mean L1 norm of the feature
    activations (weighted by the unit-norm decoder rows). ``normalize`` rescales ``x`` so
    its rows have mean norm ``sqrt(d)`` during training (``l1`` then means the same for any
    input scale); the returned weights act on the original scale. Everything is created on
    ``x``'s device, in float32; the start is drawn from a CPU generator seeded with
    ``seed``, so every device starts from the same weights.
    """
    x = torch.as_tensor(x).detach().float()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be [n >= 2, d], got {tuple(x.shape)}")
    if n_features < 1 or steps < 1:
        raise ValueError("n_features and steps must be positive")
    n, d = x.shape
    device = x.device
    scale = ((d ** 0.5) / x.norm(dim=1).mean().clamp_min(1e-12) if normalize
             else torch.tensor(1.0, device=device))
    xs = x * scale
    # drawn on the CPU from a seeded generator, then moved: the same start on every device
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n_features, d, generator=gen).to(device)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": W_dec.T.clone().requires_grad_(True),
        "b_enc": torch.zeros(n_features, device=device, requires_grad=True),
        "W_dec": W_dec.clone().requires_grad_(True),
        "b_dec": xs.mean(0).clone().requires_grad_(True),
    }
    opt = torch.optim.Adam(params.values(), lr=lr)
    with torch.enable_grad(), _one_thread():
        for _ in range(steps):
            dec = params["W_dec"] / params["W_dec"].norm(dim=1, keepdim=True)
            f = torch.relu((xs - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
            recon = f @ dec + params["b_dec"]
            mse = (recon - xs).pow(2).sum(1).mean() / d
            sparsity = f.sum(1).mean() / d ** 0.5
            loss = mse + l1 * sparsity
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        dec = params["W_dec"] / params["W_dec"].norm(dim=1, keepdim=True)
        f = torch.relu((xs - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
        var = (xs - xs.mean(0)).pow(2).sum(1).mean()
        losses = {
            "mse": float(mse),
            "l0": float((f > 0).float().sum(1).mean()),
            "explained_variance": float(1 - (f @ dec + params["b_dec"] - xs).pow(2).sum(1).mean() / var),
            "dead_features": int(((f > 0).sum(0) == 0).sum()),
        }
        # Back to the input's scale: x = f' @ dec + b_dec / scale with f' = f / scale.
        return SparseAutoencoder(
            W_enc=params["W_enc"].detach().clone(),
            b_enc=(params["b_enc"] / scale).detach().clone(),
            W_dec=dec.detach().clone(),
            b_dec=(params["b_dec"] / scale).detach().clone(),
            losses=losses,
        )


def train_probe(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    weight_decay: float = 1e-3,
    steps: int = 500,
    lr: float = 0.05,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A softmax (multinomial logistic) probe: ``(W [n_classes, d], b [n_classes])``.

    Trained full batch with Adam and an L2 penalty on ``x``'s device (``labels`` are moved
    there; the start is drawn from a CPU generator seeded with ``seed``, so every device
    starts alike); predict with ``(x @ W.T + b).argmax(-1)``.
    Rows of ``W`` are the class directions in the input space (centre ``x`` first if the
    classes should not share an offset).
    """
    x = torch.as_tensor(x).detach().float()
    labels = torch.as_tensor(labels, dtype=torch.long).to(x.device)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"x must be [n, d] and labels [n]; got {tuple(x.shape)} and {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}")
    # drawn on the CPU from a seeded generator, then moved: the same start on every device
    gen = torch.Generator().manual_seed(seed)
    W = (0.01 * torch.randn(n_classes, x.shape[1], generator=gen)).to(x.device).requires_grad_(True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    with torch.enable_grad(), _one_thread():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(x @ W.T + b, labels) + weight_decay * W.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach(), b.detach()


def match_features(acts: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[dict]:
    """For each class, the feature whose firing set best matches it (by F1).

    ``acts``: ``[n, F]`` feature activations; a feature *fires* on a row when it is > 0.
    ``labels``: ``[n]`` class of each row. Returns one dict per class: ``feature``,
    ``coverage`` (share of the class's rows it fires on), ``precision`` (share of its
    firing rows in the class) and ``f1``.
    """
    fires = (torch.as_tensor(acts) > 0).float()
    labels = torch.as_tensor(labels, dtype=torch.long)
    if fires.ndim != 2 or labels.shape != (fires.shape[0],):
        raise ValueError("acts must be [n, F] and labels [n]")
    out = []
    n_fire = fires.sum(0)
    for c in range(n_classes):
        member = (labels == c).float()
        if member.sum() == 0:
            out.append({"class": c, "feature": None, "coverage": float("nan"),
                        "precision": float("nan"), "f1": float("nan")})
            continue
        tp = member @ fires
        recall = tp / member.sum()
        precision = tp / n_fire.clamp_min(1)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        best = int(f1.argmax())
        out.append({"class": c, "feature": best, "coverage": float(recall[best]),
                    "precision": float(precision[best]), "f1": float(f1[best])})
    return out
