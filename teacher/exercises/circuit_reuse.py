"""Exercises of notebooks/05_circuit_reuse.ipynb."""

from . import Exercise, coding

CHAPTER = "05_circuit_reuse"

_EDIT = coding(
    "import torch\n\nfrom helpers import hook_name, logits_at_positions\n"
    "from helpers.exercises.circuit_reuse import check_edit_at_end",
    '''
def edit_at_end(model, tokens, heads, end, rows):
    """Logits at END with each head's attention row at END set to rows."""
    hooks = []
    for layer, head in heads:

        def edit(pattern, hook, head=head):  # [batch, head, query, key]
            pattern = pattern.clone()
            b = torch.arange(pattern.shape[0])
            pattern[b, head, end] = rows.to(pattern)
            return pattern

        hooks.append((hook_name("pattern", layer), edit))
    return logits_at_positions(model, tokens, end, fwd_hooks=hooks)
''',
    "check_edit_at_end(model, edit_at_end)",
)

_BLOCK = coding(
    "import torch\n\nfrom helpers import hook_name, logits_at_positions\n"
    "from helpers.exercises.circuit_reuse import check_block_at_end",
    '''
def block_at_end(model, tokens, heads, end, block):
    """Logits at END with each head blocked from the `block` keys at END."""
    hooks = []
    for layer, head in heads:

        def edit(pattern, hook, head=head):
            pattern = pattern.clone()
            b = torch.arange(pattern.shape[0])
            row = pattern[b, head, end].masked_fill(block.to(pattern.device), 0)
            pattern[b, head, end] = row / row.sum(-1, keepdim=True)
            return pattern

        hooks.append((hook_name("pattern", layer), edit))
    return logits_at_positions(model, tokens, end, fwd_hooks=hooks)
''',
    "check_block_at_end(model, block_at_end)",
)

_METHOD = [
    Exercise(
        label="reuse-edit-end",
        title="The attention edit at END",
        anchor=("Repairing Colored Objects", "IOI's inhibition"),
        kind="method", difficulty=2, importance=3, minutes=25,
        goal="""\
Section 5 repairs Colored Objects by editing where some heads look from END. Write
`edit_at_end(model, tokens, heads, end, rows)`: the logits at each prompt's END (`end`,
`[n]`) when every head in `heads` (a list of `(layer, head)`) attends from END with the
weights `rows` (`[n, seq]`, each row sums to 1) instead of its own; every other query
position and head is untouched. Edit the attention pattern (`blocks.{layer}.attn.
hook_pattern`, `[batch, head, query, key]`) and read the logits with
`helpers.logits_at_positions(model, tokens, end, fwd_hooks=hooks)`. The check compares
with `helpers.interventions.attention_edit_hooks(..., rows=rows)`.
""",
        hint="""\
One hook per head (bind `head` as a default argument inside the loop). Index the pattern
with `[torch.arange(n), head, end]`: one row per prompt.
""",
        stub=_EDIT[0],
        solution=(("code", _EDIT[1]),),
        graded=("edit_at_end", "helpers.exercises.circuit_reuse.check_edit_at_end", ("model", "edit_at_end")),
    ),
    Exercise(
        label="reuse-block-end",
        title="Blocking keys at END on the model",
        anchor=("Content gatherers",),
        kind="method", difficulty=2, importance=2, minutes=20,
        goal="""\
Write `block_at_end(model, tokens, heads, end, block)`: like `edit_at_end`, but each head's
row at END keeps its own weights except on the keys where `block` (`[n, seq]` bool) is
true, which get 0; the row is then renormalised to sum to 1. The check blocks the three
colors and compares with `helpers.interventions.attention_edit_hooks(..., block=block)`.
""",
        hint="""\
`row.masked_fill(block, 0)`, then divide by `row.sum(-1, keepdim=True)`.
""",
        stub=_BLOCK[0],
        solution=(("code", _BLOCK[1]),),
        graded=("block_at_end", "helpers.exercises.circuit_reuse.check_block_at_end", ("model", "block_at_end")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='reuse-wrong-colors',
        title="The repair's attention row",
        anchor=('Repairing Colored Objects', "IOI's inhibition"),
        kind='code', difficulty=1, importance=2, minutes=10,
        goal="""\
Section 5 forces the inhibition heads to attend from END to the wrong colors. Write
`my_wrong_color_rows(asked, seq, color_positions)`: `asked` is `[n]` (which of the three
listed colors, 0, 1 or 2, the question asks about), `seq` the prompt length and
`color_positions` the three colors' positions. Return the new attention rows, `[n, seq]`.
Why do the *wrong* colors get the attention?
""",
        hint="""\
Start from zeros. For color j at position `pos`, every prompt with `asked != j` gets ½
there.
""",
        stub='import torch\nfrom helpers.exercises.circuit_reuse import check_wrong_color_rows\n\n\ndef my_wrong_color_rows(asked, seq, color_positions):\n    """[n, seq]: half the attention on each color that was not asked."""\n    raise NotImplementedError  # your code here\n\n\ncheck_wrong_color_rows(my_wrong_color_rows)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.circuit_reuse import check_wrong_color_rows


def my_wrong_color_rows(asked, seq, color_positions):
    rows = torch.zeros(len(asked), seq)
    for j, pos in enumerate(color_positions):
        rows[:, pos] = (asked != j).float() * 0.5
    return rows


check_wrong_color_rows(my_wrong_color_rows)
"""),
        ),
        graded=('my_wrong_color_rows', 'helpers.exercises.circuit_reuse.check_wrong_color_rows', ('my_wrong_color_rows',)),
    ),
    Exercise(
        label='reuse-block-keys',
        title='Blocking the content gatherers',
        anchor=('Content gatherers',),
        kind='code', difficulty=1, importance=2, minutes=15,
        goal="""\
Section 6 blocks heads from the question tokens. Write `my_block_keys(pattern, query,
block)`: `pattern` is `[n, heads, q, k]`, `query` `[n]` one query position per prompt,
`block` `[n, k]` the keys to block. Return a new pattern in which, at each prompt's query
position only, the blocked keys get weight 0 and the row is renormalised.
""",
        hint="""\
`rows = torch.arange(n)`; `pattern[rows, :, query]` is `[n, heads, k]`. Zero the blocked
keys with `masked_fill(block[:, None, :], 0)`, divide by the row's new sum, and write it
back into a clone.
""",
        stub='import torch\nfrom helpers.exercises.circuit_reuse import check_block_keys\n\n\ndef my_block_keys(pattern, query, block):\n    """pattern with the blocked keys removed at each prompt\'s query row."""\n    raise NotImplementedError  # your code here\n\n\ncheck_block_keys(my_block_keys)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.circuit_reuse import check_block_keys


def my_block_keys(pattern, query, block):
    out = pattern.clone()
    rows = torch.arange(len(query))
    row = out[rows, :, query].masked_fill(block[:, None, :], 0.0)
    out[rows, :, query] = row / row.sum(-1, keepdim=True)
    return out


check_block_keys(my_block_keys)
"""),
        ),
        graded=('my_block_keys', 'helpers.exercises.circuit_reuse.check_block_keys', ('my_block_keys',)),
    ),
    Exercise(
        label='reuse-threshold',
        title='How much overlap is chance?',
        anchor=('Overlap',),
        kind='reading', difficulty=2, importance=1, minutes=15,
        goal="""\
Section 4 calls the top 2% of heads of each stage "the circuit". Change the threshold to
5%. Does the overlap grow or shrink, and how much overlap would two random sets of that
size have?
""",
        hint="""\
With `k` heads drawn at random from a stage's `n` senders in each task, about `k²/n`
are shared; `stage_overlap(..., fraction=0.05)` prints both.
""",
        stub=None,
        solution=(
            ('code', """\
for frac in (0.02, 0.05):
    table = stage_overlap(ioi_delta, cobj_delta, fraction=frac)
    print(f"top {frac:.0%}: {table['n shared'].sum()} of "
          f"{table['kept'].sum()} heads shared "
          f"(chance: about {table['chance'].sum():.1f}); per stage kept "
          f"{table['kept'].tolist()} of {table['senders'].tolist()}")
"""),
        ),
        graded=None,
    ),
]
