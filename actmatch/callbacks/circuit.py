"""Log the circuit behind the first validation explanation to W&B: its drawing and an edge table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from actmatch.callbacks.base import WandbCallback
from actmatch.explainers.circuits import CircuitReader, circuit_taps, draw_circuit

if TYPE_CHECKING:
    from actmatch.explainers.module import ActMatchExplainer

__all__ = ["CircuitGraphs", "EDGE_COLUMNS", "edge_rows"]

EDGE_COLUMNS = [
    "source",
    "target",
    "source_layer",
    "source_channel",
    "target_layer",
    "target_channel",
    "score",
    "kind",
    "scoring",
]


def edge_rows(graph, max_rows: int | None = None) -> list[list]:
    """Edges and class links of a circuit as table rows (:data:`EDGE_COLUMNS`), highest score first."""
    rows = []
    for u, v, data in graph.edges(data=True):
        su, sv = graph.nodes[u], graph.nodes[v]
        rows.append([u, v, su["layer"], su["channel"], sv["layer"], sv["channel"], data["score"], data["kind"], data["scoring"]])
    rows.sort(key=lambda row: -row[6])
    return rows[:max_rows] if max_rows else rows


def _figure_array(figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


class CircuitGraphs(WandbCallback):
    """On the first validation batch of every ``every_n_epochs`` epochs, read out the circuit of the
    first explanation in the batch and log ``val/circuit`` (``wandb.Image`` of the layered
    drawing) and ``val/circuit_edges`` (``wandb.Table`` of the strongest edges), on rank zero only.

    Reads ``images``/``explanations``/``masks`` and ``target`` from what the module's
    ``validation_step`` returns (the explanation e = m ⊙ x + (1 − m) ⊙ fill is taken as
    returned; with only ``masks`` it is rebuilt with the module's fill). A no-op, warned once,
    with loggers other than :class:`~lightning.pytorch.loggers.WandbLogger`.

    Args:
        every_n_epochs: epochs between two logs.
        k: channels per layer (int, fraction or per-layer mapping).
        scoring: edge scoring (``gradient`` works for any backbone; ``weight``; ``auto``).
        ablation: ablation of the faithfulness test (``zero`` or ``mean``).
        layers: circuit layers or a preset (default: ``blocks``, else stages, else the module's taps).
        max_edges: rows of the edge table.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        k: int | float = 0.1,
        scoring: str = "gradient",
        ablation: str = "zero",
        layers: Sequence[str] | None = None,
        max_edges: int = 500,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or max_edges < 1:
            raise ValueError(f"every_n_epochs and max_edges must be >= 1, got {every_n_epochs}, {max_edges}")
        self.every_n_epochs, self.k, self.scoring, self.ablation = every_n_epochs, k, scoring, ablation
        self.layers, self.max_edges = layers, max_edges

    def _explanation(self, pl_module: ActMatchExplainer, outputs: dict) -> torch.Tensor:
        if "explanations" in outputs:
            return outputs["explanations"][:1]
        from actmatch.explainers.backgrounds import make_fill

        images, masks = outputs["images"][:1], outputs["masks"][:1]
        fill = make_fill(images, pl_module.fill, pl_module.classifier.data_config["mean"])
        return masks * images + (1 - masks) * fill

    def log_circuit(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs) -> None:
        """Read out, draw and log the circuit of the first explanation in ``outputs``."""
        if not trainer.is_global_zero or not isinstance(outputs, dict) or not {"images", "masks"} <= set(outputs):
            return
        logger = self.wandb_logger(trainer)
        if logger is None:
            return
        import wandb

        with torch.inference_mode(False):  # Lightning validates in inference mode; gradient scoring needs autograd
            explainer = cast("ActMatchExplainer", pl_module)  # the module this callback serves
            explanation = self._explanation(explainer, outputs).detach().clone()
            label = int(outputs["target"][0]) if "target" in outputs else None
            layers = circuit_taps(explainer.classifier, self.layers, explainer.taps)
            reader = CircuitReader(explainer.classifier, layers, k=self.k, scoring=self.scoring, ablation=self.ablation)
            graph = reader.read(explanation, label=label)
        figure = draw_circuit(graph)
        caption = (
            f"{graph.graph['label_name']}: circuit keeps label {graph.graph['label_kept']} (p={graph.graph['confidence']:.2f})"
        )
        table = wandb.Table(columns=EDGE_COLUMNS, data=edge_rows(graph, self.max_edges))  # type: ignore[arg-type]  # wandb annotates columns as the invariant list[str | int]
        logger.log_metrics(
            {"val/circuit": wandb.Image(_figure_array(figure), caption=caption), "val/circuit_edges": table},  # type: ignore[dict-item]  # Lightning types values as float; WandbLogger logs wandb media too
            step=trainer.global_step,
        )

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self.log_circuit(trainer, pl_module, outputs)
