"""Exercises of notebooks/01_ioi.ipynb."""

from . import Exercise, coding

CHAPTER = "01_ioi"

_PATCH_Z = coding(
    "from helpers import hook_name\nfrom helpers.exercises.ioi import check_patch_head_z",
    '''
def patch_head_z(model, clean_tokens, corrupted_tokens, layer, head, metric):
    """The metric of the clean run with one head's z from the corrupted run."""
    name = hook_name("z", layer)  # "blocks.{layer}.attn.hook_z"
    store = {}

    def save(z, hook):  # z: [batch, pos, head, d_head]
        store["z"] = z.detach().clone()

    model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, save)])

    def patch(z, hook):
        z = z.clone()
        z[:, :, head] = store["z"][:, :, head]
        return z

    logits = model.run_with_hooks(clean_tokens, fwd_hooks=[(name, patch)])
    return float(metric(logits))
''',
    "check_patch_head_z(model, patch_head_z)",
)

_PATH = coding(
    "from helpers import hook_name\nfrom helpers.exercises.ioi import check_path_patch",
    '''
def path_patch_one(model, clean_tokens, corrupted_tokens, sender, receivers,
                   metric):
    """Path patching: sender (layer, head) -> the receivers' queries."""
    zs = [hook_name("z", L) for L in range(model.cfg.n_layers)]
    qs = sorted({hook_name("q", L) for L, _ in receivers})

    def record(tokens, names, hooks=()):
        store = {}

        def save(t, hook):
            store[hook.name] = t.detach().clone()

        model.run_with_hooks(tokens, fwd_hooks=[*hooks,
                                                *[(n, save) for n in names]])
        return store

    clean = record(clean_tokens, zs)
    corrupt = record(corrupted_tokens, [hook_name("z", sender[0])])

    def freeze(z, hook):  # pass C: every head clean, the sender corrupted
        z = clean[hook.name].clone()
        if hook.name == hook_name("z", sender[0]):
            z[:, :, sender[1]] = corrupt[hook.name][:, :, sender[1]]
        return z

    pass_c = record(clean_tokens, qs, [(n, freeze) for n in zs])

    def replace(q, hook):  # pass D: only the receivers' queries from pass C
        q = q.clone()
        for L, h in receivers:
            if hook.name == hook_name("q", L):
                q[:, :, h] = pass_c[hook.name][:, :, h]
        return q

    logits = model.run_with_hooks(clean_tokens,
                                  fwd_hooks=[(n, replace) for n in qs])
    return float(metric(logits))
''',
    "check_path_patch(model, path_patch_one)",
)

_FAITH = coding(
    "import torch\n\nfrom helpers.ablation import run_with_mean_ablation\n"
    "from helpers.exercises.ioi import check_faithfulness",
    '''
def faithfulness(model, tokens, metric, means, circuit_heads):
    """(F(M), F(C)): the metric, and with every other head mean-ablated."""
    f_m = float(metric(model(tokens)))
    batch, seq = tokens.shape
    ablate = torch.ones(batch, seq, model.cfg.n_layers, model.cfg.n_heads,
                        dtype=torch.bool)
    for layer, head in circuit_heads:
        ablate[:, :, layer, head] = False  # keep the circuit's heads
    f_c = float(metric(run_with_mean_ablation(model, tokens, means, ablate)))
    return f_m, f_c
''',
    "check_faithfulness(model, faithfulness)",
)

_METHOD = [
    Exercise(
        label="ioi-patch-z",
        title="Activation patching by hand: one head's z",
        anchor=("Senders → logits", "name movers and negative name movers", "Path patching"),
        kind="method", difficulty=2, importance=3, minutes=25,
        goal="""\
Before path patching, the plain version. Write `patch_head_z(model, clean_tokens,
corrupted_tokens, layer, head, metric)`: run the corrupted prompts and keep head
`layer.head`'s output `z` (hook `blocks.{layer}.attn.hook_z`, shape `[batch, pos, head,
d_head]`); run the clean prompts with that head's `z` replaced by the corrupted one at
every position; return `metric(logits)` as a float. The check runs it on a few of the
chapter's prompts and their p_ABC twins and compares with `helpers.patch_heads` (the sweep
behind section 3's heatmaps) on the same model.
""",
        hint="""\
Two hooked runs: `model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])`. The first hook
stores `z` (a copy); the second returns a copy of `z` with `[:, :, head]` replaced. Patch
the corrupted head into the clean run (noising), not the other way round.
""",
        stub=_PATCH_Z[0],
        solution=(("code", _PATCH_Z[1]), ("markdown", """\
`patch_heads(model, clean, corrupted, metric)` does this for every head at once, running
each configuration only from the patched layer on.
""")),
        graded=("patch_head_z", "helpers.exercises.ioi.check_patch_head_z", ("model", "patch_head_z")),
    ),
    Exercise(
        label="ioi-path-patch",
        title="Path patching from scratch: one sender into the name movers' queries",
        anchor=("name movers' queries", "S-inhibition heads", "Path patching"),
        kind="method", difficulty=3, importance=3, minutes=40,
        goal="""\
Section 3b's heatmap scores each sender by path patching into the name movers' queries.
Write `path_patch_one(model, clean_tokens, corrupted_tokens, sender, receivers, metric)`
for one sender `(layer, head)` and a list of receiver heads, following Wang et al.'s
App. B: **pass C** runs the clean prompts with *every* head's `z` frozen at its clean
value except the sender's, which gets its corrupted value; record the receivers' queries
(`blocks.L.attn.hook_q`, `[batch, pos, head, d_head]`). **Pass D** runs the clean prompts
again with only the receivers' queries replaced by pass C's (MLPs and everything else
recomputed); return `metric(logits)` of pass D. The check compares with
`helpers.path_patch(..., receivers=receivers, receiver_input="q")`.
""",
        hint="""\
Cache the clean `z` of every layer and the corrupted `z` of the sender's layer. In pass C,
one hook per layer returns the cached clean `z` (with the sender's head swapped in); a
second set of hooks saves the receivers' `q`. Pass D needs only the `q` hooks. Freezing is
what makes it a *path*: without it, the sender's effect reaches the receivers through every
head in between.
""",
        stub=_PATH[0],
        solution=(("code", _PATH[1]),),
        graded=("path_patch_one", "helpers.exercises.ioi.check_path_patch", ("model", "path_patch_one")),
    ),
    Exercise(
        label="ioi-faithfulness",
        title="Mean ablation and faithfulness",
        anchor=("faithfulness", "The circuit as a whole"),
        kind="method", difficulty=2, importance=3, minutes=25,
        goal="""\
Write `faithfulness(model, tokens, metric, means, circuit_heads)` returning `(F(M), F(C))`:
the metric of the unablated model, and the metric with every head *outside*
`circuit_heads` mean-ablated at every position (its `z` replaced by `means`, `[n, seq,
n_layers, n_heads, d_head]` from `helpers.ablation.head_means` over p_ABC). Use
`helpers.ablation.run_with_mean_ablation(model, tokens, means, ablate)`, where `ablate` is a
`[n, seq, n_layers, n_heads]` bool mask of what to replace. The check compares with
`CircuitEvaluator(...).faithfulness()`; the chapter's circuit keeps each head only at its
own positions, this exercise at all of them.
""",
        hint="""\
Start from a mask of `True` everywhere and set the circuit's heads to `False`. Ablating
the circuit instead of its complement gives F(M \\\\ C), a different question.
""",
        stub=_FAITH[0],
        solution=(("code", _FAITH[1]),),
        graded=("faithfulness", "helpers.exercises.ioi.check_faithfulness", ("model", "faithfulness")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='ioi-setup-choices',
        title='What the setup choices move',
        anchor=('how well does GPT-2 do it', 'The task'),
        kind='reading', difficulty=1, importance=1, minutes=15,
        goal="""\
Rerun the chapter with `templates=[1, 2, 3, 4, 5, 6, 7]` and `prepend_bos=True` (the
parameters cell). Which numbers on the scorecard move, and why would they?
""",
        hint="""\
The paper's code default used templates 1–7 and no BOS. A BOS token gives every head a
place to put attention it does not need; position 0 without BOS behaves unlike any other.
""",
        stub=None,
        solution=(
            ('code', """\
first7 = baseline.template_ids <= 7  # section 1's prompts from templates 1-7
print(f"logit difference, this run's templates: {lds.mean():.3f}; "
      f"templates 1-7 only ({int(first7.sum())} prompts): "
      f"{lds[first7].mean():.3f}")
one = {bos: make_ioi_dataset(1, templates=templates, prepend_bos=bos, seed=seed)
       for bos in (False, True)}
pd.DataFrame({("with BOS" if bos else "without BOS"):
              {k: int(v[0]) for k, v in d.positions.items()}
              for bos, d in one.items()}).T
"""),
        ),
        graded=None,
    ),
    Exercise(
        label='ioi-copy-score',
        title='Copy score of one head',
        anchor=('copy scores', 'What the heads attend to'),
        kind='code', difficulty=2, importance=2, minutes=20,
        goal="""\
Write `my_copy_score(resid, W_V, W_O, W_U, tokens, k=5)`: push each residual (one row per
name, `[m, d_model]`) through the head's OV circuit and the unembedding, and return the
share of rows whose own token (`tokens`, `[m]`) is among the `k` largest logits. As in
compatibility mode, a LayerNorm is a centring plus a division by the root mean square (use
`helpers.folded_layer_norm(x, 1e-5)`); one sits in front of the head, one in front of the
unembedding.
""",
        hint="""\
`logits = folded_layer_norm(folded_layer_norm(resid, eps) @ W_V @ W_O, eps) @ W_U`, then
`logits.topk(k).indices` and compare with `tokens[:, None]`.
""",
        stub='from helpers import folded_layer_norm\nfrom helpers.exercises.ioi import check_copy_score\n\n\ndef my_copy_score(resid, W_V, W_O, W_U, tokens, k=5):\n    """Share of rows whose own token is in the top k of the OV logits."""\n    raise NotImplementedError  # your code here\n\n\ncheck_copy_score(my_copy_score)',
        solution=(
            ('code', """\
from helpers import folded_layer_norm
from helpers.exercises.ioi import check_copy_score


def my_copy_score(resid, W_V, W_O, W_U, tokens, k=5):
    out = folded_layer_norm(resid, 1e-5) @ W_V @ W_O
    logits = folded_layer_norm(out, 1e-5) @ W_U
    top = logits.topk(k, dim=-1).indices
    return (top == tokens[:, None]).any(-1).float().mean()


check_copy_score(my_copy_score)
"""),
        ),
        graded=('my_copy_score', 'helpers.exercises.ioi.check_copy_score', ('my_copy_score',)),
    ),
    Exercise(
        label='ioi-mean-ablation',
        title='Mean-ablate one head at one position',
        anchor=('faithfulness', 'The circuit as a whole'),
        kind='code', difficulty=1, importance=2, minutes=10,
        goal="""\
The circuit evaluation replaces a head's output `z` by its mean over p_ABC, but only at the
positions the circuit does not keep. Write `my_mean_ablate(z, means, head, positions)`: `z`
and `means` are `[n, seq, n_heads, d_head]`, `positions` is `[n]` (one position per prompt,
e.g. each prompt's END); return a copy of `z` whose `head` is replaced by its mean at those
positions only.
""",
        hint="""\
Clone first. `rows = torch.arange(n)`; then `out[rows, positions, head]` selects one
`[d_head]` vector per prompt.
""",
        stub='from helpers.exercises.ioi import check_mean_ablation\n\n\ndef my_mean_ablate(z, means, head, positions):\n    """z with head replaced by its mean at each prompt\'s position."""\n    raise NotImplementedError  # your code here\n\n\ncheck_mean_ablation(my_mean_ablate)',
        solution=(
            ('code', """\
from helpers.exercises.ioi import check_mean_ablation


def my_mean_ablate(z, means, head, positions):
    out = z.clone()
    rows = torch.arange(z.shape[0])
    out[rows, positions, head] = means[rows, positions, head]
    return out


check_mean_ablation(my_mean_ablate)
"""),
        ),
        graded=('my_mean_ablate', 'helpers.exercises.ioi.check_mean_ablation', ('my_mean_ablate',)),
    ),
    Exercise(
        label='ioi-backup-minimality',
        title='Is a backup name mover minimal on its own?',
        anchor=('faithfulness', 'The circuit as a whole'),
        kind='reading', difficulty=2, importance=2, minutes=15,
        goal=r"""\
The minimality sets are data (`MINIMALITY_SETS`). Score backup 10.10 with $K = \emptyset$
instead of the paper's chain. Does it still pass the 1% threshold?
""",
        hint="""\
`minimality_scores(evaluator, {(10, 10): []})` answers it in one call. A backup name mover
only acts once the name movers are gone.
""",
        stub=None,
        solution=(
            ('code', """\
from helpers import minimality_scores

alone = minimality_scores(evaluator, {(10, 10): []})
alone
"""),
        ),
        graded=None,
    ),
]
