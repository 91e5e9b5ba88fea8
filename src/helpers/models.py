"""Loading GPT-2 through TransformerLens 4.x, with an offline stand-in.

Two ways to get a model, one call:

* ``load_model("gpt2-small")``: the real weights from the Hugging Face hub (or its local
  cache), booted with ``TransformerBridge.boot_transformers`` and put in compatibility mode,
  so logit lens and direct logit attribution match the papers' HookedTransformer numbers.
* ``load_model("gpt2-small", weights="random")``: the **stand-in**. GPT-2's exact
  architecture with seeded random weights and GPT-2's real tokenizer, built from files shipped
  in this package. It touches no network. Prompts, token positions, shapes, runtime and
  memory are the real model's; the numbers it computes mean nothing.

**The stand-in's parameters** have GPT-2's kinds, drawn from stated distributions
(``STAND_IN_INIT``), so that a helper that drops or double-counts a bias changes numbers:
GPT-2's own init for the matrices (every weight N(0, 0.02²); the residual projections
``attn.c_proj`` and ``mlp.c_proj`` N(0, 0.02² / (2 n_layers)); ``wte`` and ``wpe`` N(0, 0.02²);
the unembedding tied to ``wte``), then, where GPT-2's init puts zeros and ones and the real
GPT-2 does not:

* the biases of the input projections (``attn.c_attn``: queries, keys, values; ``mlp.c_fc``):
  N(0, 0.1²);
* the biases of the output projections (``attn.c_proj``, ``mlp.c_proj``): N(0, 0.02²);
* every LayerNorm (``ln_1``, ``ln_2``, ``ln_f``): weight N(1, 0.2²), bias N(0, 0.1²).

So compatibility mode's folded ``b_U`` (``ln_f``'s bias through ``W_U``), ``b_O`` (the
value biases folded in) and ``b_in`` are non-zero, as on the real GPT-2. All draws come from
the seeded generator after GPT-2's init, in parameter order: same seed, same weights.

**Devices.** The stand-in is built on the CPU (so a seed gives the same weights on every
machine) and moved to the device before the bridge is booted, so its weights are where
``model.cfg.device`` says. ``finish_model`` installs one rule for inputs: every tensor passed
to ``model(...)``, ``run_with_cache(...)`` or ``run_with_hooks(...)`` is moved to the model's
device first, so a notebook may pass CPU tokens. ``helpers.devices`` (the device harness)
checks all this on a CPU-only machine.
"""

from __future__ import annotations

import json
import tempfile
import types
from functools import lru_cache
from pathlib import Path

import torch

from . import devices
from .hub import (
    SUPPORTED_MODELS,
    ModelSpec,
    _hub_endpoint,
    _hub_reachable,
    _in_local_cache,
    _offline_flag,
    hub_available,
)

__all__ = [
    "ModelSpec",
    "SUPPORTED_MODELS",
    "CasebookError",
    "UnknownModelError",
    "ModelUnavailableError",
    "resolve_model_name",
    "load_model",
    "gpt2_tokenizer",
    "pick_device",
    "hub_available",
    "is_stand_in",
    "build_stand_in",
    "finish_model",
    "STAND_IN_INIT",
    "gpt2_like_parameters_",
    "inputs_to_model_device",
]

TOKENIZER_DIR = Path(__file__).parent / "assets" / "gpt2-tokenizer"
WEIGHT_CHOICES = ("pretrained", "random")


class CasebookError(Exception):
    """Base class of the errors this package raises on purpose (their text is the message)."""


class UnknownModelError(CasebookError, ValueError):
    """A model name this book does not know."""


class ModelUnavailableError(CasebookError, RuntimeError):
    """Pretrained weights that cannot be had here (no hub access, nothing cached)."""


_ALIASES = {"gpt2": "gpt2-small"}
_ALIASES.update({spec.hf_id: name for name, spec in SUPPORTED_MODELS.items()})


def resolve_model_name(name: str) -> ModelSpec:
    """The ``ModelSpec`` for a book name (``gpt2-small``), alias (``gpt2``) or hub id."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in SUPPORTED_MODELS:
        names = ", ".join(SUPPORTED_MODELS)
        raise UnknownModelError(
            f"Unknown model name {name!r}. The casebook supports the GPT-2 family: {names} "
            f"(aliases: 'gpt2' for gpt2-small, and the hub ids such as "
            f"'openai-community/gpt2'). Pass one of these as model_name."
        )
    return SUPPORTED_MODELS[key]


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2's real byte-level BPE tokenizer, built offline from the files in ``assets/``.

    Same vocabulary and merges as every GPT-2 size on the hub; ``<|endoftext|>`` (id 50256)
    is BOS, EOS, UNK and, as TransformerLens sets it, the padding token.
    """
    from transformers import GPT2TokenizerFast

    vocab = json.loads((TOKENIZER_DIR / "encoder.json").read_text(encoding="utf-8"))
    lines = (TOKENIZER_DIR / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]  # line 0: #version
    eot = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(
        vocab=vocab, merges=merges, bos_token=eot, eos_token=eot, unk_token=eot
    )
    tokenizer.pad_token = eot
    return tokenizer


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for (checked), else cuda → mps → cpu.

    Under the device harness (``helpers.devices``) the pretend accelerator counts as
    available and ``None`` picks it.
    """
    harness = devices.enable_from_env()
    if device is None:
        if harness is not None:
            return harness.device
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CasebookError(
            f"Unknown device {device!r}. Use 'cpu', 'cuda', 'cuda:0', 'mps', or None to "
            f"pick the best available one automatically."
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if harness is not None:
        available[harness.accelerator] = True
    if not available.get(dev.type, False):
        raise CasebookError(
            f"Device {device!r} is not available on this machine. Use device=None to pick "
            f"the best available device (cuda → mps → cpu), or device='cpu'."
        )
    return dev


def _unavailable(spec: ModelSpec, cause: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Cannot load the pretrained weights of {spec.name} ({spec.hf_id}): {cause}. "
        f"Ways out: run where the Hugging Face hub is reachable (Google Colab, most laptops); "
        f"or pre-fill the cache on a machine that has access "
        f"(`hf download {spec.hf_id}`), copy ~/.cache/huggingface/hub here and set "
        f"HF_HUB_OFFLINE=1; or, to check prompts, shapes and code paths only, use "
        f"load_model({spec.name!r}, weights='random'), GPT-2's exact architecture with random "
        f"weights, whose numbers mean nothing."
    )


def _boot_pretrained(spec: ModelSpec, device: torch.device):
    from transformer_lens.model_bridge import TransformerBridge

    if not _in_local_cache(spec.hf_id):
        if _offline_flag():
            raise _unavailable(spec, "HF_HUB_OFFLINE is set and the weights are not in the local cache")
        if not _hub_reachable():
            raise _unavailable(
                spec, f"the hub ({_hub_endpoint()}) is unreachable and the weights are not in the local cache"
            )
    try:
        model = TransformerBridge.boot_transformers(spec.hf_id, device=device)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unavailable(spec, f"loading failed ({first_line})") from None
    got = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)
    want = (spec.n_layers, spec.n_heads, spec.d_model)
    if got != want:
        raise CasebookError(
            f"The weights found for {spec.hf_id} are not {spec.name}: they have {got[0]} layers "
            f"× {got[1]} heads, d_model {got[2]}, where {spec.name} has {want[0]} × {want[1]}, "
            f"d_model {want[2]}. The local Hugging Face cache holds another model under that "
            f"name; delete its folder models--{spec.hf_id.replace('/', '--')} in the hub cache "
            f"and download again (`hf download {spec.hf_id}`)."
        )
    return model


#: The stand-in's distributions where GPT-2's init puts zeros and ones (module docstring):
#: (standard deviation of the input projections' biases, of the output projections' biases,
#: of LayerNorm weights around 1, of LayerNorm biases).
STAND_IN_INIT = {"in_bias_std": 0.1, "out_bias_std": 0.02, "ln_weight_std": 0.2, "ln_bias_std": 0.1}


@torch.no_grad()
def gpt2_like_parameters_(hf_model, **overrides: float):
    """Give a Hugging Face GPT-2 the kinds of parameters the real one has, in place.

    Draws, from the global RNG (seed it first), every linear bias and every LayerNorm
    weight and bias from the distributions of ``STAND_IN_INIT`` (``overrides`` replace
    some): input projections' biases (``c_attn``, ``c_fc``) N(0, 0.1²), output projections'
    biases (``c_proj``) N(0, 0.02²), LayerNorm weights N(1, 0.2²) and biases N(0, 0.1²).
    Matrices and embeddings are left as they are. Returns ``hf_model``.
    """
    init = {**STAND_IN_INIT, **overrides}
    for name, p in hf_model.named_parameters():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            if name.endswith("weight"):
                p.copy_(1.0 + init["ln_weight_std"] * torch.randn_like(p))
            else:
                p.copy_(init["ln_bias_std"] * torch.randn_like(p))
        elif name.endswith("c_attn.bias") or name.endswith("c_fc.bias"):
            p.copy_(init["in_bias_std"] * torch.randn_like(p))
        elif name.endswith("c_proj.bias"):
            p.copy_(init["out_bias_std"] * torch.randn_like(p))
    return hf_model


def _random_hf_gpt2(spec: ModelSpec, seed: int):
    """A Hugging Face ``GPT2LMHeadModel`` of ``spec``'s shape, seeded, on the CPU: GPT-2's
    init, then :func:`gpt2_like_parameters_` (non-zero biases and LayerNorm parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=spec.n_layers,
        n_head=spec.n_heads,
        n_embd=spec.d_model,
        n_positions=spec.n_ctx,
        vocab_size=spec.d_vocab,
    )
    # Built on the meta device, then given memory and initialised once: the plain
    # constructor initialises every weight twice (its layers' own init, then GPT-2's), which
    # costs GPT-2 medium several seconds of a smoke build. Same distributions as GPT-2's init.
    with torch.device("meta"):
        hf_model = GPT2LMHeadModel(config)
    hf_model.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.default_generator.manual_seed(seed)  # the CPU's only: a GPU's RNG stays as it was
        hf_model.init_weights()
        gpt2_like_parameters_(hf_model)
    return hf_model


def build_stand_in(spec: ModelSpec, *, seed: int = 0, device: str | torch.device = "cpu"):
    """A bridge over a GPT-2-architecture model with seeded random weights (no network).

    ``load_model(..., weights="random")`` calls this with a supported size; tests call it
    with a tiny ``ModelSpec`` (e.g. 2 layers × 4 heads) to check the science code quickly.
    Compatibility mode is not yet enabled on the result.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = _random_hf_gpt2(spec, seed)
    hf_model.eval()
    # Drawn on the CPU (the same weights on every machine), then moved where the model runs:
    # the bridge records `device` in cfg.device but leaves a given model where it is.
    hf_model.to(device)
    # The bridge rebuilds the tokenizer by its name_or_path when it sets up BOS, so the
    # tokenizer must come from a folder (an in-memory one has no name_or_path).
    with tempfile.TemporaryDirectory(prefix="casebook-gpt2-tokenizer-") as folder:
        gpt2_tokenizer().save_pretrained(folder)
        from transformers import GPT2TokenizerFast

        tokenizer = GPT2TokenizerFast.from_pretrained(folder)
        return TransformerBridge.boot_transformers(
            spec.hf_id, hf_model=hf_model, tokenizer=tokenizer, device=device
        )


def load_model(
    name: str = "gpt2-small",
    *,
    weights: str = "pretrained",
    device: str | torch.device | None = None,
    seed: int = 0,
):
    """A GPT-2 as a TransformerLens ``TransformerBridge`` in compatibility mode.

    Args:
        name: ``gpt2-small`` (alias ``gpt2``), ``gpt2-medium``, ``gpt2-large`` or ``gpt2-xl``.
        weights: ``"pretrained"`` (the hub's weights) or ``"random"`` (the offline stand-in).
        device: ``None`` picks cuda → mps → cpu.
        seed: seeds the stand-in's random weights (ignored for pretrained weights).

    The model comes in eval mode with its parameters frozen (``requires_grad=False``); call
    ``model.requires_grad_(True)`` for gradient-based attribution. ``model.is_stand_in``
    tells the stand-in from GPT-2, and ``model.casebook_name`` is the book's model name.
    """
    spec = resolve_model_name(name)
    if weights not in WEIGHT_CHOICES:
        raise CasebookError(
            f"Unknown weights={weights!r}. Use weights='pretrained' for GPT-2's real weights "
            f"(needs the Hugging Face hub or a filled cache) or weights='random' for the "
            f"offline stand-in (GPT-2's architecture and tokenizer, random weights)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CasebookError(
            f"seed must be a non-negative integer, got seed={seed!r}. Use e.g. seed=0."
        )
    dev = pick_device(device)
    with torch.random.fork_rng(devices=[]):  # loading leaves the caller's CPU RNG as it was
        if weights == "random":
            model = build_stand_in(spec, seed=seed, device=dev)
        else:
            model = _boot_pretrained(spec, dev)
        return finish_model(model, spec, stand_in=weights == "random", seed=seed)


def finish_model(model, spec: ModelSpec, *, stand_in: bool, seed: int | None = None):
    """Compatibility mode, eval mode, frozen parameters, the casebook's labels, and the input
    rule (:func:`inputs_to_model_device`: tensors given to the model go to its device).

    Before compatibility mode folds them into ``b_O``, each head's value bias is recorded
    with its LayerNorm folded in (what the papers' HookedTransformer held with
    ``fold_value_biases=False``): ``model.casebook_value_bias``, ``[n_layers, n_heads,
    d_head]``, read by :func:`helpers.copy_score`.
    """
    model.casebook_value_bias = _ln_folded_value_bias(model)
    model.enable_compatibility_mode(disable_warnings=True)
    inputs_to_model_device(model)  # model(...), run_with_cache(...): CPU tokens are fine
    model.eval()
    model.requires_grad_(False)
    model.is_stand_in = stand_in
    model.casebook_name = spec.name
    model.casebook_seed = seed if stand_in else None
    return model


@torch.no_grad()
def _ln_folded_value_bias(model) -> torch.Tensor:
    """``[n_layers, n_heads, d_head]``: b_V + b_ln1 @ W_V per head, from the unprocessed
    bridge (the LayerNorm's bias folded in, the value bias still per head)."""
    out = []
    for layer in range(model.cfg.n_layers):
        ln_bias = model.blocks[layer].ln1._original_component.bias
        W_V, b_V = model.W_V[layer], model.b_V[layer]  # [H, d_model, d_head], [H, d_head]
        out.append(b_V + torch.einsum("d,hdk->hk", ln_bias.to(W_V.dtype), W_V))
    return torch.stack(out).detach().clone()


def _forward_on_model_device(self, *args, **kwargs):
    device = self.cfg.device
    if device is not None:
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return type(self).forward(self, *args, **kwargs)


def inputs_to_model_device(model):
    """Install the input rule: tensors given to the model's forward go to its device first.

    ``model(tokens)``, ``model.run_with_cache(tokens)`` and ``model.run_with_hooks(tokens)``
    all call ``model.forward``; this replaces it on the instance by one that moves every
    tensor argument (tokens, ``attention_mask``, ...) to ``model.cfg.device``, so notebooks
    and helpers may pass CPU tensors. Idempotent; returns ``model``.
    """
    if getattr(model.forward, "__func__", None) is not _forward_on_model_device:
        model.forward = types.MethodType(_forward_on_model_device, model)
    return model


def is_stand_in(model) -> bool:
    """True for the random-weight stand-in (and for any model not loaded by ``load_model``)."""
    return bool(getattr(model, "is_stand_in", True))
