"""Every validation epoch's metrics as one row of a CSV file, readable without a logger's tools."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L

__all__ = ["EpochTable"]


class EpochTable(L.Callback):
    """Writes ``epochs.csv``: one row per validation epoch, ``epoch``, ``step`` and every scalar the run has
    logged whose name starts with one of ``prefixes`` when validation ends (``trainer.callback_metrics``, the
    values ``ModelCheckpoint`` reads, and ``trainer.logged_metrics``, where ``ResumableThroughputMonitor``
    (Lightning's ``ThroughputMonitor`` carried across a resume) puts ``train/time`` and ``train/samples``: the
    run's training seconds without validation, and images seen). The file is rewritten each epoch with the
    union of the columns, so a metric that first appears later still gets its column; a resumed run
    (``--ckpt_path``) keeps the rows of the epochs before the one it resumes at.

    Args:
        path: the file; default ``epochs.csv`` beside the run's ``checkpoints/`` folder (the first
            ``ModelCheckpoint``'s directory), else in ``trainer.default_root_dir``.
        prefixes: which logged names to keep.
    """

    def __init__(self, path: str | None = None, prefixes: tuple[str, ...] | list[str] = ("val/",)) -> None:
        self.path, self.prefixes = path, tuple(prefixes)
        self.rows: list[dict] = []

    def file(self, trainer: L.Trainer) -> Path:
        if self.path is not None:
            return Path(self.path)
        checkpoint = trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        return (Path(dirpath).parent if dirpath else Path(trainer.default_root_dir)) / "epochs.csv"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        path = self.file(trainer)
        if not self.rows and path.is_file():  # resumed: the earlier epochs' rows stay
            with path.open(newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < trainer.current_epoch]
        row: dict = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for name, value in sorted({**trainer.logged_metrics, **trainer.callback_metrics}.items()):
            if name.startswith(self.prefixes) and getattr(value, "numel", lambda: 1)() == 1:
                row[name] = float(value)
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval=math.nan)
            writer.writeheader()
            writer.writerows(self.rows)
