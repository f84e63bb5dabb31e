"""The circuit graph: nodes, scored edges, class links and faithfulness, as a networkx DiGraph.

Node ids are ``"<layer>:<channel>"`` for channels and ``"class:<index>"`` for classes. Node
attributes: ``kind`` (channel | class), ``layer``, ``layer_index`` (column), ``channel``,
``activation`` (mean activation; the logit for classes), ``energy`` (mean |activation|),
``rank`` (0 = first chosen in its layer by the reader's ranking); classes also ``name`` and
``probability``. Edge
attributes: ``kind`` (edge | class_link), ``score``, ``scoring`` (weight | gradient | fc).
Graph attributes: backbone, input, scoring, ablation, rank_by, layers, channels, counts, fraction, label,
label_name, label_kept, confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import nn

from actmatch.explainers.circuits.ablation import Ablation, Faithfulness, ablated_logits, faithfulness, make_ablation
from actmatch.explainers.circuits.attribution import attribution_select, channel_attribution
from actmatch.explainers.circuits.edges import EdgeScoring, make_scoring
from actmatch.explainers.circuits.nodes import (
    PRE_LOGITS,
    Activations,
    KSpec,
    circuit_taps,
    find_head,
    read_activations,
    resolve_counts,
    sites,
    top_channels,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "RANKINGS",
    "CircuitReader",
    "SearchResult",
    "read_circuit",
    "circuit_channels",
    "compare_circuits",
    "node_id",
]

DEFAULT_FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Per-layer channel fractions tried by :meth:`CircuitReader.search` (grid)."""

RANKINGS = ("attribution", "energy")
"""How a layer's circuit channels are chosen: ``attribution`` (what the label needs, see
:mod:`~actmatch.explainers.circuits.attribution`) or ``energy`` (the most energetic channels,
the paper's definition)."""


def node_id(layer: str, channel: int) -> str:
    """Graph id of a channel node (``layer:channel``) or a class node (``class:index``)."""
    return f"{layer}:{channel}"


@dataclass
class SearchResult:
    """Smallest per-layer channel fraction whose circuit keeps the label.

    Attributes:
        fraction: the smallest fraction found, None when even the full model loses the label.
        trials: (fraction, label kept, confidence) for every fraction tried, in order tried.
    """

    fraction: float | None
    trials: list[tuple[float, bool, float]] = field(default_factory=list)

    @property
    def label_kept(self) -> bool:
        return self.fraction is not None


class CircuitReader:
    """Reads out, scores and tests the channel circuit of one image at a time.

    Args:
        classifier: a FrozenClassifier (images in [0, 1]) or any model taking the images as given.
        layers: tapped layers: names, a preset (``blocks`` or ``stages``) or None (``blocks``: the
            hidden channels inside every block where the model has such blocks, else its stages;
            see :func:`~actmatch.explainers.circuits.nodes.circuit_taps`). Sorted into forward
            order on first use. Unknown names raise an error listing the valid ones.
        k: channels per layer (int, fraction or per-layer mapping; see
            :func:`~actmatch.explainers.circuits.nodes.resolve_counts`). The pre-logits layer takes
            the value given for it, else the global k (an int k larger than its feature count
            keeps all features).
        scoring: ``weight``, ``gradient``, ``auto`` or an :class:`EdgeScoring`.
        ablation: ``zero``, ``mean`` or an :class:`Ablation` (faithfulness test).
        rank: ``attribution`` (default: the channels whose ablation costs the label most, in two
            steps) or ``energy`` (the k most energetic channels, the paper's nodes).
        top_classes: class nodes: the label plus the next top classes up to this many.
        head: the linear classifier head (default: timm's ``get_classifier()``).
        max_in_edges: keep only each node's strongest incoming edges (None: all k_s × k_t edges;
            large circuits otherwise have hundreds of thousands of edges).
    """

    def __init__(
        self,
        classifier: nn.Module,
        layers: Sequence[str] | None = None,
        k: KSpec = 0.1,
        scoring: str | EdgeScoring = "gradient",
        ablation: str | Ablation = "zero",
        top_classes: int = 1,
        head: str | None = None,
        max_in_edges: int | None = 16,
        rank: str = "attribution",
    ) -> None:
        if rank not in RANKINGS:
            raise ValueError(f"unknown channel ranking {rank!r}; choose one of {list(RANKINGS)}")
        self.rank = rank
        if max_in_edges is not None and max_in_edges < 1:
            raise ValueError(f"max_in_edges must be >= 1 or None, got {max_in_edges}")
        self.max_in_edges = max_in_edges
        self.classifier = classifier
        self.layers = circuit_taps(classifier, layers)
        self.head = find_head(classifier, head)
        self.k = k
        self.scoring = make_scoring(scoring)
        self.ablation = make_ablation(ablation)
        if top_classes < 1:
            raise ValueError(f"top_classes must be >= 1, got {top_classes}")
        self.top_classes = top_classes
        self.chunk = 4  # images per batched ablation forward pass

    @property
    def device(self) -> torch.device:
        buffers = list(self.classifier.buffers()) + list(self.classifier.parameters())
        return buffers[0].device if buffers else torch.device("cpu")

    # ------------------------------------------------------------------ nodes
    def activations(self, image: torch.Tensor) -> Activations:
        """One forward pass of ``image`` (1, 3, H, W); fixes the forward order of the taps."""
        acts = read_activations(self.classifier, image.to(self.device), self.layers, self.head)
        self.layers = acts.layers[:-1]
        return acts

    def counts(self, acts: Activations, k: KSpec | None = None) -> dict[str, int]:
        """Channels kept per layer (taps and pre-logits)."""
        k = self.k if k is None else k
        channels = {name: acts.channels(name) for name in acts.layers}
        if not isinstance(k, Mapping):
            spec = {name: k for name in self.layers}
            spec[PRE_LOGITS] = k if isinstance(k, float) else min(k, acts.channels(PRE_LOGITS))
            k = spec
        elif PRE_LOGITS not in k:
            fractions = [v for v in k.values() if isinstance(v, float)]
            k = {**k, PRE_LOGITS: max(fractions) if fractions else 1.0}
        return resolve_counts(k, channels)

    def select(
        self, acts: Activations, k: KSpec | None = None, image: torch.Tensor | None = None, label: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tap layer -> indices of the circuit's channels, first chosen first.

        ``attribution`` ranking needs the ``image`` the activations came from; ``label`` defaults
        to its top-1.
        """
        counts = self.counts(acts, k)
        taps = {name: counts[name] for name in self.layers}
        if self.rank == "energy":
            return {name: top_channels(acts.energy[name], count) for name, count in taps.items()}
        if image is None:
            raise ValueError("attribution ranking needs the image: pass image=..., or use rank='energy'")
        label = int(acts.need_logits().argmax()) if label is None else int(label)
        image = image.to(self.device)
        if label not in acts.attribution:  # the full-model step is shared by every k
            acts.attribution[label] = channel_attribution(self.classifier, image, self.layers, label, self.ablation)
        return attribution_select(self.classifier, image, taps, label, self.ablation, acts.attribution[label])

    def keep(
        self, acts: Activations, k: KSpec | None = None, image: torch.Tensor | None = None, label: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tap layer -> (C,) bool mask of the circuit's channels (see :meth:`select`)."""
        return _as_masks(acts, self.select(acts, k, image, label))

    def random_control(
        self, image: torch.Tensor, k: KSpec | None = None, label: int | None = None, draws: int = 8, seed: int = 0
    ) -> float:
        """Share of ``draws`` random circuits of the same per-layer sizes that keep ``label``.

        The control for a faithfulness claim: a circuit means something only where random
        channels of the same count do not keep the label too.
        """
        image = image.to(self.device)
        acts = self.activations(image)
        label = int(acts.need_logits().argmax()) if label is None else int(label)
        counts = self.counts(acts, k)
        generator = torch.Generator().manual_seed(seed)

        def draw() -> dict[str, torch.Tensor]:
            return {name: torch.randperm(acts.channels(name), generator=generator)[: counts[name]] for name in self.layers}

        keeps = [_as_masks(acts, draw()) for _ in range(draws)]
        logits = ablated_logits(self.classifier, image, keeps, self.ablation, self.chunk)
        return float((logits.argmax(-1) == label).float().mean())

    # ------------------------------------------------------------------ faithfulness
    def faithfulness(
        self,
        image: torch.Tensor,
        k: KSpec | None = None,
        label: int | None = None,
        acts: Activations | None = None,
        keep: dict[str, torch.Tensor] | None = None,
    ) -> Faithfulness:
        """Classify ``image`` with every tapped channel outside the circuit ablated.

        ``keep``: the circuit's channel masks, if already chosen (else chosen here at ``k``).
        """
        acts = acts or self.activations(image)
        keep = self.keep(acts, k, image, label) if keep is None else keep
        return faithfulness(
            self.classifier, image.to(self.device), keep, label, self.ablation, acts.need_logits().to(self.device)
        )

    def search(
        self,
        image: torch.Tensor,
        label: int | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        method: str = "grid",
        tolerance: float = 0.005,
    ) -> SearchResult:
        """Smallest per-layer fraction whose circuit keeps ``label`` (default: the image's top-1).

        ``grid`` tries ``fractions`` in increasing order and stops at the first that keeps the
        label (exact on the grid). ``bisect`` assumes that keeping more channels never loses the
        label and halves [0, 1] down to ``tolerance`` (fewer forward passes, may miss
        non-monotone cases).
        """
        if method not in ("grid", "bisect"):
            raise ValueError(f"unknown search method {method!r}; choose 'grid' or 'bisect'")
        image = image.to(self.device)
        acts = self.activations(image)
        label = int(acts.need_logits().argmax()) if label is None else int(label)
        trials: list[tuple[float, bool, float]] = []

        def test(fraction: float) -> bool:
            result = self.faithfulness(image, float(fraction), label, acts)
            trials.append((float(fraction), result.label_kept, result.confidence))
            return result.label_kept

        if method == "grid":
            grid = sorted(set(float(f) for f in fractions))
            if not grid or not all(0 < f <= 1 for f in grid):
                raise ValueError(f"fractions must be a non-empty list of values in (0, 1], got {list(fractions)}")
            for start in range(0, len(grid), self.chunk):  # a few fractions per batched forward pass
                part = grid[start : start + self.chunk]
                keeps = [self.keep(acts, f, image, label) for f in part]
                logits = ablated_logits(self.classifier, image, keeps, self.ablation, self.chunk)
                probs = logits.softmax(-1)
                for fraction, row in zip(part, probs):
                    trials.append((fraction, int(row.argmax()) == label, float(row[label])))
                    if trials[-1][1]:
                        return SearchResult(fraction, trials)
            return SearchResult(None, trials)
        if not test(1.0):
            return SearchResult(None, trials)
        low, high = 0.0, 1.0  # low never kept (or untested), high kept
        while high - low > tolerance:
            middle = (low + high) / 2
            if test(middle):
                high = middle
            else:
                low = middle
        return SearchResult(high, trials)

    # ------------------------------------------------------------------ graph
    def read(
        self,
        image: torch.Tensor,
        k: KSpec | None = None,
        label: int | None = None,
        input_name: str = "explanation",
        test: bool = True,
    ) -> nx.DiGraph:
        """The circuit of ``image`` (1, 3, H, W) as a DiGraph (see the module docstring).

        Args:
            k: channels per layer (default: the reader's ``k``).
            label: the class to link and to test (default: the image's top-1).
            input_name: recorded as the graph's ``input`` (e.g. explanation or original).
            test: run the ablation test and record ``label_kept`` / ``confidence``.
        """
        image = image.to(self.device)
        acts = self.activations(image)
        k = self.k if k is None else k
        counts = self.counts(acts, k)
        label = int(acts.need_logits().argmax()) if label is None else int(label)
        names = getattr(self.classifier, "class_names", None) or []
        graph = nx.DiGraph(
            backbone=str(getattr(self.classifier, "name", type(self.classifier).__name__)),
            input=input_name,
            scoring=self.scoring.name,
            ablation=self.ablation.name,
            rank_by=self.rank,
            layers=list(acts.layers),
            channels={name: acts.channels(name) for name in acts.layers},
            counts=counts,
            label=label,
            label_name=names[label] if label < len(names) else str(label),
        )
        if isinstance(k, float):
            graph.graph["fraction"] = float(k)
        kept = self.select(acts, k, image, label)
        kept[PRE_LOGITS] = top_channels(acts.energy[PRE_LOGITS], counts[PRE_LOGITS])
        for index, layer in enumerate(acts.layers):
            for rank, channel in enumerate(kept[layer].tolist()):
                graph.add_node(
                    node_id(layer, channel),
                    kind="channel",
                    layer=layer,
                    layer_index=index,
                    channel=channel,
                    activation=float(acts.mean[layer][channel]),
                    energy=float(acts.energy[layer][channel]),
                    rank=rank,
                )
        where = sites(self.classifier, acts.layers, self.head)
        for source, target in zip(acts.layers[:-1], acts.layers[1:]):
            used = self.scoring.used(self.classifier, image, where[source], where[target])
            scores = self.scoring.score(self.classifier, image, where[source], where[target], acts, kept[source], kept[target])
            if self.max_in_edges is not None and scores.shape[0] > self.max_in_edges:  # strongest inputs per target
                top = scores.topk(self.max_in_edges, dim=0).indices  # (n, k_t)
                scores = torch.zeros_like(scores).scatter(0, top, scores.gather(0, top))
            sources_ = kept[source].tolist()
            targets_ = kept[target].tolist()
            rows, cols = torch.nonzero(scores > 0, as_tuple=True)
            graph.add_edges_from(
                (
                    node_id(source, sources_[a]),
                    node_id(target, targets_[b]),
                    {"kind": "edge", "score": float(scores[a, b]), "scoring": used},
                )
                for a, b in zip(rows.tolist(), cols.tolist())
            )
        self._class_links(graph, acts, kept[PRE_LOGITS], label, names)
        if test:
            keep = _as_masks(acts, {name: kept[name] for name in self.layers})
            result = self.faithfulness(image, k, label, acts, keep=keep)
            graph.graph.update(
                label_kept=result.label_kept,
                confidence=result.confidence,
                label_ablated=result.label_ablated,
                confidence_full=result.confidence_full,
            )
        return graph

    def _class_links(self, graph: nx.DiGraph, acts: Activations, features: torch.Tensor, label: int, names: list[str]) -> None:
        head = dict(getattr(self.classifier, "model", self.classifier).named_modules())[self.head]
        weight = head.weight.detach().abs().cpu()  # (K, F)
        probs = acts.probs
        classes = [label] + [c for c in torch.argsort(probs, descending=True).tolist() if c != label][: self.top_classes - 1]
        index = len(acts.layers)
        energy = acts.energy[PRE_LOGITS]
        for c in classes:
            graph.add_node(
                node_id("class", c),
                kind="class",
                layer="classes",
                layer_index=index,
                channel=c,
                activation=float(acts.need_logits()[c]),
                energy=float(probs[c]),
                rank=classes.index(c),
                name=names[c] if c < len(names) else str(c),
                probability=float(probs[c]),
            )
            for i in features.tolist():
                score = float(weight[c, i] * energy[i])
                if score > 0:
                    graph.add_edge(node_id(PRE_LOGITS, i), node_id("class", c), kind="class_link", score=score, scoring="fc")


def _as_masks(acts: Activations, chosen: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer -> (C,) bool mask from layer -> indices of the chosen channels."""
    masks = {}
    for name, indices in chosen.items():
        mask = torch.zeros(acts.channels(name), dtype=torch.bool)
        mask[indices] = True
        masks[name] = mask
    return masks


def read_circuit(classifier: nn.Module, image: torch.Tensor, **kwargs) -> nx.DiGraph:
    """Shortcut: ``CircuitReader(classifier, **reader_kwargs).read(image, k=..., label=...)``."""
    read_kwargs = {key: kwargs.pop(key) for key in ("label", "input_name", "test") if key in kwargs}
    return CircuitReader(classifier, **kwargs).read(image, **read_kwargs)


def circuit_channels(graph: nx.DiGraph) -> dict[str, list[int]]:
    """Layer -> channels of the circuit (channel nodes only), in rank order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for _, data in graph.nodes(data=True):
        if data.get("kind") == "channel":
            out.setdefault(data["layer"], []).append((data["rank"], data["channel"]))
    return {layer: [c for _, c in sorted(items)] for layer, items in out.items()}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare_circuits(a: nx.DiGraph, b: nx.DiGraph) -> dict:
    """Shared channel nodes and edges of two circuits (e.g. original vs explanation), with Jaccard overlap."""
    nodes_a = {n for n, d in a.nodes(data=True) if d.get("kind") == "channel"}
    nodes_b = {n for n, d in b.nodes(data=True) if d.get("kind") == "channel"}
    edges_a = {(u, v) for u, v, d in a.edges(data=True) if d.get("kind") == "edge"}
    edges_b = {(u, v) for u, v, d in b.edges(data=True) if d.get("kind") == "edge"}
    per_layer = {}
    for layer in dict.fromkeys(list(a.graph.get("layers", [])) + list(b.graph.get("layers", []))):
        la = {n for n in nodes_a if a.nodes[n]["layer"] == layer}
        lb = {n for n in nodes_b if b.nodes[n]["layer"] == layer}
        per_layer[layer] = _jaccard(la, lb)
    return {
        "nodes_a": len(nodes_a),
        "nodes_b": len(nodes_b),
        "shared_nodes": sorted(nodes_a & nodes_b),
        "jaccard_nodes": _jaccard(nodes_a, nodes_b),
        "edges_a": len(edges_a),
        "edges_b": len(edges_b),
        "shared_edges": len(edges_a & edges_b),
        "jaccard_edges": _jaccard(edges_a, edges_b),
        "jaccard_per_layer": per_layer,
    }
