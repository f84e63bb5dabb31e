"""A final ``wandb.Table`` of per-image validation (or test) results."""

from __future__ import annotations

import lightning as L

from actmatch.callbacks.base import WandbCallback
from actmatch.callbacks.gather import gather_objects
from actmatch.callbacks.masks import mask_panel
from actmatch.callbacks.metrics import mask_precision, pointing_hits

__all__ = ["ResultsTable"]


class ResultsTable(WandbCallback):
    """Collect one row per image of the last validation epoch (and of ``test``) and log it as a
    ``wandb.Table`` under ``<stage>/results`` when fit / validate / test ends (rank zero).

    Columns: index, label, class, confidence_original, confidence_explanation,
    confidence_delta, label_kept, mask_area, and ``mask_precision`` / ``pointing`` when the
    batch has an ``evidence_mask``; with ``panels`` an original | mask | explanation image.
    Under DDP every rank collects the rows of its share of the data and rank zero logs them
    all (rank 0's first, then rank 1's, ...; ``index`` numbers the merged rows).

    Args:
        max_rows: rows kept per stage (per rank while collecting, in all after merging).
        panels: add the image panel column.
        stages: ``val`` and/or ``test``.
    """

    def __init__(self, max_rows: int = 500, panels: bool = True, stages: list[str] | tuple[str, ...] = ("val", "test")) -> None:
        super().__init__()
        self.stages = self.check_stages(stages)
        self.max_rows, self.panels = max_rows, panels
        self.rows: dict[str, list[list]] = {}

    def add_rows(self, trainer, pl_module, outputs, batch, stage: str) -> None:
        if stage not in self.stages or not isinstance(outputs, dict) or "masks" not in outputs:
            return
        rows = self.rows.setdefault(stage, [])
        names = getattr(getattr(pl_module, "classifier", None), "class_name", str)
        truth = batch.get("evidence_mask") if isinstance(batch, dict) else None
        if truth is not None:
            truth = truth.to(outputs["masks"].device)
            precision = mask_precision(outputs["masks"], truth).tolist()
            pointing = pointing_hits(outputs["masks"], truth).tolist()
        for i in range(outputs["masks"].shape[0]):
            if len(rows) >= self.max_rows:
                return
            label = int(outputs["target"][i])
            p_x, p_e = float(outputs["confidence_original"][i]), float(outputs["confidence_explanation"][i])
            row = [
                len(rows),
                label,
                names(label),
                p_x,
                p_e,
                p_e - p_x,
                bool(outputs["label_kept"][i]),
                float(outputs["mask_area"][i]),
            ]
            if truth is not None:
                row += [precision[i], bool(pointing[i])]
            if self.panels:
                row.append(mask_panel(outputs["images"][i], outputs["masks"][i], outputs["explanations"][i])[0])
            rows.append(row)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.rows.pop("val", None)  # keep the last epoch only

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.add_rows(trainer, pl_module, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.add_rows(trainer, pl_module, outputs, batch, "test")

    def flush(self, trainer: L.Trainer, stage: str) -> None:
        """Merge the stage's rows of every rank (a collective: all ranks call it) and log them."""
        local = self.rows.pop(stage, [])
        rows = [row for rank_rows in gather_objects(local) for row in rank_rows][: self.max_rows]
        if not rows or not trainer.is_global_zero:
            return
        for index, row in enumerate(rows):
            row[0] = index
        self.log_table(trainer, stage, rows)

    def log_table(self, trainer: L.Trainer, stage: str, rows: list[list]) -> None:
        """Log the merged rows as ``<stage>/results`` (rank zero; override to send them elsewhere)."""
        logger = self.wandb_logger(trainer)
        if logger is None:
            return
        import wandb

        columns = [
            "index",
            "label",
            "class",
            "confidence_original",
            "confidence_explanation",
            "confidence_delta",
            "label_kept",
            "mask_area",
        ]
        width = len(rows[0]) - (1 if self.panels else 0)
        if width > len(columns):
            columns += ["mask_precision", "pointing"]
        if self.panels:
            columns.append("panel")
            rows = [row[:-1] + [wandb.Image(row[-1])] for row in rows]
        table = wandb.Table(columns=columns, data=rows)  # type: ignore[arg-type]  # wandb annotates columns as the invariant list[str | int]
        logger.log_metrics({f"{stage}/results": table}, step=trainer.global_step)  # type: ignore[dict-item]  # Lightning types values as float; WandbLogger logs wandb media too

    def on_fit_end(self, trainer, pl_module) -> None:
        self.flush(trainer, "val")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self.flush(trainer, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self.flush(trainer, "test")
