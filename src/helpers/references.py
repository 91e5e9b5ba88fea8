"""Published values and circuits, each with its source and how sure we are of it.

Sources are cited by paper section; "paper text" means read in the paper, "official code"
taken from the authors' repository, "secondary source" from third parties (check before
quoting). The fact sheets behind these entries are in the project's ``shared/papers``.
"""

from __future__ import annotations

from .scorecard import Reference

__all__ = ["IOI", "IOI_CIRCUIT", "IOI_CIRCUIT_POSITIONS", "IOI_CIRCUIT_SOURCE", "circuit_heads"]

#: Wang et al. 2022, "Interpretability in the Wild" (arXiv 2211.00593, ICLR 2023), GPT-2 small.
IOI: dict[str, Reference] = {
    "logit_diff": Reference(3.56, "Wang et al. 2022, §2 (100k prompts, no BOS)"),
    "io_prob": Reference(0.49, "Wang et al. 2022, §2"),
    "io_beats_s": Reference(0.993, "Wang et al. 2022, §2"),
    "faithfulness_ratio": Reference(
        0.87, "Wang et al. 2022, §4 (F(M) − F(C) = 0.46, 13% of F(M))"
    ),
    "faithfulness_gap": Reference(0.46, "Wang et al. 2022, §4"),
    "name_movers_knocked_out_drop": Reference(
        0.05, "Wang et al. 2022, §3.4 (all three name movers out: logit difference falls ~5%)"
    ),
    "negative_movers_removed_F": Reference(
        4.07, "Wang et al. 2022, App. K (negative name movers removed from the circuit)"
    ),
    "minimality_min_share": Reference(
        0.01, "Wang et al. 2022, App. K / Fig. 20 (every node moves F by ≥ 1% of F(M))"
    ),
    "name_mover_attention_to_io": Reference(0.59, "Wang et al. 2022, §3.1"),
    "name_mover_copy_score": Reference(0.95, "Wang et al. 2022, §3.1 (> 95%)"),
    "negative_mover_copy_score": Reference(0.98, "Wang et al. 2022, §3.1 (negative copy score)"),
    "s_inhibition_attention_to_s2": Reference(0.51, "Wang et al. 2022, §3.2"),
    "circuit_share_of_head_positions": Reference(0.011, "Wang et al. 2022, §1 (≈1.1%)"),
}

#: The 26-head, 7-class circuit (Wang et al. 2022, Fig. 2 and §3; App. F for the backups).
IOI_CIRCUIT: dict[str, tuple[str, ...]] = {
    "name mover": ("9.9", "9.6", "10.0"),
    "negative name mover": ("10.7", "11.10"),
    "backup name mover": ("9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"),
    "s-inhibition": ("7.3", "7.9", "8.6", "8.10"),
    "induction": ("5.5", "5.8", "5.9", "6.9"),
    "duplicate token": ("0.1", "0.10", "3.0"),
    "previous token": ("2.2", "4.11"),
}

#: The token position each class keeps when everything else is mean-ablated (§4).
IOI_CIRCUIT_POSITIONS: dict[str, str] = {
    "name mover": "END",
    "negative name mover": "END",
    "backup name mover": "END",
    "s-inhibition": "END",
    "induction": "S2",
    "duplicate token": "S2",
    "previous token": "S1+1",
}

IOI_CIRCUIT_SOURCE = (
    "Wang et al. 2022, Fig. 2, §3 and App. F: 26 heads in 7 classes; 5.8, 5.9 ('fuzzy' "
    "induction) and 0.10 ('fuzzy' duplicate token) as in the paper's final version"
)


def circuit_heads(circuit: dict[str, tuple[str, ...]] = IOI_CIRCUIT) -> list[tuple[int, int]]:
    """All ``(layer, head)`` pairs of a circuit given as ``{class: ("L.H", ...)}``."""
    heads = []
    for labels in circuit.values():
        for label in labels:
            layer, head = label.split(".")
            heads.append((int(layer), int(head)))
    return heads
