"""Exercises of notebooks/02_acronyms.ipynb."""

from . import Exercise, coding

CHAPTER = "02_acronyms"

_CORRUPT = coding(
    "from helpers.exercises.acronyms import check_letter_corruption",
    '''
def corrupt_current_word(clean, base, letter):
    """clean [n, 11] with letter's word (Ci and Ti) taken from base [n, 11]."""
    out = clean.clone()
    c = 2 * letter  # C1 = column 2, C2 = 4, C3 = 6 (column 0 is BOS)
    out[:, [c, c + 1]] = base[:, [c, c + 1]]
    return out
''',
    "check_letter_corruption(corrupt_current_word)",
)

_ADD_BACK = coding(
    "import torch\n\nfrom helpers.ablation import run_with_mean_ablation\n"
    "from helpers.exercises.acronyms import check_add_back",
    '''
def add_back_curve(model, tokens, metric, means, order):
    """The metric with every head ablated, then order's heads kept one by
    one."""
    batch, seq = tokens.shape
    curve = []
    for k in range(len(order) + 1):
        ablate = torch.ones(batch, seq, model.cfg.n_layers, model.cfg.n_heads,
                            dtype=torch.bool)
        for layer, head in order[:k]:
            ablate[:, :, layer, head] = False
        logits = run_with_mean_ablation(model, tokens, means, ablate)
        curve.append(float(metric(logits)))
    return torch.tensor(curve)
''',
    "check_add_back(model, add_back_curve)",
)

_METHOD = [
    Exercise(
        label="acr-corrupt-letter",
        title="The per-letter corruption",
        anchor=("Where is the letter", "Residual-stream patching", "Setup"),
        kind="method", difficulty=1, importance=3, minutes=15,
        goal="""\
Every patching experiment of this chapter compares a clean prompt with one corrupted for
one letter. Write `corrupt_current_word(clean, base, letter)`: `clean` and `base` are
`[n, 11]` token tensors laid out `BOS The C1 T1 C2 T2 C3 T3 " (" A1 A2` (`base` is the
chapter's permuted batch, `ds.corrupted_base()`); return a copy of `clean` whose current
word for `letter` (1, 2 or 3), its capital `Ci` and the rest of the word `Ti`, comes from
`base`. The check compares with `AcronymDataset.corrupt("current word", letter)` on the
chapter's prompts.
""",
        hint="""\
`Ci` sits at column `2 * letter`, `Ti` right after it. Clone before writing.
""",
        stub=_CORRUPT[0],
        solution=(("code", _CORRUPT[1]),),
        graded=("corrupt_current_word", "helpers.exercises.acronyms.check_letter_corruption",
                ("corrupt_current_word",)),
    ),
    Exercise(
        label="acr-add-back",
        title="The add-back curve",
        anchor=("The circuit as a whole", "Fig. 8"),
        kind="method", difficulty=2, importance=3, minutes=25,
        goal="""\
Section 6 mean-ablates every head and adds the circuit back one head at a time. Write
`add_back_curve(model, tokens, metric, means, order)`: `len(order) + 1` values, the metric
with every head mean-ablated at every position, then with the first 1, 2, ... heads of
`order` (a list of `(layer, head)`) kept. Use
`helpers.ablation.run_with_mean_ablation(model, tokens, means, ablate)` with a `[n, seq,
n_layers, n_heads]` bool mask of what to ablate. The check compares with
`CircuitEvaluator(..., circuit).add_back(order)` on a few prompts (here each head is kept
at every position).
""",
        hint="""\
One mask per step: all `True`, then `False` for the heads added back so far. The first
value is the fully ablated model; the last keeps all of `order`.
""",
        stub=_ADD_BACK[0],
        solution=(("code", _ADD_BACK[1]),),
        graded=("add_back_curve", "helpers.exercises.acronyms.check_add_back", ("model", "add_back_curve")),
    ),
]

EXERCISES = _METHOD + [
    Exercise(
        label='acr-letter-metric',
        title='The per-letter metric',
        anchor=('how well does GPT-2 do it', 'The task'),
        kind='code', difficulty=1, importance=2, minutes=15,
        goal="""\
Write `my_letter_logit_diff(logits, answers, letter_ids)`: `logits` are the model's
logits at the three prediction positions (`[n, 3, d_vocab]`), `answers` the three letters'
token ids (`[n, 3]`), `letter_ids` the 26 capital letters' ids. Return `[n, 3]`: per prompt
and letter, the answer's logit minus the largest logit among the *other* letters. Why is
this a better baseline than the logit of one fixed wrong letter?
""",
        hint="""\
Give the answer's own entry `-inf` before the maximum: `torch.scatter` or `masked_fill`
with `letter_ids == answer`. `logits.gather(2, answers[..., None])` picks the answers'
logits.
""",
        stub='from helpers.exercises.acronyms import check_letter_logit_diff\n\n\ndef my_letter_logit_diff(logits, answers, letter_ids):\n    """[n, 3]: answer logit minus the best other letter\'s, per letter."""\n    raise NotImplementedError  # your code here\n\n\ncheck_letter_logit_diff(my_letter_logit_diff)',
        solution=(
            ('code', """\
from helpers.exercises.acronyms import check_letter_logit_diff


def my_letter_logit_diff(logits, answers, letter_ids):
    letters = logits[:, :, letter_ids]  # [n, 3, 26]
    is_answer = letter_ids[None, None, :] == answers[..., None]
    best_other = letters.masked_fill(is_answer, float("-inf")).max(-1).values
    return logits.gather(2, answers[..., None])[..., 0] - best_other


check_letter_logit_diff(my_letter_logit_diff)
"""),
        ),
        graded=('my_letter_logit_diff', 'helpers.exercises.acronyms.check_letter_logit_diff', ('my_letter_logit_diff',)),
    ),
    Exercise(
        label='acr-mover-attention',
        title='Where the letter movers look',
        anchor=('What they attend to', 'The letter movers'),
        kind='code', difficulty=1, importance=2, minutes=15,
        goal="""\
Write `my_mover_attention(pattern)`: `pattern` is one head layer's attention,
`[n, n_heads, 11, 11]` indexed `[prompt, head, query, key]`, on the chapter's 11-token
prompts. Return `[n_heads, 3]`: for each letter i, the mean over prompts of the attention
from the position that *predicts* letter i to the capital Ci. Then read section 5's table:
which mover attends to its capital on every letter?
""",
        hint="""\
Capitals C1, C2, C3 sit at columns 2, 4, 6 (`acr.POSITION_NAMES`). Letter 1 is predicted
at "(" (column 8), letter 2 at A1 (column 9), letter 3 at A2 (column 10):
`acr.PREDICTION_POSITIONS`.
""",
        stub='from helpers.exercises.acronyms import check_mover_attention\n\n\ndef my_mover_attention(pattern):\n    """[n_heads, 3]: attention from each prediction position to its capital."""\n    raise NotImplementedError  # your code here\n\n\ncheck_mover_attention(my_mover_attention)',
        solution=(
            ('code', """\
import helpers.cases.acronyms as acr
from helpers.exercises.acronyms import check_mover_attention


def my_mover_attention(pattern):
    query = [acr.PREDICTION_POSITIONS[i] for i in (1, 2, 3)]  # 8, 9, 10
    key = [2, 4, 6]  # C1, C2, C3
    return pattern[:, :, query, key].mean(0)


check_mover_attention(my_mover_attention)
"""),
        ),
        graded=('my_mover_attention', 'helpers.exercises.acronyms.check_mover_attention', ('my_mover_attention',)),
    ),
    Exercise(
        label='acr-positional-swap',
        title="The paper's early positional heads",
        anchor=('Position', 'embeddings or attention to BOS'),
        kind='reading', difficulty=2, importance=1, minutes=15,
        goal="""\
The paper's official figures single out seven early heads outside the circuit as
the ones that carry the BOS signal: 0.8, 0.9, 0.11, 1.1, 1.2, 2.9 and 5.9
(`acr.BOS_SIGNAL_HEADS`). Swap attention to BOS between C1 and C2 (the paper's swap)
in those seven heads only, instead of the heads section 7's sweep selected.
Does 8.11's attention from P1 to C1 move as much? How many of the seven did
the sweep select?
""",
        hint="""\
`acr.positional_conditions(model, ds, acr.BOS_SIGNAL_HEADS, pair=(1, 2), watch=["8.11"])`
returns the conditions; compare its "BOS swapped" row for letter 1 with
section 7's. `bos_heads[1, 2]` holds the sweep's heads as (layer, head) pairs.
""",
        stub=None,
        solution=(
            ('code', """\
mine = acr.positional_conditions(model, ds, acr.BOS_SIGNAL_HEADS, pair=(1, 2),
                                 watch=["8.11"])
picked = {f"{L}.{h}" for L, h in bos_heads.get((1, 2), [])}
print("early positional heads the sweep selected:",
      sorted(picked & set(acr.BOS_SIGNAL_HEADS)))
columns = ["condition", "logit diff.", "to C1", "to C2"]
mine.query("letter == 1")[columns].round(3)
"""),
        ),
        graded=None,
    ),
]
