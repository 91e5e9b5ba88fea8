"""The circuit type: classes, heads, kept positions."""

import pytest

from helpers.circuits import Circuit, parse_head


def make():
    return Circuit.from_labels(
        "toy", {"mover": ["9.9", "9.6"], "inhibition": ["7.3"]},
        {"mover": "END", "inhibition": ["END", "S2"]}, source="made up",
    )


def test_heads_nodes_and_labels():
    c = make()
    assert c.heads() == [(9, 9), (9, 6), (7, 3)] and len(c) == 3
    assert c.heads("inhibition") == [(7, 3)] and c.labels("mover") == ["9.9", "9.6"]
    assert c.nodes() == {(9, 9): "END", (9, 6): "END", (7, 3): ["END", "S2"]}
    assert c.nodes_of(["7.3"]) == {(7, 3): ["END", "S2"]}
    assert c.class_of("9.6") == "mover" and "9.6" in c and (1, 1) not in c
    assert c.marked("mover") == {"mover": ["9.9", "9.6"]}


def test_bad_circuits_and_names_fail_clearly():
    with pytest.raises(ValueError, match="two classes"):
        Circuit.from_labels("x", {"a": ["1.1"], "b": ["1.1"]}, "END")
    with pytest.raises(KeyError, match="unknown classes"):
        make().heads("nope")
    with pytest.raises(ValueError, match="layer.head"):
        parse_head("nine")
