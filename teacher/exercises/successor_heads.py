"""Exercises of notebooks/03_successor_heads.ipynb."""

from . import Exercise, coding

CHAPTER = "03_successor_heads"

_OV = coding(
    "from helpers import folded_layer_norm\nfrom helpers.effective_ov import token_inputs\n"
    "from helpers.exercises.successor_heads import check_effective_ov",
    '''
def effective_ov(model, layer, head, token_ids):
    """[n, n]: head's OV logits over token_ids, one row per input token."""
    eps = model.cfg.eps
    x = folded_layer_norm(token_inputs(model, token_ids, "mlp0"), eps)
    v = x @ model.W_V[layer, head] + model.b_V[layer, head]
    written = v @ model.W_O[layer, head]
    return folded_layer_norm(written, eps) @ model.W_U[:, token_ids]
''',
    "check_effective_ov(model, effective_ov)",
)

_LAYER = coding(
    "import torch\n\nfrom helpers.exercises.successor_heads import "
    "check_layer_succession_scores",
    '''
def layer_succession_scores(model, layer, token_ids, successor):
    """[n_heads]: each head's succession score in layer."""
    scored = successor >= 0
    scores = []
    for head in range(model.cfg.n_heads):
        # the previous exercise's function
        logits = effective_ov(model, layer, head, token_ids)
        hits = logits[scored].argmax(-1) == successor[scored]
        scores.append(hits.float().mean())
    return torch.stack(scores)
''',
    "check_layer_succession_scores(model, layer_succession_scores)",
)

_METHOD = [
    Exercise(
        label="succ-effective-ov",
        title="The effective OV circuit of one head",
        anchor=("effective-OV screen", "effective OV"),
        kind="method", difficulty=2, importance=3, minutes=20,
        goal="""\
Write `effective_ov(model, layer, head, token_ids)`: an `[n, n]` tensor whose row `i` holds
the logits, over the `n` tokens `token_ids`, that head `layer.head`'s OV circuit writes
when it attends to token `i`. As in section 1: the head reads MLP0's output on the token's
embedding (`helpers.effective_ov.token_inputs(model, ids, "mlp0")`) through a LayerNorm
(`folded_layer_norm(x, model.cfg.eps)`), multiplies by `W_V[layer, head]`, adds `b_V`,
multiplies by `W_O[layer, head]`, and the result goes through the final LayerNorm and the
unembedding columns `W_U[:, token_ids]`. The check compares with
`helpers.effective_ov.effective_ov_logits` on the twelve months.
""",
        hint="""\
Shapes: `[n, d_model] @ [d_model, d_head] @ [d_head, d_model] @ [d_model, n]`. Two
LayerNorms: one before the head, one before the unembedding.
""",
        stub=_OV[0],
        solution=(("code", _OV[1]),),
        graded=("effective_ov", "helpers.exercises.successor_heads.check_effective_ov",
                ("model", "effective_ov")),
    ),
    Exercise(
        label="succ-layer-scores",
        title="Succession scores of every head in a layer",
        anchor=("effective-OV screen", "effective OV"),
        kind="method", difficulty=2, importance=2, minutes=20,
        goal="""\
With your `effective_ov`, write `layer_succession_scores(model, layer, token_ids,
successor)`: for each head of `layer`, the share of tokens that have a successor
(`successor >= 0`, the index of the successor in `token_ids`) whose largest OV logit among
`token_ids` is the successor's. The check runs it on the number words (the last has no
successor) and compares with the chapter's `succession_scores`.
""",
        hint="""\
Per head: `logits[scored].argmax(-1) == successor[scored]`, then the mean. Leave out the
rows without a successor.
""",
        stub=_LAYER[0],
        solution=(("code", _LAYER[1]),),
        graded=("layer_succession_scores",
                "helpers.exercises.successor_heads.check_layer_succession_scores",
                ("model", "layer_succession_scores")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='succ-score',
        title='The succession score',
        anchor=('effective-OV screen', 'effective OV'),
        kind='code', difficulty=1, importance=2, minutes=10,
        goal="""\
Write `my_succession_score(logits, successor)`, the score of section 1 for one head and
one task. `logits` is `[n, n]`: row i is token i read through the head's effective OV
circuit, column j is token j of the same task. `successor` is `[n]`: the column of each
token's successor, −1 where there is none (the last number; days and months wrap around).
Return the share of tokens with a successor whose largest logit is their successor's.
""",
        hint="""\
Keep the rows with `successor >= 0`, take `argmax` along each row (`dim=-1`), compare
with `successor`, and average the hits as floats.
""",
        stub='import torch\nfrom helpers.exercises.successor_heads import check_succession_score\n\n\ndef my_succession_score(logits, successor):\n    """Share of tokens whose successor gets the head\'s largest logit."""\n    raise NotImplementedError  # your code here\n\n\ncheck_succession_score(my_succession_score)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.successor_heads import check_succession_score


def my_succession_score(logits, successor):
    has = successor >= 0
    hits = logits[has].argmax(dim=-1) == successor[has]
    return hits.float().mean()


check_succession_score(my_succession_score)
"""),
        ),
        graded=('my_succession_score', 'helpers.exercises.successor_heads.check_succession_score', ('my_succession_score',)),
    ),
    Exercise(
        label='succ-residue',
        title='A mod-10 direction without an autoencoder',
        anchor=('Mod-10 features', 'Mod-10'),
        kind='code', difficulty=2, importance=2, minutes=20,
        goal="""\
The autoencoders of section 2 look for features that fire on one residue mod 10. A
cheaper baseline: for each residue r, the mean of the MLP0 outputs of the numbers with
value ≡ r (mod 10), minus the mean over all numbers. Write `my_residue_directions(x,
values)`: `x` is `[n, d_model]`, `values` `[n]`; return `[10, d_model]`, row r for
residue r.
""",
        hint="""\
`values % 10 == r` selects a residue class. Centre first (`x - x.mean(0)`), then average
each class.
""",
        stub='import torch\nfrom helpers.exercises.successor_heads import check_residue_directions\n\n\ndef my_residue_directions(x, values):\n    """[10, d_model]: centred mean of x per residue of values mod 10."""\n    raise NotImplementedError  # your code here\n\n\ncheck_residue_directions(my_residue_directions)',
        solution=(
            ('code', """\
import torch
from helpers.exercises.successor_heads import check_residue_directions


def my_residue_directions(x, values):
    centred = x - x.mean(0)
    return torch.stack([centred[values % 10 == r].mean(0) for r in range(10)])


check_residue_directions(my_residue_directions)
"""),
        ),
        graded=('my_residue_directions', 'helpers.exercises.successor_heads.check_residue_directions', ('my_residue_directions',)),
    ),
    Exercise(
        label='succ-per-task',
        title='Does the same head win every task?',
        anchor=('full ranking', 'effective-OV screen'),
        kind='reading', difficulty=1, importance=1, minutes=10,
        goal="""\
Rank the heads on days alone and on letters alone. Is the winner the same head? Then
compare the screen on the raw embedding (`screen_embed`): which heads move most?
""",
        hint="""\
`screen["per_task"]` holds one `[n_layers, n_heads]` score map per task;
`top_heads(scores, 3)` ranks them.
""",
        stub=None,
        solution=(
            ('code', """\
for task in ("days", "letters"):
    print(f"{task:8s}", format_heads(top_heads(screen["per_task"][task], 3)))
moved = screen["score"] - screen_embed["score"]
print("gain from MLP0:", format_heads(top_heads(moved, 3)))
"""),
        ),
        graded=None,
    ),
]
