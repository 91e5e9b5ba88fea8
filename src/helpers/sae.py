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

__all__ = ["SparseAutoencoder", "train_sae", "train_probe", "match_features", "ReluSAE"]


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


# =====================================================================================
# Pretrained residual SAEs read from their files (the debugging chapter's ReluSAE).
# Same encode/decode as SparseAutoencoder above; only loading and metadata are added.
# =====================================================================================


class ReluSAE(SparseAutoencoder):
    """A trained ReLU SAE read from files: :class:`SparseAutoencoder`'s ``encode`` and
    ``decode``, plus where it reads (``hook_name``) and how it was trained.

    :meth:`from_files` reads a ``cfg.json`` and a ``sae_weights.safetensors`` (the layout of
    Joseph Bloom's GPT-2 SAEs on the Hugging Face hub) without any SAE library;
    :meth:`untrained` builds one with random weights of a given shape, for showing the
    pipeline offline: its latents mean nothing. ``apply_b_dec_to_input=False`` drops the
    ``− b_dec`` before encoding, for SAEs trained so. ``centre_writing_weights``: the model
    it was trained on had centred writing weights (``model_from_pretrained_kwargs``);
    ``prepend_bos`` and ``context_size``: its training contexts.
    """

    def __init__(self, W_enc, b_enc, W_dec, b_dec, *, hook_name: str, trained: bool,
                 apply_b_dec_to_input: bool = True, centre_writing_weights: bool = False,
                 prepend_bos: bool | None = None, context_size: int | None = None):
        super().__init__(W_enc, b_enc, W_dec, b_dec, losses={})
        self.hook_name = hook_name
        self.trained = trained
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.centre_writing_weights = centre_writing_weights
        self.prepend_bos = prepend_bos
        self.context_size = context_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(x if self.apply_b_dec_to_input else x + self.b_dec)

    def to(self, device) -> "ReluSAE":
        """A copy with every weight on ``device``."""
        moved = [t.to(device) for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)]
        return ReluSAE(*moved, hook_name=self.hook_name, trained=self.trained,
                       apply_b_dec_to_input=self.apply_b_dec_to_input,
                       centre_writing_weights=self.centre_writing_weights,
                       prepend_bos=self.prepend_bos, context_size=self.context_size)

    @classmethod
    def untrained(cls, d_in: int, d_sae: int, *, hook_name: str, seed: int = 0) -> "ReluSAE":
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        return cls(W_dec.T.clone(), torch.full((d_sae,), -0.5), W_dec, torch.zeros(d_in),
                   hook_name=hook_name, trained=False)

    @classmethod
    def from_files(cls, cfg_path, weights_path, *, device="cpu") -> "ReluSAE":
        """A trained SAE from its ``cfg.json`` and ``sae_weights.safetensors``.

        Reads the config keys of either naming (``hook_name``/``hook_point``,
        ``activation_fn_str``/``activation_fn``), at the top level or under ``metadata``, and
        refuses, with a clear error, what this class cannot represent: a non-ReLU activation,
        a non-standard architecture, input normalisation. A per-latent ``scaling_factor`` is
        folded into ``W_dec``.
        """
        import json

        from safetensors.torch import load_file

        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        meta = {**cfg.get("metadata", {}), **cfg}
        act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        arch = cfg.get("architecture", "standard")
        norm = cfg.get("normalize_activations", "none")
        if act != "relu" or arch != "standard" or norm not in (None, False, "none"):
            raise ValueError(
                f"{cfg_path}: activation {act!r}, architecture {arch!r}, input normalisation "
                f"{norm!r}; ReluSAE reads only plain ReLU SAEs without input normalisation.")
        hook = meta.get("hook_name") or meta.get("hook_point")
        if not hook:
            raise ValueError(f"{cfg_path} names no hook (neither 'hook_name' nor 'hook_point').")
        state = load_file(str(weights_path), device=str(device))
        missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in state]
        if missing:
            raise ValueError(f"{weights_path} lacks {missing}; it has {sorted(state)}.")
        W_enc, b_enc, W_dec, b_dec = (state[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
        d_in, d_sae = W_enc.shape
        shapes_ok = (tuple(W_dec.shape) == (d_sae, d_in) and b_enc.shape == (d_sae,)
                     and b_dec.shape == (d_in,))
        if not shapes_ok or cfg.get("d_in", d_in) != d_in or cfg.get("d_sae", d_sae) != d_sae:
            raise ValueError(
                f"{weights_path}: shapes W_enc {tuple(W_enc.shape)}, W_dec {tuple(W_dec.shape)}, "
                f"b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)} do not fit together "
                f"or the config's d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}.")
        if "scaling_factor" in state:  # decode((f * s)) = f @ (s[:, None] * W_dec)
            W_dec = W_dec * state["scaling_factor"].float()[:, None]
        kwargs = meta.get("model_from_pretrained_kwargs") or {}
        return cls(W_enc, b_enc, W_dec, b_dec, hook_name=hook, trained=True,
                   apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                   centre_writing_weights=bool(kwargs.get("center_writing_weights", False)),
                   prepend_bos=meta.get("prepend_bos"), context_size=meta.get("context_size"))
