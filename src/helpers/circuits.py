"""Circuits as data: classes of heads, the positions each class keeps, and a source.

A paper's circuit is a few named classes of attention heads ("name mover": 9.9, 9.6, 10.0;
"letter mover": 8.11, ...), each kept at some token positions when everything else is
mean-ablated. :class:`Circuit` holds exactly that; the evaluation code wants *nodes*,
``{(layer, head): positions}``, and :meth:`Circuit.nodes` gives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Circuit", "Head", "head_label", "parse_head"]

Head = tuple[int, int]


def head_label(layer: int, head: int) -> str:
    """``"L.H"``, the papers' name for a head."""
    return f"{layer}.{head}"


def parse_head(label: str | Head) -> Head:
    """``"9.6"`` (or ``(9, 6)``) → ``(9, 6)``."""
    if isinstance(label, str):
        try:
            layer, head = label.split(".")
            return int(layer), int(head)
        except ValueError:
            raise ValueError(f"a head label looks like '9.6' (layer.head), got {label!r}") from None
    layer, head = label
    return int(layer), int(head)


@dataclass(frozen=True)
class Circuit:
    """A circuit: ``classes`` (name → heads, in the paper's order), kept positions, source.

    ``positions`` maps each class to the position spec its heads keep (a named position such
    as ``"END"``, a list of names, or ``None`` for every position). A head belongs to one
    class. Build one from the papers' labels with :meth:`from_labels`.
    """

    name: str
    classes: Mapping[str, tuple[Head, ...]]
    positions: Mapping[str, Any]
    source: str

    def __post_init__(self) -> None:
        seen: dict[Head, str] = {}
        for cls, heads in self.classes.items():
            for h in heads:
                if h in seen:
                    raise ValueError(f"head {head_label(*h)} is in two classes: {seen[h]!r} and {cls!r}")
                seen[h] = cls
        missing = [c for c in self.classes if c not in self.positions]
        if missing:
            raise ValueError(f"no kept positions given for classes {missing}")

    @classmethod
    def from_labels(
        cls,
        name: str,
        classes: Mapping[str, Iterable[str | Head]],
        positions: Mapping[str, Any] | Any = None,
        source: str = "",
    ) -> Circuit:
        """From ``{class: ("9.9", "9.6", ...)}``; ``positions`` per class, or one for all."""
        parsed = {c: tuple(parse_head(h) for h in heads) for c, heads in classes.items()}
        if not isinstance(positions, Mapping):
            positions = {c: positions for c in parsed}
        return cls(name, parsed, dict(positions), source)

    # ------------------------------------------------------------------ views

    def heads(self, classes: str | Iterable[str] | None = None) -> list[Head]:
        """The heads of ``classes`` (one name, several, or all), in class order."""
        return [h for c in self._classes(classes) for h in self.classes[c]]

    def labels(self, classes: str | Iterable[str] | None = None) -> list[str]:
        """The same heads as ``"L.H"`` labels."""
        return [head_label(*h) for h in self.heads(classes)]

    def class_of(self, head: str | Head) -> str:
        """The class a head belongs to."""
        h = parse_head(head)
        for c, heads in self.classes.items():
            if h in heads:
                return c
        raise KeyError(f"head {head_label(*h)} is not in the circuit {self.name!r}")

    def nodes(self, classes: str | Iterable[str] | None = None) -> dict[Head, Any]:
        """``{(layer, head): kept positions}`` for the heads of ``classes`` (default all)."""
        return {h: self.positions[c] for c in self._classes(classes) for h in self.classes[c]}

    def nodes_of(self, heads: Iterable[str | Head]) -> dict[Head, Any]:
        """``{(layer, head): kept positions}`` for some of the circuit's heads."""
        return {parse_head(h): self.positions[self.class_of(h)] for h in heads}

    def marked(self, classes: str | Iterable[str] | None = None) -> dict[str, list[str]]:
        """``{class: labels}``, the form heatmaps take to mark a paper's heads."""
        return {c: self.labels(c) for c in self._classes(classes)}

    def _classes(self, classes: str | Iterable[str] | None) -> list[str]:
        if classes is None:
            return list(self.classes)
        names = [classes] if isinstance(classes, str) else list(classes)
        unknown = [c for c in names if c not in self.classes]
        if unknown:
            raise KeyError(f"unknown classes {unknown}; the circuit {self.name!r} has {list(self.classes)}")
        return names

    def __len__(self) -> int:
        return sum(len(h) for h in self.classes.values())

    def __iter__(self) -> Iterator[Head]:
        return iter(self.heads())

    def __contains__(self, head: object) -> bool:
        try:
            return parse_head(head) in set(self.heads())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
