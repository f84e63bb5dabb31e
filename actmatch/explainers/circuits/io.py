"""Circuit files: ``circuit.json`` (readable, documented schema) and GraphML, both round-trip.

``circuit.json``::

    {"format": "actmatch-circuit/1",
     "graph": {backbone, input, scoring, ablation, layers, channels, counts, label, label_name,
               fraction?, label_kept?, confidence?, ...},
     "nodes": [{"id", "kind", "layer", "layer_index", "channel", "activation", "energy", "rank",
                "name"?, "probability"?}, ...],
     "edges": [{"source", "target", "score", "scoring"}, ...],         # channel -> channel
     "class_links": [{"source", "target", "score", "scoring"}, ...]}   # pre_logits -> class

GraphML holds only scalars, so list and dict graph attributes are stored as JSON strings and
named in the graph attribute ``json_attributes``; :func:`read_graphml` decodes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

__all__ = ["FORMAT", "circuit_to_dict", "circuit_from_dict", "write_json", "read_json", "write_graphml", "read_graphml"]

FORMAT = "actmatch-circuit/1"


def circuit_to_dict(graph: nx.DiGraph) -> dict:
    """The JSON document of a circuit graph."""
    nodes = [{"id": n, **data} for n, data in graph.nodes(data=True)]
    edges: list[dict] = []
    links: list[dict] = []
    for u, v, data in graph.edges(data=True):
        entry = {"source": u, "target": v, **{k: val for k, val in data.items() if k != "kind"}}
        (links if data.get("kind") == "class_link" else edges).append(entry)
    return {"format": FORMAT, "graph": dict(graph.graph), "nodes": nodes, "edges": edges, "class_links": links}


def circuit_from_dict(document: dict) -> nx.DiGraph:
    """Inverse of :func:`circuit_to_dict`."""
    if document.get("format") != FORMAT:
        raise ValueError(f"not an actmatch circuit document (format {document.get('format')!r}, expected {FORMAT!r})")
    graph = nx.DiGraph(**document["graph"])
    for node in document["nodes"]:
        node = dict(node)
        graph.add_node(node.pop("id"), **node)
    for kind, key in (("edge", "edges"), ("class_link", "class_links")):
        for edge in document[key]:
            edge = dict(edge)
            graph.add_edge(edge.pop("source"), edge.pop("target"), kind=kind, **edge)
    return graph


def write_json(graph: nx.DiGraph, path: str | Path, **extra) -> Path:
    """Write ``circuit.json``; ``extra`` top-level fields (e.g. faithfulness trials) are added."""
    path = Path(path)
    document = circuit_to_dict(graph)
    document.update(extra)
    path.write_text(json.dumps(document, indent=1))
    return path


def read_json(path: str | Path) -> nx.DiGraph:
    """Read a circuit written by :func:`write_json`."""
    return circuit_from_dict(json.loads(Path(path).read_text()))


def write_graphml(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write GraphML (non-scalar graph attributes JSON-encoded)."""
    path = Path(path)
    copy = graph.copy()
    encoded = [key for key, value in graph.graph.items() if isinstance(value, (list, tuple, dict))]
    for key in encoded:
        copy.graph[key] = json.dumps(graph.graph[key])
    copy.graph["json_attributes"] = ",".join(encoded)
    nx.write_graphml(copy, path)
    return path


def read_graphml(path: str | Path) -> nx.DiGraph:
    """Read a circuit written by :func:`write_graphml`."""
    graph = nx.read_graphml(path)
    for key in ("node_default", "edge_default"):  # added by networkx's reader
        graph.graph.pop(key, None)
    encoded = graph.graph.pop("json_attributes", "")
    for key in filter(None, encoded.split(",")):
        graph.graph[key] = json.loads(graph.graph[key])
    return nx.DiGraph(graph)
