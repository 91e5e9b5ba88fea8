"""Circuit Casebook's shared helpers.

Thin and generic: loading GPT-2 (real or stand-in), metrics, attribution, plotting,
circuitsvis views, scorecards. Paper-specific reasoning lives in the chapters.
"""

from .circuits import Circuit, Head, head_label, parse_head
from .attribution import dla, dla_by_head, dla_by_layer, dla_by_neuron, logit_diff_direction
from .display import attention_view, model_banner, setup_notebook, show_attention
from .metrics import accuracy, answer_prob, logit_diff, logits_at, normalized_metric
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
from .plotting import bar, heads_heatmap, line, scatter, setup_plotting
from .prompts import PAD_TOKEN_ID, PromptSet, check_single_tokens, tokenize
from .project import COLAB_INSTALL_SPEC, REPOSITORY_URL
from .scorecard import Reference, Scorecard

__version__ = "0.1.0"
