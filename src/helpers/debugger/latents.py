"""SAE latents as nodes: checks that a residual SAE fits the model, and the latent table.

The SAE itself (:class:`helpers.ReluSAE`, its loader) lives beside the book's own sparse
autoencoder in :mod:`helpers.sae`; :mod:`.run` splices it into the forward pass.
"""

from __future__ import annotations

import pandas as pd
import torch

from .nodes import DebuggerInputError, sae_layer

#: Weights that write into the residual stream; centred means each has mean 0 over d_model.
WRITING_WEIGHTS = ("W_E", "W_pos", "W_O", "W_out", "b_O", "b_out")


@torch.no_grad()
def writing_weights_offset(model) -> dict[str, float]:
    """Per writing weight: max |mean over d_model| / rms of the weight (0 when centred)."""
    out = {}
    for name in WRITING_WEIGHTS:
        w = getattr(model, name).detach().float()
        rms = float(w.pow(2).mean().sqrt())
        out[name] = float(w.mean(-1).abs().max()) / rms if rms > 0 else 0.0
    return out


def check_sae_fits(model, sae) -> None:
    """Raise unless ``sae`` reads ``model``'s residual stream as it was trained to: the right
    width, a ``hook_resid_pre`` hook, and, when its config says the model was loaded with
    ``center_writing_weights`` (``gpt2-small-res-jb`` does), centred writing weights."""
    layer = sae_layer(sae)
    if not 0 <= layer < model.cfg.n_layers:
        raise DebuggerInputError(f"The SAE reads layer {layer}; the model has "
                                 f"{model.cfg.n_layers}.")
    d_in = int(sae.W_dec.shape[1])
    if d_in != model.cfg.d_model:
        raise DebuggerInputError(f"The SAE reads a {d_in}-wide residual stream; this model's "
                                 f"is {model.cfg.d_model} wide.")
    if getattr(sae, "centre_writing_weights", False):
        off = writing_weights_offset(model)
        bad = {k: v for k, v in off.items() if v > 1e-3}
        if bad:
            raise DebuggerInputError(
                f"The SAE was trained on a model loaded with center_writing_weights=True, but "
                f"this model's writing weights are not centred (|mean over d_model| / rms: "
                + ", ".join(f"{k} {v:.2g}" for k, v in bad.items())
                + "). Its residual stream is then shifted by a per-token constant the SAE never "
                "saw. Load the model as helpers.load_model does (compatibility mode centres "
                "them).")


@torch.no_grad()
def variance_unexplained(dbg, *, skip_bos: bool = True) -> float:
    """The SAE's fraction of variance unexplained on ``dbg``'s prompt, over positions after
    the BOS token when the prompt has one and ``skip_bos`` (the BOS residual has a huge norm
    and is the same for every text)."""
    run = dbg._run
    x = run.acts["resid_pre"][sae_layer(dbg.sae)].float()
    err = run.acts["sae_error"].float()
    start = 1 if (skip_bos and dbg.prepend_bos and x.shape[0] > 1) else 0
    x, err = x[start:], err[start:]
    return float(err.pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def latent_table(dbg, sae=None, layer: int | None = None, *, n: int = 20,
                 top_tokens: int = 3) -> tuple[pd.DataFrame, float]:
    """``(table, fraction of variance unexplained)``: the node table of the SAE's active
    latents (``L<layer>.<i>@<pos>``) and its error nodes (``err<layer>@<pos>``), by |estimated
    total effect|. The SAE is the debugger's (``Debugger(..., sae=sae)``); passing ``sae``
    here splices it into a copy of ``dbg``."""
    if sae is not None and dbg.sae is not sae:
        if layer is not None and layer != sae_layer(sae):
            raise DebuggerInputError(f"The SAE reads layer {sae_layer(sae)}, not {layer}.")
        from .core import Debugger

        dbg = Debugger(dbg.model, dbg.tokens[0], dbg.target_id, dbg.distractor_id,
                       prepend_bos=dbg.prepend_bos, sae=sae, _target_spec=dbg._target,
                       _edits=dbg._edits)
    if dbg.sae is None:
        raise DebuggerInputError("latent_table needs an SAE: Debugger(..., sae=sae).")
    table = dbg.table(n=n, kind=("latent", "sae_error"), top_tokens=top_tokens)
    return table, variance_unexplained(dbg)
