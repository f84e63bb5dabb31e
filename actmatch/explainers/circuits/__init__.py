"""Channel circuits behind a decision: nodes, scored edges, class links, ablation tests, files, drawings.

Quick use::

    reader = CircuitReader(classifier, k=0.1, scoring="gradient")
    graph = reader.read(image)                 # networkx DiGraph, faithfulness in graph.graph
    found = reader.search(image)               # smallest per-layer fraction keeping the label
    write_json(graph, "circuit.json"); draw_circuit(graph, "circuit.png")

See docs/circuits.md for which edge scoring applies where.
"""

from actmatch.explainers.circuits.ablation import (
    ABLATIONS,
    Ablation,
    Faithfulness,
    MeanAblation,
    ZeroAblation,
    ablated,
    faithfulness,
    make_ablation,
)
from actmatch.explainers.circuits.attribution import attribution_select, channel_attribution
from actmatch.explainers.circuits.draw import draw_circuit, draw_comparison
from actmatch.explainers.circuits.edges import (
    SCORINGS,
    AutoScoring,
    EdgeScoring,
    GradientScoring,
    Ingress,
    NotLinkableError,
    WeightScoring,
    find_ingress,
    make_scoring,
)
from actmatch.explainers.circuits.graph import (
    DEFAULT_FRACTIONS,
    RANKINGS,
    CircuitReader,
    SearchResult,
    circuit_channels,
    compare_circuits,
    node_id,
    read_circuit,
)
from actmatch.explainers.circuits.io import read_graphml, read_json, write_graphml, write_json
from actmatch.explainers.circuits.nodes import (
    PRE_LOGITS,
    TAP_PRESETS,
    Activations,
    block_taps,
    circuit_taps,
    read_activations,
    resolve_counts,
)
from actmatch.explainers.circuits.outputs import write_circuit_outputs

__all__ = [
    "ABLATIONS",
    "Ablation",
    "Activations",
    "AutoScoring",
    "CircuitReader",
    "DEFAULT_FRACTIONS",
    "EdgeScoring",
    "Faithfulness",
    "GradientScoring",
    "Ingress",
    "MeanAblation",
    "NotLinkableError",
    "PRE_LOGITS",
    "RANKINGS",
    "TAP_PRESETS",
    "SCORINGS",
    "SearchResult",
    "WeightScoring",
    "ZeroAblation",
    "ablated",
    "attribution_select",
    "block_taps",
    "channel_attribution",
    "circuit_taps",
    "circuit_channels",
    "compare_circuits",
    "draw_circuit",
    "draw_comparison",
    "faithfulness",
    "find_ingress",
    "make_ablation",
    "make_scoring",
    "node_id",
    "read_activations",
    "read_circuit",
    "read_graphml",
    "read_json",
    "resolve_counts",
    "write_circuit_outputs",
    "write_graphml",
    "write_json",
]
