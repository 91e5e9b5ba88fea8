"""Debugging a prediction: the Transformer Debugger's demos, as data.

OpenAI's Transformer Debugger (TDB; Mossing et al. 2024, ``openai/transformer-debugger``) is a
tool, not a paper: it publishes no experimental numbers. What this module holds:

* the chapter's prompts, each with its target and distractor token (:data:`PROMPTS`), and the
  reference prompts used for mean ablation (:func:`ioi_reference_prompts`: the IOI prompt's
  template with three other names, the IOI chapter's p_ABC);
* TDB's published specifications and the facts about the residual SAE the chapter quotes
  (:data:`REFERENCES`, from the fact sheet ``papers/transformer_debugger.md``);
* the IOI heads the chapter looks for, from :data:`helpers.cases.ioi.IOI_CIRCUIT`;
* :func:`residual_sae`: Joseph Bloom's trained residual-stream SAE for GPT-2 small, read
  straight from its files on the Hugging Face hub into :class:`helpers.ReluSAE` (no SAE
  library: sae-lens requires TransformerLens < 4), else a labelled untrained stand-in;
* :func:`load_text_sample`: text for top-activating snippets, the Pile 10k sample from the hub
  when reachable, else the small sample written for this book and dedicated to the public
  domain (CC0 1.0), see ``assets/debugging-sample/`` (:func:`sample_text`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from ..hooks import hook_name
from ..hub import hub_available
from ..models import gpt2_tokenizer, is_stand_in
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
    "SAE_REPO",
    "SAE_LAYER",
    "check_prompts",
    "ioi_reference_prompts",
    "load_residual_sae",
    "residual_sae",
    "sample_text",
    "load_text_sample",
    "SAMPLE_LICENSE",
    "SECTIONS",
    "ESTIMATE_GROUPS",
    "build_scorecard",
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

#: The SAE used for "latents instead of neurons" when the hub is reachable: Joseph Bloom's
#: residual-stream SAEs on GPT-2 small (release name ``gpt2-small-res-jb``), ``hook_resid_pre``
#: of layer 8. :data:`SAE_REPO` is the hub repository holding them, one folder per hook
#: (``blocks.8.hook_resid_pre/cfg.json`` and ``sae_weights.safetensors``).
SAE_RELEASE = "gpt2-small-res-jb"
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
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
        note="count of the four among the 10 heads (layers 0-8) with the largest |estimated effect| on "
             "9.9's attention score towards ' Mary' minus ' John', through its query"),
    "estimate_predicts_ablation": Reference(
        1.0, "TDB terminology.md: the estimated total effect (activation × gradient) estimates the "
             "effect of ablating the node", "official code",
        note="TDB publishes no accuracy figure (1 = a perfect estimate); graded: the estimate "
             "ranks (ρ > 0), signs (agreement above chance) and sizes (R² > 0) better than chance"),
}

#: Section headings of the chapter (the scorecard links each row to the section computing it).
SECTIONS = {
    "ioi": '1. Why " Mary" and not " John"? The IOI prompt',
    "trace": "Trace upstream: what sets the name mover's query?",
    "estimates": "3. How good are the estimates?",
    "latents": "4. Latents instead of neurons",
}

#: Groups of the estimate study graded in the scorecard (random pairs and neurons pooled).
ESTIMATE_GROUPS = ("whole heads (zero)", "whole heads (mean)", "random nodes")


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


def load_text_sample(n_docs: int = 20, *, use_hub: bool = False,
                     max_chars: int = 2000) -> tuple[str, str]:
    """``(text, source)`` for top-activating snippets, and print where the text came from.

    ``use_hub``: the first ``n_docs`` documents of the Pile 10k sample (``NeelNanda/pile-10k``,
    the usual natural-text sample for GPT-2), each cut to ``max_chars``, joined by blank lines;
    if the hub fails, or without ``use_hub``, the paragraphs of :func:`sample_text`.
    """
    from ..corpus import text_sample

    paragraphs = [p.strip() for p in sample_text().split("\n\n") if p.strip()]
    docs, source = text_sample(paragraphs, n_docs, use_hub=use_hub, max_chars=max_chars,
                               shipped_name="the book's own text sample (CC0, assets/debugging-sample)")
    text = "\n\n".join(docs)
    print(f"Text sample: {source}, {len(docs)} documents, {len(text):,} characters.")
    return text, source


def _hub_download(repo_id: str, filename: str) -> str:
    """Local path of ``filename`` in hub repository ``repo_id`` (downloaded once, then cached)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename)


def load_residual_sae(layer: int = SAE_LAYER, *, d_in: int | None = None, device="cpu"):
    """Joseph Bloom's trained residual SAE at ``hook_resid_pre`` of ``layer``, as a
    :class:`helpers.ReluSAE`, read from :data:`SAE_REPO` on the Hugging Face hub.

    Downloads ``blocks.<layer>.hook_resid_pre/cfg.json`` first and, if ``d_in`` is given and
    the config's input width differs, raises before fetching the weights (≈150 MB).
    """
    from ..sae import ReluSAE

    hook = hook_name("resid_pre", layer)
    cfg_path = _hub_download(SAE_REPO, f"{hook}/cfg.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg_d_in = json.load(f).get("d_in")
    if d_in is not None and cfg_d_in is not None and cfg_d_in != d_in:
        raise ValueError(f"the SAE reads a {cfg_d_in}-wide residual stream (GPT-2 small); "
                         f"this model's is {d_in} wide")
    sae = ReluSAE.from_files(cfg_path, _hub_download(SAE_REPO, f"{hook}/sae_weights.safetensors"),
                             device=device)
    if sae.hook_name != hook:
        raise ValueError(f"{SAE_REPO}/{hook}/cfg.json says hook {sae.hook_name!r}, not {hook!r}")
    # sae-lens's record of this release (its metadata for gpt2-small-res-jb): trained on a
    # model loaded with centred writing weights, on 128-token contexts that start with BOS.
    # Older cfg.json files of the reformatted repository may not say so; the release does.
    sae.centre_writing_weights = True
    sae.prepend_bos = True
    sae.context_size = sae.context_size or 128
    return sae


def residual_sae(model, layer: int = SAE_LAYER, *, d_sae: int = 24576, seed: int = 0):
    """``(sae, description)``: the trained ``gpt2-small-res-jb`` SAE at ``hook_resid_pre`` of
    ``layer`` (:func:`load_residual_sae`) when the model has real weights and the hub answers;
    otherwise an **untrained** :class:`helpers.ReluSAE` of the same shape (its latents mean
    nothing; it shows the pipeline), with a description that says why.
    """
    from ..sae import ReluSAE

    hook = hook_name("resid_pre", layer)
    if is_stand_in(model):
        reason = "the model is the stand-in (random weights), so a trained SAE would not fit it"
    elif not hub_available(SAE_REPO):
        reason = (f"the Hugging Face hub is not reachable from here, so the SAE's files "
                  f"({SAE_REPO}, folder {hook}/) cannot be downloaded")
    else:
        try:
            sae = load_residual_sae(layer, d_in=model.cfg.d_model, device=model.cfg.device)
        except Exception as err:  # network, file or format problem: say it and fall back
            reason = f"loading it failed ({type(err).__name__}: {err})"
        else:
            return sae, (f"Trained residual SAE {SAE_RELEASE} (Joseph Bloom), {hook}, "
                         f"{sae.W_dec.shape[0]} latents, read from the hub repository {SAE_REPO}.")
    sae = ReluSAE.untrained(model.cfg.d_model, d_sae, hook_name=hook, seed=seed)
    return sae, (
        f"UNTRAINED ReLU autoencoder, {d_sae} latents at {hook}, random weights: the trained "
        f"SAE is not used because {reason}. Its latents mean nothing; the table only shows what "
        f"the section computes. With GPT-2 small's real weights and network access, this cell "
        f"downloads Joseph Bloom's trained SAE ({SAE_RELEASE}: {hook}/cfg.json and "
        f"sae_weights.safetensors from {SAE_REPO}, about 150 MB) with huggingface_hub and "
        f"reads it into the same ReluSAE class; no SAE library is needed."
    )


def build_scorecard(*, stand_in: bool, direct_gap: float, head_direct: dict, upstream: dict,
                    study=None, splice_gap: float | None = None,
                    centring_offset: float | None = None):
    """The chapter's scorecard.

    ``head_direct``: ``{"L.H": summed direct effect}`` for every head; ``upstream``: ``{"L.H":
    summed |estimated effect| on 9.9's score difference}`` for every head before layer 9;
    ``study``: :func:`helpers.debugger.estimate_study`'s frame (None: not run at this size);
    ``splice_gap``: |logit difference with the SAE spliced in − without|; ``centring_offset``:
    the largest of :func:`helpers.debugger.writing_weights_offset`.
    """
    from ..debugger import estimate_scores
    from ..scorecard import Scorecard

    ioi, trace, est, lat = (SECTIONS[k] for k in ("ioi", "trace", "estimates", "latents"))
    card = Scorecard("Debugging a prediction", stand_in=stand_in)
    exact = Reference(0.0, "definition of the direct effect (TDB terminology.md)", "official code")
    card.data_check("|Σ direct effects − logit difference|", exact, direct_gap, tol=1e-3,
                    section=ioi)
    splice = Reference(0.0, "definition of the error node: x = x̂ + (x − x̂) (TDB)", "official code")
    card.data_check("|logit difference with the SAE and error node spliced in − without|",
                    splice, splice_gap, tol=1e-3, section=lat)
    centred = Reference(0.0, "gpt2-small-res-jb cfg.json: model_from_pretrained_kwargs "
                             "center_writing_weights=True", "official code")
    card.data_check("writing weights' offset from centred (max |mean over d_model| / rms)",
                    centred, centring_offset, tol=1e-3, section=lat)
    by_direct = sorted(head_direct, key=lambda h: -head_direct[h])
    card.top_k("name movers in the top-5 heads by direct effect",
               REFERENCES["name_movers_in_top_heads"], by_direct,
               [f"{l}.{h}" for l, h in NAME_MOVERS], 5, need=2, section=ioi)
    for l, h in NEGATIVE_NAME_MOVERS:
        card.sign(f"direct effect of negative name mover {l}.{h}",
                  REFERENCES["negative_movers_negative"], head_direct[f"{l}.{h}"], sign=-1,
                  null=0.0, section=ioi)
    by_upstream = sorted(upstream, key=lambda h: -upstream[h])
    card.top_k("S-inhibition heads in the top 10 upstream of 9.9's query",
               REFERENCES["s_inhibition_upstream_of_nm_query"], by_upstream,
               [f"{l}.{h}" for l, h in S_INHIBITION], 10, need=2, section=trace)
    ref = REFERENCES["estimate_predicts_ablation"]
    scores = None
    if study is not None:
        pooled = study.replace({"group": {"random pairs": "random nodes",
                                          "random neurons": "random nodes"}})
        scores = estimate_scores(pooled, se=True)
    for group in ESTIMATE_GROUPS:
        have = scores is not None and group in scores.index
        sc = scores.loc[group] if have else {}
        get = (lambda k: sc[k]) if have else (lambda k: None)
        card.sign(f"ρ(estimate, ablation), {group}", ref, get("rho"), sign=1, null=0.0,
                  se=get("rho_se"), section=est)
        card.ordering(f"sign agreement, {group}", ref,
                      greater=("sign agreement", get("sign_agreement"), get("sign_agreement_se")),
                      lesser=("chance", 0.5, None), section=est)
        card.sign(f"R² of the estimate, {group}", ref, get("r2"), sign=1, null=0.0,
                  se=get("r2_se"), section=est)
    if scores is not None:
        for group in ("top pairs by estimate", "top neurons by estimate"):
            if group in scores.index:
                card.info(f"ρ(estimate, ablation), {group}", ref, scores.loc[group, "rho"],
                          se=scores.loc[group, "rho_se"], section=est,
                          note="nodes chosen by their estimate: selection-biased, shown for "
                               "comparison with TDB's table")
    return card
