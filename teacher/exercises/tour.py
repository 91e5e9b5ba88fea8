"""Exercises of notebooks/00_tour.ipynb."""

from . import Exercise, coding

CHAPTER = "00_tour"

EXERCISES = [
    Exercise(
        label='tour-read-dla',
        title='Read the attribution chart',
        anchor=('Direct logit attribution by layer',),
        kind='reading', difficulty=1, importance=2, minutes=10,
        goal="""\
In the bar chart of section 5, which component pushes hardest towards the answer, and which
hardest against it? Do the bars add up to the logit difference printed above the chart?
""",
        hint="""\
A positive bar favours the answer over the distractor. The printed line compares the
logit difference with the sum of the components.
""",
        stub=None,
        solution=(
            ('code', """\
best, worst = contributions.argmax().item(), contributions.argmin().item()
print(f"most for {answer!r}: {labels[best]} ({contributions[best]:+.3f}); "
      f"most against: {labels[worst]} ({contributions[worst]:+.3f})")
print(f"sum of the bars {contributions.sum():.3f} "
      f"= logit difference {total:.3f}")
"""),
        ),
        graded=None,
    ),
    Exercise(
        label='tour-logit-diff',
        title='Compute a logit difference',
        anchor=('What comes next',),
        kind='code', difficulty=1, importance=3, minutes=15,
        goal="""\
Write `my_logit_diff(logits, answer, wrong, end)`: for each prompt, the logit of its answer
token minus the logit of its wrong token, read at the prompt's own last position `end`
(prompts in a batch have different lengths, so `end` differs per prompt). Shapes: `logits`
`[batch, seq, vocab]`; `answer`, `wrong`, `end` `[batch]`; the result `[batch]`.
""",
        hint="""\
Index with three tensors at once: `logits[rows, end, answer]` with
`rows = torch.arange(batch)` picks one logit per prompt.
""",
        stub='import torch\nfrom helpers.exercises.tour import check_logit_diff\n\n\ndef my_logit_diff(logits, answer, wrong, end):\n    """[batch]: logit(answer) − logit(wrong) at each prompt\'s END."""\n    raise NotImplementedError  # your code here\n\n\ncheck_logit_diff(my_logit_diff)',
        solution=(
            ('code', """\
import torch

from helpers.exercises.tour import check_logit_diff


def my_logit_diff(logits, answer, wrong, end):
    rows = torch.arange(logits.shape[0])
    return logits[rows, end, answer] - logits[rows, end, wrong]


check_logit_diff(my_logit_diff)
"""),
        ),
        graded=('my_logit_diff', 'helpers.exercises.tour.check_logit_diff', ('my_logit_diff',)),
    ),
    Exercise(
        label='tour-dla',
        title='Direct logit attribution by hand',
        anchor=('Direct logit attribution by layer',),
        kind='code', difficulty=2, importance=2, minutes=20,
        goal="""\
Section 5 used `dla_by_layer`. Write its core: given the components of the final residual
stream at one position (`stack`, `[components, d_model]`), the final LayerNorm's scale there
(`scale`, a number) and the logit-difference direction (`direction`, `[d_model]`), return
each component's contribution `[components]`.
""",
        hint="""\
After folding, the final LayerNorm centres its input and divides by `scale`. Centring a sum
is the sum of the centred parts, so centre each component, divide by `scale`, then take the
dot product with `direction`.
""",
        stub='from helpers.exercises.tour import check_dla\n\n\ndef my_dla(stack, scale, direction):\n    """[components]: each component\'s share of the logit difference."""\n    raise NotImplementedError  # your code here\n\n\ncheck_dla(my_dla)',
        solution=(
            ('code', """\
from helpers.exercises.tour import check_dla


def my_dla(stack, scale, direction):
    centred = stack - stack.mean(-1, keepdim=True)
    return (centred / scale) @ direction


check_dla(my_dla)
"""),
        ),
        graded=('my_dla', 'helpers.exercises.tour.check_dla', ('my_dla',)),
    ),
]
