"""Published values and the IOI circuit as data: complete, sourced, consistent."""

from helpers.references import IOI, IOI_CIRCUIT, IOI_CIRCUIT_POSITIONS, IOI_CIRCUIT_SOURCE, circuit_heads


def test_ioi_circuit_has_26_heads_in_7_classes():
    heads = circuit_heads()
    assert len(IOI_CIRCUIT) == 7 and len(heads) == 26 and len(set(heads)) == 26
    assert all(0 <= layer < 12 and 0 <= head < 12 for layer, head in heads)
    assert set(IOI_CIRCUIT["name mover"]) == {"9.9", "9.6", "10.0"}
    assert set(IOI_CIRCUIT["negative name mover"]) == {"10.7", "11.10"}
    assert "Wang et al. 2022" in IOI_CIRCUIT_SOURCE


def test_every_class_keeps_a_named_position():
    assert set(IOI_CIRCUIT_POSITIONS) == set(IOI_CIRCUIT)
    assert set(IOI_CIRCUIT_POSITIONS.values()) <= {"END", "S2", "S1+1", "IO", "S1"}
    # classes are causally ordered: earlier classes read earlier layers
    last_s_inhibition = max(l for l, _ in circuit_heads({"x": IOI_CIRCUIT["s-inhibition"]}))
    first_name_mover = min(l for l, _ in circuit_heads({"x": IOI_CIRCUIT["name mover"]}))
    assert last_s_inhibition < first_name_mover


def test_published_values_carry_sources_and_confidence():
    assert IOI["logit_diff"].value == 3.56 and IOI["io_beats_s"].value == 0.993
    for key, ref in IOI.items():
        assert ref.source.startswith("Wang et al. 2022"), key
        assert ref.confidence in {"paper text", "official code", "secondary source"}, key
