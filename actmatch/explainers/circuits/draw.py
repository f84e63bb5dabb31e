"""Layered drawings of circuits (matplotlib + networkx): layers as columns, edge width by score.

Scores differ by orders of magnitude between layers, so edge widths are normalised per pair of
successive layers. Wide layers show their ``max_nodes`` first-ranked channels (the column
title says how many the circuit has), and only edges between shown nodes are drawn.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["draw_circuit", "draw_comparison", "shown_subgraph"]


def shown_subgraph(graph: nx.DiGraph, max_nodes: int = 12) -> nx.DiGraph:
    """The ``max_nodes`` best-ranked nodes of every layer and the edges between them."""
    keep = [n for n, d in graph.nodes(data=True) if d.get("rank", 0) < max_nodes]
    return graph.subgraph(keep).copy()


def _column_titles(graph: nx.DiGraph) -> dict[int, str]:
    counts = graph.graph.get("counts", {})
    channels = graph.graph.get("channels", {})
    titles = {}
    for _, data in graph.nodes(data=True):
        layer, index = data["layer"], data["layer_index"]
        if layer == "classes":
            titles[index] = "classes"
        else:
            titles[index] = f"{layer}\n{counts.get(layer, '?')}/{channels.get(layer, '?')}"
    return titles


def draw_circuit(
    graph: nx.DiGraph,
    path: str | Path | None = None,
    ax: Axes | None = None,
    max_nodes: int = 12,
    highlight: set[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw ``graph`` column by column; save to ``path`` if given.

    Args:
        max_nodes: channels shown per layer (the first-ranked).
        highlight: node ids drawn in a second colour (e.g. nodes shared with another circuit).
        title: figure title (default: backbone, input, label, faithfulness).
    """
    shown = shown_subgraph(graph, max_nodes)
    if ax is None:
        columns = len({d["layer_index"] for _, d in shown.nodes(data=True)})
        ax = Figure(figsize=(max(6.0, 2.2 * columns), 0.45 * max_nodes + 2.5)).subplots()
    fig = ax.figure
    assert isinstance(fig, Figure), "draw_circuit draws on an Axes of a Figure, not of a SubFigure"
    ax.set_axis_off()
    if shown.number_of_nodes() == 0:
        ax.text(0.5, 0.5, "empty circuit", ha="center")
    else:
        pos = nx.multipartite_layout(shown, subset_key="layer_index", align="vertical")
        # within a column: rank 0 at the top
        for node, data in shown.nodes(data=True):
            pos[node] = (pos[node][0], -float(data.get("rank", 0)))
        link_max: dict[int, float] = {}
        for u, _, d in shown.edges(data=True):
            key = shown.nodes[u]["layer_index"]
            link_max[key] = max(link_max.get(key, 0.0), d["score"])
        edges = list(shown.edges(data=True))
        widths = [0.2 + 3.0 * d["score"] / (link_max[shown.nodes[u]["layer_index"]] or 1.0) for u, _, d in edges]
        nx.draw_networkx_edges(
            shown,
            pos,
            edgelist=[(u, v) for u, v, _ in edges],
            width=widths,
            alpha=0.45,
            edge_color="tab:gray",
            arrows=False,
            ax=ax,
        )
        highlight = highlight or set()
        colors = []
        for node, data in shown.nodes(data=True):
            if data.get("kind") == "class":
                colors.append("tab:red")
            else:
                colors.append("tab:orange" if node in highlight else "tab:blue")
        nx.draw_networkx_nodes(shown, pos, node_color=colors, node_size=180, ax=ax)
        labels = {
            n: (d.get("name", str(d["channel"]))[:18] if d.get("kind") == "class" else str(d["channel"]))
            for n, d in shown.nodes(data=True)
        }
        nx.draw_networkx_labels(shown, pos, labels=labels, font_size=6, ax=ax)
        xs = {}
        for node, data in shown.nodes(data=True):
            xs[data["layer_index"]] = pos[node][0]
        for index, text in _column_titles(shown).items():
            ax.text(xs[index], 1.2, text, ha="center", va="bottom", fontsize=7)
    if title is None:
        g = graph.graph
        kept = g.get("label_kept")
        test = "" if kept is None else f" | circuit keeps label: {kept} (p={g.get('confidence', float('nan')):.2f})"
        title = f"{g.get('backbone', '')} {g.get('input', '')}: {g.get('label_name', '')}{test}"
    ax.set_title(title, fontsize=8, pad=30)  # above the column titles
    if path is not None:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return fig


def draw_comparison(
    original: nx.DiGraph,
    explanation: nx.DiGraph,
    path: str | Path | None = None,
    max_nodes: int = 12,
    comparison: dict | None = None,
) -> Figure:
    """Original's and explanation's circuits side by side; shared channels in orange."""
    from actmatch.explainers.circuits.graph import compare_circuits

    comparison = comparison or compare_circuits(original, explanation)
    shared = set(comparison["shared_nodes"])
    columns = len(original.graph.get("layers", [])) + 1
    fig = Figure(figsize=(max(10.0, 4.0 * columns), 0.45 * max_nodes + 3))
    axes = fig.subplots(1, 2)
    for ax, graph, name in ((axes[0], original, "original"), (axes[1], explanation, "explanation")):
        n = sum(1 for _, d in graph.nodes(data=True) if d.get("kind") == "channel")
        draw_circuit(
            graph,
            ax=ax,
            max_nodes=max_nodes,
            highlight=shared,
            title=f"{name}: {n} channels, label kept: {graph.graph.get('label_kept')}",
        )
    fig.suptitle(
        f"shared channels {len(shared)} (Jaccard {comparison['jaccard_nodes']:.2f}), "
        f"shared edges {comparison['shared_edges']} (Jaccard {comparison['jaccard_edges']:.2f})",
        fontsize=9,
    )
    if path is not None:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return fig
