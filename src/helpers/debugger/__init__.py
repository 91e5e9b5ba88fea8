"""Debugging one prediction, the Transformer Debugger's way, in a notebook.

OpenAI's Transformer Debugger (TDB, Mossing et al. 2024) asks "why token A rather than
token B?" of one prompt. :class:`Debugger` answers with the same quantities: the direction
of interest ``W_U[:, target] − W_U[:, distractor]`` (its value is the logit difference) and a
node table of every head at every token pair, every MLP neuron at every token, optionally
every active SAE latent, with activation, write norm, direct effect and estimated total
effect (activation × gradient); ablations; trace upstream through Q, K, Q+K or V; two
prompts side by side.

The package, by job:

* :mod:`.nodes`: node labels (``H9.9 14<-4``, ``N5.1234@7``, ``L8.517@3``) and their checks;
* :mod:`.run`: trace targets, edits (the one ablation indexer) and the hooked run;
* :mod:`.core`: the :class:`Debugger` (table, ablate, trace, token effects);
* :mod:`.table`: the node table's columns and up/down-voted tokens;
* :mod:`.estimates`: single-node ablations against their first-order estimates;
* :mod:`.latents`: SAE latents as nodes (the SAE class is :class:`helpers.sae.ReluSAE`);
* :mod:`.views`: two prompts side by side, input tokens that up-vote a node.

Dataset examples (:func:`helpers.corpus.top_activating_snippets`) and
:func:`helpers.metrics.rank_correlation` are re-exported here.
"""

from ..corpus import top_activating_snippets
from ..metrics import rank_correlation
from ..sae import ReluSAE
from .core import ABLATIONS, Debugger, reference_means
from .estimates import (ablation_effects, estimate_scores, estimate_study,
                        first_order_estimate, top_by_actual)
from .latents import check_sae_fits, latent_table, variance_unexplained, writing_weights_offset
from .nodes import COLUMNS, HEAD_TARGETS, KINDS, TRACE_MODES, DebuggerInputError, Node, parse_node
from .views import compare, input_tokens

__all__ = [
    "ABLATIONS", "COLUMNS", "HEAD_TARGETS", "KINDS", "TRACE_MODES",
    "Debugger", "DebuggerInputError", "Node", "ReluSAE",
    "ablation_effects", "check_sae_fits", "compare", "estimate_scores", "estimate_study",
    "first_order_estimate", "input_tokens", "latent_table", "parse_node", "rank_correlation",
    "reference_means", "top_activating_snippets", "top_by_actual", "variance_unexplained",
    "writing_weights_offset",
]
