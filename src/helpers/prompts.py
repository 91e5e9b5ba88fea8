"""Prompt sets: the one dataset type every chapter's prompts are.

A :class:`PromptSet` holds ``n`` prompts as right-padded tokens with what experiments need
besides: the answer and wrong-answer tokens a metric compares, named token positions (IO,
S2, END; C1, A1, ...), per-prompt fields (template, names, ...) that define groups for
mean ablation, and the true lengths. Chapters build one with :meth:`PromptSet.from_texts`
or subclass it (the IOI dataset adds its names and templates); ``subset``, ``groups``,
``position`` and ``position_table`` then work the same for every chapter.

Right padding: a causal model never looks right, so padding after a prompt's last token
changes nothing up to it, and every named position keeps its index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PAD_TOKEN_ID", "PromptSet", "check_single_tokens", "tokenize"]

PAD_TOKEN_ID = 50256  # <|endoftext|>: GPT-2's BOS, EOS and (as TransformerLens sets it) pad


def _default_tokenizer() -> Any:
    from .models import gpt2_tokenizer

    return gpt2_tokenizer()


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (a bridge's tokenizer adds BOS)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer without that option adds none
        return list(tokenizer.encode(text))


def check_single_tokens(
    words: Sequence[str],
    tokenizer: Any = None,
    *,
    what: str = "words",
    leading_space: bool = True,
) -> dict[str, int]:
    """Map each word to its GPT-2 token id; raise if any is not exactly one token.

    With ``leading_space`` (default) the word is tokenized as ``" " + word``, as it stands
    mid-sentence. Returns ``{word: id}``. Raises ``ValueError`` listing every word that is
    not one token, or that appears twice, so a bad word list fails loudly.
    """
    tokenizer = tokenizer or _default_tokenizer()
    ids: dict[str, int] = {}
    bad: list[str] = []
    for w in words:
        toks = _encode_plain(tokenizer, (" " if leading_space else "") + w)
        if len(toks) != 1:
            bad.append(f"{w!r} -> {toks}")
        else:
            ids[w] = toks[0]
    space = " with a leading space" if leading_space else ""
    if bad:
        raise ValueError(f"these {what} are not single GPT-2 tokens{space}: " + ", ".join(bad))
    if len(set(words)) != len(words):
        dup = sorted({w for w in words if list(words).count(w) > 1})
        raise ValueError(f"duplicate {what}: {dup}")
    return ids


def tokenize(
    prompts: Sequence[str],
    tokenizer: Any = None,
    *,
    prepend_bos: bool = False,
    pad_token_id: int = PAD_TOKEN_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [n, L], lengths [n])``: the prompts tokenized and right-padded.

    No special tokens are added except BOS (``pad_token_id``, GPT-2's ``<|endoftext|>``)
    when ``prepend_bos``. Raises if the tokenizer adds a BOS of its own.
    """
    tokenizer = tokenizer or _default_tokenizer()
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the fast path skips HF's wrapping
    if backend is not None:
        ids = [e.ids for e in backend.encode_batch(list(prompts), add_special_tokens=False)]
    else:
        ids = [list(r) for r in tokenizer(list(prompts))["input_ids"]]
    if any(row and row[0] == pad_token_id for row in ids):
        raise ValueError("the tokenizer added a BOS itself; pass one that does not (use prepend_bos)")
    if prepend_bos:
        ids = [[pad_token_id] + row for row in ids]
    if any(not row for row in ids):
        raise ValueError("an empty prompt has no tokens; every prompt needs at least one")
    lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
    L = int(lengths.max()) if ids else 0
    tokens = torch.tensor([row + [pad_token_id] * (L - len(row)) for row in ids], dtype=torch.long)
    return tokens.reshape(len(ids), L), lengths


def _take(value: Any, idx: list[int], n: int) -> Any:
    """``value`` restricted to the prompts ``idx`` if it is per-prompt (first dim ``n``)."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[torch.tensor(idx, dtype=torch.long)]
    if isinstance(value, (list, tuple)) and len(value) == n:
        return type(value)(value[i] for i in idx)
    if isinstance(value, dict):
        return {k: _take(v, idx, n) for k, v in value.items()}
    return value


@dataclass(eq=False, kw_only=True)
class PromptSet:
    """``n`` prompts, their tokens, answers and named positions.

    Fields:
        prompts: ``n`` strings (without the answer).
        tokens: ``[n, L]`` long, right-padded with ``pad_token_id``.
        lengths: ``[n]`` long, real tokens per prompt (BOS included when ``prepend_bos``).
        positions: ``{name: [n] long}`` token positions in ``tokens``, e.g. ``"END"``.
        answers: ``[n]`` (or ``[n, k]`` for ``k`` answers per prompt) long: correct tokens.
        wrong: the wrong-answer tokens a logit difference compares against; same shape.
        fields: per-prompt metadata ``{name: n values}`` (lists or tensors with first dim
            ``n``), e.g. ``{"template": [...]}``; :meth:`groups` groups by them.
        prepend_bos: whether ``tokens[:, 0]`` is BOS.
        pad_token_id: the padding token (GPT-2's ``<|endoftext|>``, 50256).

    Subclasses add fields; every list or tensor field whose first dimension is ``n`` is
    treated as per-prompt by :meth:`subset`.
    """

    prompts: list[str]
    tokens: torch.Tensor
    lengths: torch.Tensor
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    answers: torch.Tensor | None = None
    wrong: torch.Tensor | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = False
    pad_token_id: int = PAD_TOKEN_ID
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if n == 0:
            raise ValueError("a prompt set needs at least one prompt (got an empty list)")
        if self.tokens.ndim != 2 or self.tokens.shape[0] != n:
            raise ValueError(f"tokens must be [n, L] with n = {n} prompts, got {tuple(self.tokens.shape)}")
        if tuple(self.lengths.shape) != (n,):
            raise ValueError(f"lengths must be [n] = [{n}], got {tuple(self.lengths.shape)}")
        for name, pos in self.positions.items():
            pos = torch.as_tensor(pos)
            if tuple(pos.shape) != (n,):
                raise ValueError(f"position {name!r} must be [n] = [{n}], got {tuple(pos.shape)}")
            if ((pos < 0) | (pos >= self.lengths)).any():
                i = int(((pos < 0) | (pos >= self.lengths)).nonzero()[0])
                raise ValueError(
                    f"position {name!r} of prompt {i} is {int(pos[i])}, outside its "
                    f"{int(self.lengths[i])} tokens: {self.prompts[i]!r}"
                )
        for name, value in (("answers", self.answers), ("wrong", self.wrong)):
            if value is not None and (value.ndim not in (1, 2) or value.shape[0] != n):
                raise ValueError(f"{name} must be [n] or [n, k] with n = {n}, got {tuple(value.shape)}")
        if self.answers is not None and self.wrong is not None and self.wrong.shape != self.answers.shape:
            raise ValueError(
                f"wrong {tuple(self.wrong.shape)} must have the shape of answers {tuple(self.answers.shape)}"
            )
        for name, value in self.fields.items():
            if len(value) != n:
                raise ValueError(f"field {name!r} has {len(value)} values for {n} prompts")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_texts(
        cls,
        prompts: Sequence[str],
        *,
        answers: Sequence[str] | torch.Tensor | None = None,
        wrong: Sequence[str] | torch.Tensor | None = None,
        positions: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        prepend_bos: bool = False,
        tokenizer: Any = None,
        **extra: Any,
    ) -> PromptSet:
        """Tokenize ``prompts`` (right-padded) and attach answers and positions.

        ``answers``/``wrong``: token ids, or strings that must each be one token (e.g.
        ``" Mary"``; a list of lists for several answers per prompt). ``positions``:
        ``{name: [n] ints}``; negative values count from each prompt's own end (``-1`` is
        its last token). ``END`` (the last token) is added when not given. ``extra``:
        further fields of a subclass.
        """
        tokenizer = tokenizer or _default_tokenizer()
        prompts = list(prompts)
        if not prompts:
            raise ValueError("a prompt set needs at least one prompt (got an empty list)")
        tokens, lengths = tokenize(prompts, tokenizer, prepend_bos=prepend_bos)
        named: dict[str, torch.Tensor] = {}
        for name, pos in (positions or {}).items():
            pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
            named[name] = torch.where(pos < 0, lengths + pos, pos)
        named.setdefault("END", lengths - 1)
        return cls(
            prompts=prompts,
            tokens=tokens,
            lengths=lengths,
            positions=named,
            answers=_as_token_ids(answers, tokenizer, "answers"),
            wrong=_as_token_ids(wrong, tokenizer, "wrong"),
            fields=dict(fields or {}),
            prepend_bos=prepend_bos,
            tokenizer=tokenizer,
            **extra,
        )

    # ------------------------------------------------------------------ views

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def max_len(self) -> int:
        """``L``, the padded length of ``tokens``."""
        return int(self.tokens.shape[1])

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[n, L]`` long, 1 on real tokens (BOS included), 0 on padding."""
        return (torch.arange(self.max_len)[None, :] < self.lengths[:, None]).long()

    def position(self, name: str) -> torch.Tensor:
        """``[n]`` long: the named position ``name``; a clear error names the known ones."""
        if name not in self.positions:
            raise KeyError(f"unknown position name {name!r}; this prompt set has {sorted(self.positions)}")
        return self.positions[name]

    def groups(self, by: str | Sequence[str] | None = None) -> dict[Any, torch.Tensor]:
        """``{key: indices}`` of the prompts sharing the value of field(s) ``by``.

        ``by``: a key of :attr:`fields` or an attribute name (a per-prompt list or tensor),
        or several of them (keys are then tuples); ``None`` puts every prompt in one group.
        Keys are sorted; tensor values become ints.
        """
        n = len(self)
        if by is None:
            return {0: torch.arange(n)}
        names = [by] if isinstance(by, str) else list(by)
        columns = [self._column(name) for name in names]
        keys = [c[0] if len(c) == 1 else tuple(c) for c in zip(*columns)]
        out: dict[Any, list[int]] = {}
        for i, k in enumerate(keys):
            out.setdefault(k, []).append(i)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in sorted(out.items())}

    def _column(self, name: str) -> list:
        if name in self.fields:
            values = self.fields[name]
        elif hasattr(self, name) and name not in ("prompts", "tokens"):
            values = getattr(self, name)
        else:
            raise KeyError(f"cannot group by {name!r}; per-prompt fields: {sorted(self.fields)}")
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if len(values) != len(self):
            raise ValueError(f"{name!r} is not per-prompt ({len(values)} values for {len(self)} prompts)")
        return list(values)

    def subset(self, idx: torch.Tensor | Sequence[int] | range) -> PromptSet:
        """The prompts at ``idx`` (same type), re-padded to their own longest length."""
        idx = [int(i) for i in idx]
        n = len(self)
        if not idx:
            raise ValueError("subset needs at least one index")
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise IndexError(f"subset indices {bad[:5]} are outside 0..{n - 1}")
        changes = {}
        for f in dataclasses.fields(self):
            if f.name in ("tokens", "tokenizer"):
                continue
            changes[f.name] = _take(getattr(self, f.name), idx, n)
        lengths = changes["lengths"]
        changes["tokens"] = self.tokens[torch.tensor(idx, dtype=torch.long), : int(lengths.max())]
        return dataclasses.replace(self, **changes)

    def position_table(self, i: int = 0):
        """A one-prompt table: its tokens, with the named positions marked under them."""
        import pandas as pd

        tokenizer = self.tokenizer or _default_tokenizer()
        n_tok = int(self.lengths[i])
        tokens = [tokenizer.decode([t]) for t in self.tokens[i, :n_tok].tolist()]
        marks: dict[int, list[str]] = {}
        for name, pos in self.positions.items():
            marks.setdefault(int(pos[i]), []).append(name)
        return pd.DataFrame(
            {"token": tokens, "position": [", ".join(marks.get(j, [])) for j in range(n_tok)]}
        ).T


def _as_token_ids(values: Any, tokenizer: Any, what: str) -> torch.Tensor | None:
    """Token ids from ids or from strings that must each be a single token."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values.long()
    rows = list(values)

    def one(s: Any) -> int:
        if isinstance(s, int):
            return s
        ids = tokenizer.encode(s)
        if len(ids) != 1:
            raise ValueError(
                f"{what}: {s!r} is {len(ids)} tokens ({ids}); each answer must be one token "
                f"(mind the leading space, e.g. ' Mary')"
            )
        return ids[0]

    if rows and isinstance(rows[0], (list, tuple)):
        return torch.tensor([[one(s) for s in row] for row in rows], dtype=torch.long)
    return torch.tensor([one(s) for s in rows], dtype=torch.long)
