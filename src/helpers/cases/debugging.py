"""Debugging a prediction: the Transformer Debugger's demos, as data.

OpenAI's Transformer Debugger (TDB; Mossing et al. 2024, ``openai/transformer-debugger``) is a
tool, not a paper: it publishes no experimental numbers. What this module holds:

* the chapter's prompts, each with its target and distractor token (:data:`PROMPTS`), and the
  reference prompts used for mean ablation (:func:`ioi_reference_prompts`: the IOI prompt's
  template with three other names, the IOI chapter's p_ABC);
* TDB's published specifications and the sae-lens SAE facts the chapter quotes
  (:data:`REFERENCES`, from the fact sheet ``papers/transformer_debugger.md``);
* the IOI heads the chapter looks for, from :data:`helpers.cases.ioi.IOI_CIRCUIT`;
* :func:`sample_text`: the small text sample for top-activating snippets, written for this
  book and dedicated to the public domain (CC0 1.0), see ``assets/debugging-sample/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from ..models import gpt2_tokenizer
from ..scorecard import Reference
from .ioi import IOI_CIRCUIT

__all__ = [
    "DebugPrompt",
    "PROMPTS",
    "REFERENCES",
    "NAME_MOVERS",
    "NEGATIVE_NAME_MOVERS",
    "S_INHIBITION",
    "SAE_RELEASE",
    "SAE_LAYER",
    "check_prompts",
    "ioi_reference_prompts",
    "sample_text",
    "SAMPLE_LICENSE",
]


@dataclass(frozen=True)
class DebugPrompt:
    """One prediction to debug: the prompt, the expected next token and a distractor."""

    name: str
    prompt: str
    target: str
    distractor: str
    source: str


PROMPTS: dict[str, DebugPrompt] = {
    "ioi": DebugPrompt(
        "ioi",
        "When Mary and John went to the store, John gave a drink to",
        " Mary",
        " John",
        "TDB README demo (IOI on GPT-2 small); Wang et al. 2022, Fig. 1",
    ),
    "capital": DebugPrompt(
        "capital",
        "The capital of France is the city of",
        " Paris",
        " London",
        "TDB fact sheet: capital prompts, target ' Paris' vs a distractor capital",
    ),
}

#: Names for the IOI reference prompts (p_ABC): the same template, three other names.
_ABC_NAMES = (("Alice", "Bob", "Carol"), ("David", "Emma", "Frank"), ("Grace", "Henry", "Laura"),
              ("James", "Sarah", "Paul"), ("Anna", "Mark", "Lucy"), ("Peter", "Kate", "Tom"))

NAME_MOVERS = IOI_CIRCUIT.heads("name mover")
NEGATIVE_NAME_MOVERS = IOI_CIRCUIT.heads("negative name mover")
S_INHIBITION = IOI_CIRCUIT.heads("s-inhibition")

#: The sae-lens release and layer used for "latents instead of neurons" when the hub is
#: reachable: Joseph Bloom's residual-stream SAEs on GPT-2 small, ``hook_resid_pre`` of layer 8.
SAE_RELEASE = "gpt2-small-res-jb"
SAE_LAYER = 8

REFERENCES: dict[str, Reference] = {
    "tdb_sae_width": Reference(
        32768, "TDB neuron_explainer/models/README.md, datasets.md (v1/v4 autoencoders)", "official code"),
    "res_jb_width": Reference(
        24576, "third-party notes on sae-lens gpt2-small-res-jb (check before quoting)", "secondary source"),
    "res_jb_layer8_l0": Reference(
        60, "sae-lens pretrained_saes.yaml, gpt2-small-res-jb layer 8 (training distribution)",
        "official code"),
    "name_movers_in_top_heads": Reference(
        3, "Wang et al. 2022, Fig. 3b (9.9, 9.6, 10.0 dominate the direct effect); TDB's IOI demo videos",
        "paper text", note="count of the three among the 5 heads with the largest direct effect"),
    "negative_movers_negative": Reference(
        2, "Wang et al. 2022, §3.1 (10.7 and 11.10 write against IO)", "paper text",
        note="count of the two with a negative summed direct effect"),
    "s_inhibition_upstream_of_nm_query": Reference(
        4, "Wang et al. 2022, §3.2 (7.3, 7.9, 8.6, 8.10 act on the name movers' queries)", "paper text",
        note="count of the four among the 10 heads with the largest estimated effect on 9.9's query"),
}


def check_prompts(prompts: dict[str, DebugPrompt] | None = None) -> None:
    """Raise if a target or distractor is not one GPT-2 token, or if they are equal."""
    tok = gpt2_tokenizer()
    for p in (prompts or PROMPTS).values():
        for role in ("target", "distractor"):
            ids = tok.encode(getattr(p, role))
            if len(ids) != 1:
                raise ValueError(f"{p.name}: the {role} {getattr(p, role)!r} is {len(ids)} tokens")
        if p.target == p.distractor:
            raise ValueError(f"{p.name}: target and distractor are the same")


def ioi_reference_prompts(n: int = 6) -> list[str]:
    """The IOI prompt's template with three other single-token names (p_ABC), ``n`` of them."""
    if not 1 <= n <= len(_ABC_NAMES):
        raise ValueError(f"n must be between 1 and {len(_ABC_NAMES)}, got {n}")
    return [f"When {a} and {b} went to the store, {c} gave a drink to" for a, b, c in _ABC_NAMES[:n]]


SAMPLE_LICENSE = (
    "Text written for Circuit Casebook and dedicated to the public domain under CC0 1.0 "
    "(https://creativecommons.org/publicdomain/zero/1.0/)."
)


def sample_text() -> str:
    """The book's small text sample (CC0, see :data:`SAMPLE_LICENSE`) for dataset examples."""
    folder = resources.files("helpers") / "assets" / "debugging-sample"
    return (folder / "sample.txt").read_text(encoding="utf-8")


def residual_sae(model, layer: int = SAE_LAYER, *, d_sae: int = 24576, seed: int = 0):
    """``(sae, description)``: sae-lens's ``gpt2-small-res-jb`` SAE at ``hook_resid_pre`` of
    ``layer`` when sae-lens is installed, the model has real weights and the hub answers;
    otherwise an **untrained** :class:`helpers.ReluSAE` of the same shape (its latents mean
    nothing; it shows the pipeline). sae-lens is optional: ``pip install sae-lens``.
    """
    from ..debugger import ReluSAE
    from ..hub import hub_available
    from ..models import is_stand_in

    hook = f"blocks.{layer}.hook_resid_pre"
    reason = None
    if is_stand_in(model):
        reason = "the model is the stand-in (random weights), so a trained SAE would not fit it"
    else:
        try:
            from sae_lens import SAE
        except ImportError:
            reason = "sae-lens is not installed (it is optional: pip install sae-lens)"
        else:
            if not hub_available("jbloom/GPT2-Small-SAEs-Reformatted"):
                reason = "the model hub is not reachable"
            else:
                loaded = SAE.from_pretrained(SAE_RELEASE, hook, device=str(model.cfg.device))
                sae = loaded[0] if isinstance(loaded, tuple) else loaded
                return sae, f"sae-lens {SAE_RELEASE}, {hook} ({sae.W_dec.shape[0]} latents, trained)"
    sae = ReluSAE.untrained(model.cfg.d_model, d_sae, hook_name=hook, seed=seed)
    return sae, (f"UNTRAINED ReLU autoencoder, {d_sae} latents at {hook}, random weights: "
                 f"{reason}. Its latents mean nothing.")
