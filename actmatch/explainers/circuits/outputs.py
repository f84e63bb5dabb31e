"""Circuit files for one explained image: what ``actmatch explain --circuit`` and ``actmatch circuit`` write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from actmatch.explainers.circuits.ablation import Ablation
from actmatch.explainers.circuits.draw import draw_circuit, draw_comparison
from actmatch.explainers.circuits.edges import EdgeScoring
from actmatch.explainers.circuits.graph import DEFAULT_FRACTIONS, CircuitReader, compare_circuits
from actmatch.explainers.circuits.io import write_graphml, write_json
from actmatch.explainers.circuits.nodes import PRE_LOGITS, KSpec, circuit_taps, resolve_counts

__all__ = ["write_circuit_outputs", "DEFAULT_K"]

DEFAULT_K = 0.1
"""Per-layer fraction used when no search is run, or when no fraction keeps the label."""


def _channel_nodes(graph) -> int:
    return sum(1 for _, d in graph.nodes(data=True) if d.get("kind") == "channel" and d["layer"] != PRE_LOGITS)


def _tap_count(graph, fraction: float) -> int:
    channels = {k: v for k, v in graph.graph["channels"].items() if k != PRE_LOGITS}
    return sum(resolve_counts(fraction, channels).values())


def write_circuit_outputs(
    explainer,
    image: torch.Tensor,
    mask: torch.Tensor,
    out_dir: Path,
    k: KSpec | None = None,
    scoring: str | EdgeScoring = "gradient",
    ablation: str | Ablation = "zero",
    search: bool = True,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    layers: str | Sequence[str] | None = None,
    rank: str = "attribution",
    random_draws: int = 8,
) -> dict:
    """Read out, test and write the circuits of an explanation and of its original image.

    The explanation e = m ⊙ x + (1 − m) ⊙ fill is built with the explainer's own fill. With
    ``search`` (and no ``k``), the circuit is the smallest per-layer fraction of ``fractions``
    that keeps the original top-1 label under ablation (:data:`DEFAULT_K` when none does); the
    original's circuit is read at the same k for the comparison, and its own smallest fraction
    is reported too.

    Writes into ``out_dir``: ``circuit.json``, ``circuit.graphml``, ``circuit.png`` (the
    explanation's circuit), ``circuit_original.json`` and ``circuit_comparison.png``.

    Args:
        explainer: an :class:`~actmatch.explainers.module.ActMatchExplainer` (its classifier, taps, fill).
        image: (1, 3, h, w) in [0, 1].
        mask: (1, 1, h, w) hard {0, 1} mask.
        out_dir: an existing folder.
        layers: circuit layers, or a preset ``blocks`` / ``stages`` (default: ``blocks`` where the
            model has them, else its stages, else the explainer's taps; see
            :func:`~actmatch.explainers.circuits.nodes.circuit_taps`).
        rank: ``attribution`` or ``energy`` (see :class:`CircuitReader`).
        random_draws: random circuits of the same size tested as the control (0: none).

    Returns:
        Summary fields: ``circuit_nodes`` (tapped channels in the explanation's circuit),
        ``circuit_fraction``, ``circuit_label_kept``, ``circuit_confidence``, ``circuit_scoring``,
        ``circuit_ablation``, ``circuit_fraction_original`` (None without search or when nothing
        keeps the label), ``circuit_label_kept_original`` and ``circuit_nodes_original`` (the
        original's circuit at the explanation's k), ``circuit_nodes_original_smallest`` (tapped
        channels at the original's own smallest fraction), ``circuit_jaccard_nodes``,
        ``circuit_jaccard_edges`` (original vs explanation at the same k), ``circuit_random_kept``
        (share of random same-size circuits that keep the label; None without draws), ``circuit_rank``,
        ``circuit_taps``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder {out_dir} does not exist; create it first")
    if image.dim() != 4 or image.shape[0] != 1 or mask.shape[0] != 1 or mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"expected one image (1, 3, h, w) and its mask (1, 1, h, w), got {tuple(image.shape)} and {tuple(mask.shape)}"
        )
    device = explainer.device
    image, mask = image.to(device), mask.to(device).float()
    evaluated = explainer.evaluate(image, mask)
    explanation = evaluated.explanations.to(device)
    label = int(evaluated.label[0])
    layers = circuit_taps(explainer.classifier, layers, fallback=explainer.taps)
    reader = CircuitReader(
        explainer.classifier, layers, k=DEFAULT_K if k is None else k, scoring=scoring, ablation=ablation, rank=rank
    )
    fraction_e = fraction_x = None
    trials = []
    if search and k is None:
        found_e = reader.search(explanation, label, fractions)
        found_x = reader.search(image, label, fractions)
        fraction_e, fraction_x, trials = found_e.fraction, found_x.fraction, found_e.trials
    circuit_k = fraction_e if fraction_e is not None else reader.k
    graph_e = reader.read(explanation, k=circuit_k, label=label, input_name="explanation")
    graph_x = reader.read(image, k=circuit_k, label=label, input_name="original")
    comparison = compare_circuits(graph_x, graph_e)
    random_kept = reader.random_control(explanation, circuit_k, label, random_draws) if random_draws else None
    write_json(
        graph_e,
        out_dir / "circuit.json",
        search=[list(t) for t in trials],
        comparison={k_: v for k_, v in comparison.items() if k_ != "shared_nodes"},
    )
    write_graphml(graph_e, out_dir / "circuit.graphml")
    write_json(graph_x, out_dir / "circuit_original.json")
    draw_circuit(graph_e, out_dir / "circuit.png")
    draw_comparison(graph_x, graph_e, out_dir / "circuit_comparison.png", comparison=comparison)
    return {
        "circuit_nodes": _channel_nodes(graph_e),
        "circuit_fraction": float(circuit_k) if isinstance(circuit_k, float) else None,
        "circuit_label_kept": bool(graph_e.graph["label_kept"]),
        "circuit_confidence": float(graph_e.graph["confidence"]),
        "circuit_scoring": reader.scoring.name,
        "circuit_ablation": reader.ablation.name,
        "circuit_fraction_original": fraction_x,
        "circuit_label_kept_original": bool(graph_x.graph["label_kept"]),
        "circuit_nodes_original": _channel_nodes(graph_x),
        "circuit_nodes_original_smallest": None if fraction_x is None else _tap_count(graph_x, fraction_x),
        "circuit_jaccard_nodes": comparison["jaccard_nodes"],
        "circuit_jaccard_edges": comparison["jaccard_edges"],
        "circuit_random_kept": random_kept,
        "circuit_rank": reader.rank,
        "circuit_taps": " ".join(reader.layers),
    }
