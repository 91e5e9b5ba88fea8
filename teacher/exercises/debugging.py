"""Exercises of notebooks/06_debugging.ipynb."""

from . import Exercise, coding

CHAPTER = "06_debugging"

_ABLATE = coding(
    "from helpers import hook_name\nfrom helpers.exercises.debugging import check_zero_ablation",
    '''
def zero_ablation_effect(model, tokens, layer, head, target, distractor):
    """Drop of logit(target) - logit(distractor) when head's pattern is 0."""
    def logit_diff(hooks=()):
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[0, -1]
        return float(logits[target] - logits[distractor])

    def zero(pattern, hook):
        pattern = pattern.clone()
        pattern[:, head] = 0.0
        return pattern

    after = logit_diff([(hook_name("pattern", layer), zero)])
    return logit_diff() - after
''',
    "check_zero_ablation(model, zero_ablation_effect)",
)

_GRAD = coding(
    "import torch\n\nfrom helpers import hook_name\n"
    "from helpers.exercises.debugging import check_act_times_grad",
    '''
def act_times_grad(model, tokens, layer, head, target, distractor):
    """Sum over (query, key) of attention x d(logit diff)/d(attention)."""
    store = {}

    def keep(pattern, hook):  # a leaf: the gradient stops here and is kept
        pattern = pattern.detach().requires_grad_(True)
        store["pattern"] = pattern
        return pattern

    with torch.enable_grad():
        logits = model.run_with_hooks(
            tokens, fwd_hooks=[(hook_name("pattern", layer), keep)])[0, -1]
        (logits[target] - logits[distractor]).backward()
    pattern = store["pattern"]
    return float((pattern[0, head] * pattern.grad[0, head]).sum().detach())
''',
    "check_act_times_grad(model, act_times_grad)",
)

_METHOD = [
    Exercise(
        label="dbg-zero-ablation",
        title="A real ablation of one head",
        anchor=("Ablate the name movers", "self-repair"),
        kind="method", difficulty=1, importance=3, minutes=15,
        goal="""\
Write `zero_ablation_effect(model, tokens, layer, head, target, distractor)`: how much the
logit difference `logit(target) − logit(distractor)` at the last token of `tokens`
(`[1, S]`) drops when head `layer.head`'s attention pattern (`blocks.{layer}.attn.
hook_pattern`, `[batch, head, query, key]`) is set to zero: the value before minus the
value after. The check compares with the debugger's
`ablation_effects(dbg, ["H{layer}.{head}"])["actual"]` on the chapter's IOI prompt.
""",
        hint="""\
Two runs, one with a hook that returns a clone of the pattern with `[:, head]` zeroed.
""",
        stub=_ABLATE[0],
        solution=(("code", _ABLATE[1]),),
        graded=("zero_ablation_effect", "helpers.exercises.debugging.check_zero_ablation",
                ("model", "zero_ablation_effect")),
    ),
    Exercise(
        label="dbg-act-grad",
        title="Activation × gradient for one head, beside the real ablation",
        anchor=("How good are the estimates",),
        kind="method", difficulty=2, importance=3, minutes=25,
        goal="""\
The debugger ranks nodes by a first-order estimate instead of ablating each. Write
`act_times_grad(model, tokens, layer, head, target, distractor)`: the sum over the head's
(query, key) pairs of its attention probability times the gradient of the logit difference
with respect to that probability (the estimate of what zeroing the pattern would do).
Compare your number with your `zero_ablation_effect`: how close is the estimate? The check
compares with `ablation_effects(...)["estimated"]`.
""",
        hint="""\
Inside `torch.enable_grad()`, a hook on `hook_pattern` returns
`pattern.detach().requires_grad_(True)` and keeps that tensor; after `.backward()` on the
logit difference, its `.grad` holds the gradient (the model's weights need none).
""",
        stub=_GRAD[0],
        solution=(("code", _GRAD[1]), ("code", """\
from helpers.exercises.debugging import exercise_prompt

tokens, target, distractor = exercise_prompt(model)
for layer, head in [(9, 9), (10, 7)]:
    args = (model, tokens, layer, head, target, distractor)
    print(f"head {layer}.{head}: estimate {act_times_grad(*args):+.3f}, "
          f"real ablation {zero_ablation_effect(*args):+.3f}")
""")),
        graded=("act_times_grad", "helpers.exercises.debugging.check_act_times_grad", ("model", "act_times_grad")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='dbg-pair-direct-effect',
        title='The direct effect of a head at one token pair',
        anchor=('Why " Mary"', 'The IOI prompt'),
        kind='code', difficulty=2, importance=2, minutes=20,
        goal="""\
Write `my_pair_direct_effect(pattern, v, W_O, scale, direction)`, one column of the node
table: `pattern` is the last token's attention row for every head (`[n_heads, n_src]`),
`v` the values (`[n_src, n_heads, d_head]`), `W_O` the output weights (`[n_heads, d_head,
d_model]`), `scale` the final LayerNorm's scale at the last token (a number) and
`direction` the direction of interest (`[d_model]`). Return `[n_heads, n_src]`: what each
(head, source) pair writes at the last token, through the LayerNorm, along the direction.
""",
        hint="""\
A pair writes `pattern[h, s] * v[s, h] @ W_O[h]`; `torch.einsum("hs,shd,hdm->hsm", ...)`
gives all of them at once. The LayerNorm's scale is held fixed: divide by it, then take the
dot product with `direction`.
""",
        stub='import torch\nfrom helpers.exercises.debugging import check_pair_direct_effect\n\n\ndef my_pair_direct_effect(pattern, v, W_O, scale, direction):\n    """[n_heads, n_src]: each pair\'s direct effect on the logit difference."""\n    raise NotImplementedError  # your code here\n\n\ncheck_pair_direct_effect(my_pair_direct_effect)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.debugging import check_pair_direct_effect


def my_pair_direct_effect(pattern, v, W_O, scale, direction):
    writes = torch.einsum("hs,shd,hdm->hsm", pattern, v, W_O)
    return writes @ direction / scale


check_pair_direct_effect(my_pair_direct_effect)
"""),
        ),
        graded=('my_pair_direct_effect', 'helpers.exercises.debugging.check_pair_direct_effect', ('my_pair_direct_effect',)),
    ),
    Exercise(
        label='dbg-rank-correlation',
        title='How far to trust the ranking',
        anchor=('How good are the estimates',),
        kind='code', difficulty=1, importance=1, minutes=15,
        goal="""\
Section 3 compares estimated and actual ablation effects with Spearman's rank
correlation. Write `my_rank_correlation(x, y)` for two 1-D tensors without ties: the
Pearson correlation of their *ranks*. Why ranks and not the values themselves?
""",
        hint="""\
The rank of each entry is its place in sorted order. `x.argsort()` gives the indices in
sorted order, which is not the same thing: apply it twice.
""",
        stub='import torch\nfrom helpers.exercises.debugging import check_rank_correlation\n\n\ndef my_rank_correlation(x, y):\n    """Spearman\'s rank correlation of x and y (1-D, no ties)."""\n    raise NotImplementedError  # your code here\n\n\ncheck_rank_correlation(my_rank_correlation)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.debugging import check_rank_correlation


def my_rank_correlation(x, y):
    rx = x.argsort().argsort().float()
    ry = y.argsort().argsort().float()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx * ry).sum() / (rx.norm() * ry.norm())


check_rank_correlation(my_rank_correlation)
"""),
        ),
        graded=('my_rank_correlation', 'helpers.exercises.debugging.check_rank_correlation', ('my_rank_correlation',)),
    ),
    Exercise(
        label='dbg-swap-target',
        title='Swap the target and the distractor',
        anchor=('A fact', 'Paris rather than London'),
        kind='reading', difficulty=1, importance=2, minutes=10,
        goal="""\
Build the debugger with target and distractor swapped. Which columns of the node table
change sign, which do not, and why?
""",
        hint="""\
The direction of interest changes sign. Which quantities are linear in it, and which do
not depend on it at all?
""",
        stub=None,
        solution=(
            ('code', """\
swapped = Debugger(model, ioi.prompt, ioi.distractor, ioi.target)
both = pd.DataFrame({
    "original": dbg.frame()[["direct_effect", "est_total_effect",
                             "activation", "write_norm"]].sum(),
    "swapped": swapped.frame()[["direct_effect", "est_total_effect",
                                "activation", "write_norm"]].sum(),
})
both.round(4)
"""),
        ),
        graded=None,
    ),
]
