"""Exercises of notebooks/04_factual_recall.ipynb."""

from . import Exercise, coding

CHAPTER = "04_factual_recall"

_TRACE = coding(
    "from helpers import hook_name\nfrom helpers.exercises.factual_recall import check_trace_cell",
    '''
def trace_cell(model, tokens, answer, first, last, draws, layer, position):
    """Indirect effect of restoring resid_post[layer] at position."""
    k = draws.shape[0]
    noised = tokens.expand(k, -1)  # one copy of the prompt per noise draw
    resid = hook_name("resid_post", layer)
    store = {}

    def save(t, hook):
        store["clean"] = t.detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=[(resid, save)])

    def add_noise(emb, hook):
        emb = emb.clone()
        emb[:, first:last + 1] += draws.to(emb)
        return emb

    def restore(t, hook):
        t = t.clone()
        t[:, position] = store["clean"][0, position]
        return t

    def prob(hooks):
        logits = model.run_with_hooks(noised, fwd_hooks=hooks)
        return logits[:, -1].softmax(-1)[:, answer].mean()

    corrupted = prob([(hook_name("embed"), add_noise)])
    restored = prob([(hook_name("embed"), add_noise), (resid, restore)])
    return float(restored - corrupted)
''',
    "check_trace_cell(model, trace_cell)",
)

_KNOCK = coding(
    "import math\n\nfrom helpers import hook_name\n"
    "from helpers.exercises.factual_recall import check_knockout",
    '''
def knockout(model, tokens, answer, sources, layer):
    """Answer probability with last-token -> sources attention blocked."""
    last = tokens.shape[1] - 1

    def block(scores, hook):  # [batch, head, query, key], before the softmax
        scores = scores.clone()
        keys = sources.clone().to(scores.device)
        keys[last] = False  # the last token always sees itself
        scores[:, :, last, keys] = -math.inf
        return scores

    logits = model.run_with_hooks(
        tokens, fwd_hooks=[(hook_name("attn_scores", layer), block)])
    return float(logits[0, -1].softmax(-1)[answer])
''',
    "check_knockout(model, knockout)",
)

_METHOD = [
    Exercise(
        label="fr-trace-cell",
        title="One cell of causal tracing",
        anchor=("Causal tracing",),
        kind="method", difficulty=2, importance=3, minutes=30,
        goal="""\
Each cell of section 2's heatmaps is one experiment. Write `trace_cell(model, tokens,
answer, first, last, draws, layer, position)`: `tokens` is one prompt `[1, L]`, `draws`
`[k, span, d_model]` the noise for the subject's positions `first..last`. Run `k` copies
of the prompt with `draws` added to the subject's token embeddings (hook `hook_embed`) and
measure the answer's probability at the last token, averaged over the copies; then do the
same while restoring the clean hidden state after block `layer` (`blocks.{layer}.
hook_resid_post`) at `position`. Return the **indirect effect**: restored minus corrupted.
The check compares with `helpers.tracing.causal_trace` on "The Eiffel Tower is located in
the city of" (noise from `helpers.exercises.factual_recall.noise_draws`).
""",
        hint="""\
Three runs: one clean run to store `resid_post` of `layer`; one noised run; one noised run
that also writes the stored clean vector back at `position`. Average the probabilities over
the `k` copies, not the logits.
""",
        stub=_TRACE[0],
        solution=(("code", _TRACE[1]),),
        graded=("trace_cell", "helpers.exercises.factual_recall.check_trace_cell", ("model", "trace_cell")),
    ),
    Exercise(
        label="fr-knockout",
        title="Attention knockout at one layer",
        anchor=("Attention knockout",),
        kind="method", difficulty=2, importance=2, minutes=20,
        goal="""\
Write `knockout(model, tokens, answer, sources, layer)`: the answer's probability at the
last token of `tokens` (`[1, L]`) when, in `layer`, no head lets the last token attend to
the positions where `sources` (`[L]` bool) is true: set those attention *scores*
(`blocks.{layer}.attn.hook_attn_scores`, `[batch, head, query, key]`) to −∞ before the
softmax, for the last query only (the last token always keeps itself). The check compares
with `helpers.tracing.attention_knockout(window=1)`.
""",
        hint="""\
`scores[:, :, last, keys] = -math.inf` on a clone. Zeroing the pattern after the softmax
would leave rows that no longer sum to 1; a score of 0 is not "blocked".
""",
        stub=_KNOCK[0],
        solution=(("code", _KNOCK[1]),),
        graded=("knockout", "helpers.exercises.factual_recall.check_knockout", ("model", "knockout")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='fr-relation-peaks',
        title='Does the MLP site depend on the relation?',
        anchor=('Causal tracing',),
        kind='reading', difficulty=2, importance=1, minutes=15,
        goal="""\
Section 2 averaged the MLP trace over facts. For each traced fact, find the layer where
restoring the MLP window at the **last subject token** brings back the most probability,
and compare relations. Run the chapter with `weights="pretrained"` and
`n_trace_facts = 30` on Colab for an answer that means something.
""",
        hint="""\
`traces["mlp"].indirect_effect` is `[facts, layers, positions]`; index it with
`traced.positions["SUBJ_LAST"]`, and group by `traced.fields["relation"]`.
""",
        stub=None,
        solution=(
            ('code', """\
ie_mlp = traces["mlp"].indirect_effect
at_subject = ie_mlp[torch.arange(len(traced)), :, traced.positions["SUBJ_LAST"]]
pd.DataFrame({"relation": traced.fields["relation"],
              "peak layer": at_subject.argmax(-1).tolist(),
              "peak effect": at_subject.max(-1).values.tolist()}
             ).groupby("relation").mean().round(3)
"""),
        ),
        graded=None,
    ),
    Exercise(
        label='fr-noise-scale',
        title="ROME's noise level",
        anchor=('Causal tracing',),
        kind='code', difficulty=1, importance=2, minutes=10,
        goal="""\
Write `my_noise_scale(W_E, tokens, mask)`: ROME's noise standard deviation, **3 × the
standard deviation of the subject tokens' embeddings**, taken over every coordinate of
every subject token (`mask` is `True` on subject positions). Shapes: `W_E` `[vocab, d]`,
`tokens` and `mask` `[n, L]`; the result a number.
""",
        hint="""\
`tokens[mask]` is the 1-D tensor of subject tokens; `W_E[...]` their embeddings.
""",
        stub='from helpers.exercises.factual_recall import check_noise_scale\n\n\ndef my_noise_scale(W_E, tokens, mask):\n    """3 × std of the embeddings of the tokens under mask."""\n    raise NotImplementedError  # your code here\n\n\ncheck_noise_scale(my_noise_scale)',
        solution=(
            ('code', """\
from helpers.exercises.factual_recall import check_noise_scale


def my_noise_scale(W_E, tokens, mask):
    return 3 * W_E[tokens[mask]].std()


check_noise_scale(my_noise_scale)
"""),
        ),
        graded=('my_noise_scale', 'helpers.exercises.factual_recall.check_noise_scale', ('my_noise_scale',)),
    ),
    Exercise(
        label='fr-gain-fit',
        title='One gain per head',
        anchor=('The MLP as an', 'Argument passing'),
        kind='code', difficulty=2, importance=1, minutes=20,
        goal=r"""\
Section 5 fitted $y_i \approx b + \sum_h g_h x_{i,h}$. Write `my_gain_fit(X, y)`
returning the gains `[k]`: `X` is `[n, k, d]` (each head's output for `n` prompts), `y`
is `[n, d]`; one scalar gain per head shared by every dimension, and one intercept per
dimension.
""",
        hint="""\
Centre `X` and `y` over prompts (dimension 0): that removes the intercept. Then the
normal equations are `A g = c` with `A[j, k] = Σ X[:, j] · X[:, k]` and
`c[j] = Σ X[:, j] · y` (sums over prompts and dimensions): `torch.einsum` and
`torch.linalg.solve`.
""",
        stub='from helpers.exercises.factual_recall import check_gain_fit\n\n\ndef my_gain_fit(X, y):\n    """[k]: least-squares gains of y on the k vectors of X, with an intercept."""\n    raise NotImplementedError  # your code here\n\n\ncheck_gain_fit(my_gain_fit)',
        solution=(
            ('code', """\
from helpers.exercises.factual_recall import check_gain_fit


def my_gain_fit(X, y):
    Xc, yc = X - X.mean(0), y - y.mean(0)
    A = torch.einsum("njd,nkd->jk", Xc, Xc)
    return torch.linalg.solve(A, torch.einsum("njd,nd->j", Xc, yc))


check_gain_fit(my_gain_fit)
"""),
        ),
        graded=('my_gain_fit', 'helpers.exercises.factual_recall.check_gain_fit', ('my_gain_fit',)),
    ),
]
