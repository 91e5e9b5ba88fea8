"""Circuit Casebook's shared helpers.

Generic and tested: loading GPT-2 (real or stand-in), prompt sets, circuits, hooks, metrics,
activation and path patching, mean ablation and circuit evaluation, attribution, head-level
analyses, plotting, circuitsvis views, scorecards. Everything public is importable from
here. What only one paper needs (its prompt builder, published numbers and circuit) lives in
``helpers.cases.<chapter slug>``; generic modules never import from there.
"""

from .ablation import (
    CircuitEvaluator,
    circuit_score,
    circuit_scores,
    greedy_incompleteness,
    head_means,
    minimality_scores,
    random_subsets,
    run_with_mean_ablation,
)
from .attribution import dla, dla_by_head, dla_by_layer, head_direct_effects
from .circuits import Circuit, Head, head_label, parse_head
from .debugger import (
    Debugger,
    DebuggerInputError,
    Node,
    ReluSAE,
    ablation_effects,
    compare,
    latent_table,
    parse_node,
    rank_correlation,
    top_activating_snippets,
)
from .devices import DeviceHarness, DeviceMixError
from .display import attention_view, model_banner, show_attention, token_effect_view
from .display import setup_notebook as _display_setup_notebook
from .effective_ov import argmax_score, effective_ov_logits, head_logits_at, mean_logit_score, token_inputs
from .heads import attention_between, copy_score, format_heads, ov_logits, top_fraction_heads, top_heads
from .interventions import attention_edit_hooks, edited_logits
from .hooks import (
    activations_at,
    all_heads,
    as_heads,
    capture,
    folded_layer_norm,
    hook_name,
    logits_at_positions,
    position_mask,
)
from .metrics import (
    LogitDiffMetric,
    PositionMetric,
    answer_prob,
    logit_diff,
    logit_diff_vs_rivals,
    logits_at,
    normalized_metric,
    percent_change,
    strongest_rival,
)
from .models import (
    SUPPORTED_MODELS,
    CasebookError,
    ModelSpec,
    ModelUnavailableError,
    UnknownModelError,
    gpt2_tokenizer,
    hub_available,
    is_stand_in,
    load_model,
    pick_device,
    resolve_model_name,
)
from .path_patching import path_patch, path_patch_reference
from .patching import (
    node_mask,
    patch_heads,
    patch_heads_by_position,
    patch_resid_by_layer,
    patch_resid_by_position,
    replace_z_hooks,
    run_with_patches,
)
from .positional import bos_swap_sweep, swap_bos_attention_hooks, swap_pos_embed_hooks
from .plotting import bar, heads_heatmap, layer_position_heatmap, line, scatter, setup_plotting
from .project import COLAB_INSTALL_SPEC, REPOSITORY_URL
from .prompts import PAD_TOKEN_ID, PromptSet, check_single_tokens, tokenize
from .sae import SparseAutoencoder, match_features, train_probe, train_sae
from .scorecard import Reference, Scorecard
from .tracing import (
    ROLES,
    TRACE_KINDS,
    GainFit,
    KnockoutResult,
    TraceResult,
    attention_knockout,
    causal_trace,
    fit_head_gains,
    head_outputs,
    layer_window,
    logit_lens,
    noise_scale,
    scale_hooks,
    subject_mask,
    trace_by_role,
    trace_heatmap,
)

__version__ = "0.1.0"


def setup_notebook() -> None:
    """One call at the top of every chapter: plotting renderer, quiet library warnings, and
    the device harness when ``CASEBOOK_DEVICE_HARNESS`` asks for it (``helpers.devices``)."""
    from .devices import enable_from_env

    enable_from_env()
    _display_setup_notebook()
