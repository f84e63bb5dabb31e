"""ResumableThroughputMonitor: train/samples and train/time go on across a resume from last.ckpt."""

from __future__ import annotations

import csv

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from actmatch.callbacks import EpochTable, ResumableThroughputMonitor
from actmatch.explainers.module import batch_size


class Batches(BoringModel):
    """A linear layer on random tensors: 3 training batches of 4 per epoch (with ``limit_train_batches=3``)."""

    flops_per_batch = None  # as ActMatchExplainer: the monitor counts no FLOPs and does not warn

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 64), batch_size=4)


def _fit(tmp_path, monitor: ThroughputMonitor, max_epochs: int, ckpt_path=None) -> list[dict[str, str]]:
    """One ``fit`` to ``max_epochs`` under ``tmp_path/run`` (resumed from ``ckpt_path``); the rows of epochs.csv."""
    run = tmp_path / "run"
    table = EpochTable(prefixes=("train/time", "train/samples"))
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, log_every_n_steps=1,
                        logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True),
                                                      monitor, table])  # fmt: skip
    trainer.fit(Batches(), ckpt_path=ckpt_path)
    with (run / "epochs.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_resumed_run_counts_samples_and_time_from_the_runs_start(tmp_path):
    """Epoch 0 in one process, epoch 1 resumed from last.ckpt in another: 2 epochs x 3 batches x 4 = 24 samples at
    the end, and the training time goes on growing from where the first process left it."""
    first = _fit(tmp_path, ResumableThroughputMonitor(batch_size_fn=batch_size), max_epochs=1)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["callbacks"]["ResumableThroughputMonitor"]
    assert (saved["samples"], saved["batches"]) == (12, 3) and saved["time"] == float(first[0]["train/time"]) > 0
    rows = _fit(tmp_path, ResumableThroughputMonitor(batch_size_fn=batch_size), max_epochs=2, ckpt_path=last)
    assert [(r["epoch"], float(r["train/samples"])) for r in rows] == [("0", 12.0), ("1", 24.0)]
    assert float(rows[1]["train/time"]) > float(rows[0]["train/time"]) == saved["time"]


def test_lightnings_monitor_starts_over_on_a_resume_and_a_run_without_one_is_the_same(tmp_path):
    """The defect the subclass fixes (Lightning's monitor logs 12 again after the resume), and in one process with
    no resume the subclass logs what Lightning's does: 12 and 24."""
    _fit(tmp_path / "plain", ThroughputMonitor(batch_size_fn=batch_size), max_epochs=1)
    last = tmp_path / "plain" / "run" / "checkpoints" / "last.ckpt"
    rows = _fit(tmp_path / "plain", ThroughputMonitor(batch_size_fn=batch_size), max_epochs=2, ckpt_path=last)
    assert [float(r["train/samples"]) for r in rows] == [12.0, 12.0]
    for monitor in (ThroughputMonitor(batch_size_fn=batch_size), ResumableThroughputMonitor(batch_size_fn=batch_size)):
        rows = _fit(tmp_path / type(monitor).__name__, monitor, max_epochs=2)
        assert [float(r["train/samples"]) for r in rows] == [12.0, 24.0]
        assert 0 < float(rows[0]["train/time"]) < float(rows[1]["train/time"])
