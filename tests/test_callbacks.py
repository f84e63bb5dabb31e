"""Callbacks: evidence metrics, no-op under other loggers, and smoke.yaml logged to W&B offline."""

from __future__ import annotations

import csv
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from actmatch.callbacks import EvidenceMetrics, ExplanationMetrics, MaskImages, ResultsTable
from actmatch.callbacks.masks import mask_panel
from actmatch.callbacks.metrics import mask_precision, mask_recall, pointing_hits
from lightning_helpers import history_keys, run_cli, wandb_records


def _square(size: int, y: int, x: int, side: int) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., y : y + side, x : x + side] = 1
    return m


def test_mask_precision_recall_and_pointing():
    truth = _square(32, 4, 4, 8)  # object in the top-left
    inside = _square(32, 6, 6, 4)
    half = _square(32, 4, 8, 8)  # half on the object, half off
    far = _square(32, 20, 20, 8)
    empty = torch.zeros(1, 1, 32, 32)
    assert mask_precision(inside, truth).item() == 1.0
    assert mask_precision(half, truth).item() == pytest.approx(0.5)
    assert mask_recall(inside, truth).item() == pytest.approx(16 / 64)
    assert mask_precision(empty, truth).item() == 0.0
    assert pointing_hits(torch.cat([inside, far, empty]), truth.expand(3, -1, -1, -1)).tolist() == [True, False, False]


def test_mask_panel_shapes_and_overlay():
    image, mask = torch.rand(3, 16, 20), torch.zeros(1, 16, 20)
    mask[:, 2:7, 2:7] = 1
    panel, overlay = mask_panel(image, mask, image * mask)
    assert panel.shape == (16, 60, 3) and panel.dtype.name == "uint8"
    assert overlay[:, :20].sum() == 25 and overlay[:, 20:].sum() == 0


def _outputs(b: int = 2, size: int = 16) -> dict:
    return {
        "images": torch.rand(b, 3, size, size),
        "masks": _square(size, 0, 0, 4).expand(b, -1, -1, -1),
        "explanations": torch.rand(b, 3, size, size),
        "target": torch.zeros(b, dtype=torch.long),
        "confidence_original": torch.full((b,), 0.9),
        "confidence_explanation": torch.full((b,), 0.7),
        "label_kept": torch.ones(b, dtype=torch.bool),
        "mask_area": torch.full((b,), 1 / 16),
        "terms": {"area": torch.full((b,), 1 / 16)},
        "loss": torch.tensor(1.0),
    }


def test_wandb_callbacks_are_no_ops_with_one_warning_under_csv(tmp_path):
    trainer = L.Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    module = L.LightningModule()
    for callback in (MaskImages(every_n_steps=1), ResultsTable()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                if isinstance(callback, MaskImages):
                    callback.on_train_batch_end(trainer, module, _outputs(), {}, 0)
                else:
                    callback.add_rows(trainer, module, _outputs(), {}, "val")
                    callback.flush(trainer, "val")
        messages = [str(w.message) for w in caught if "Weights & Biases" in str(w.message)]
        assert len(messages) == 1 and "CSVLogger" in messages[0]


def test_callbacks_reject_unknown_stages():
    for cls in (MaskImages, ResultsTable, ExplanationMetrics, EvidenceMetrics):
        with pytest.raises(ValueError, match="unknown stages"):
            cls(stages=["training"])


def test_smoke_yaml_logs_images_metrics_and_config_to_wandb_offline(tmp_path):
    """The acceptance test: smoke.yaml with W&B offline; images and metric keys are in the run."""
    save_dir = tmp_path / "wb"
    proc = run_cli(
        [
            "fit",
            "--config",
            "experiments/smoke.yaml",
            "--trainer.logger.init_args.save_dir",
            str(save_dir),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {save_dir}/wandb"
    files = runs[0] / "files"
    for stage in ("train", "val"):
        assert list((files / "media" / "images" / stage).glob("masks_*.png")), f"no {stage}/masks images"
    assert list((files / "media" / "table" / "val").glob("results_*.table.json")), "no val/results table"
    keys = history_keys(runs[0])
    expected = {
        "train/loss_step",
        "train/mask_area_step",
        "train/label_kept_step",
        "train/confidence_delta_step",
        "train/area_step",
        "train/activation_matching_step",
        "train/robustness_step",
        "train/epoch/mask_area",
        "train/epoch/label_kept",
        "train/epoch/confidence_delta",
        "train/epoch/area",
        "val/mask_area",
        "val/label_kept",
        "val/confidence_delta",
        "val/epoch/mask_area",
        "val/mask_precision",
        "val/mask_recall",
        "val/pointing",
        "train/masks/_type",
        "val/masks/_type",
        "val/results/_type",
        "train/hist/mask_area/_type",
    }
    assert expected <= keys, f"missing: {sorted(expected - keys)}"
    config = (files / "config.yaml").read_text()
    assert "actmatch.explainers.losses.Area" in config and "SyntheticDataModule" in config
    assert any(r.WhichOneof("record_type") == "exit" for r in wandb_records(runs[0]))  # the run finished


def test_epoch_table_writes_one_row_per_validation_epoch(tmp_path):
    """A module that logs val/score = 10 · epoch + 1 (and val/late from epoch 1 on) over 3 epochs: epochs.csv beside
    the run's checkpoints/ has rows 0, 1, 2 with those values, and val/late empty (NaN) in the first."""
    import csv
    import math

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    from actmatch.callbacks import EpochTable

    class Logged(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val/score", 10.0 * self.current_epoch + 1)
            if self.current_epoch:
                self.log("val/late", float(self.current_epoch))
            self.log("train_only", 5.0)  # not under val/: not written
            return super().validation_step(batch, batch_idx)

    checkpoints = tmp_path / "run" / "checkpoints"
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=2, logger=False, enable_progress_bar=False,
                        callbacks=[ModelCheckpoint(dirpath=checkpoints), EpochTable()], accelerator="cpu")  # fmt: skip
    trainer.fit(Logged())
    with (tmp_path / "run" / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "val/score", "val/late"]
    assert [(r["epoch"], float(r["val/score"])) for r in rows] == [("0", 1.0), ("1", 11.0), ("2", 21.0)]
    assert math.isnan(float(rows[0]["val/late"])) and float(rows[2]["val/late"]) == 2.0
    assert [int(r["step"]) for r in rows] == [2, 4, 6]


def test_epoch_table_records_the_training_throughput_of_lightnings_monitor(tmp_path):
    """ThroughputMonitor (Lightning's) with the recipes' ``batch_size``: after epoch e, 3 batches of 4 samples per
    epoch give train/samples = 12 (e + 1), and train/time (validation excluded) grows; the prefixes pick those two
    names and no other train/ metric."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from actmatch.callbacks import EpochTable
    from actmatch.explainers.module import batch_size

    class Batches(BoringModel):
        def train_dataloader(self):
            return DataLoader(RandomDataset(32, 64), batch_size=4)

    monitor = ThroughputMonitor(batch_size_fn=batch_size)
    table = EpochTable(prefixes=("val/", "train/time", "train/samples"))
    trainer = L.Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=1, log_every_n_steps=1,
                        logger=CSVLogger(tmp_path), enable_progress_bar=False, accelerator="cpu",
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints"), monitor, table])  # fmt: skip
    with pytest.warns(UserWarning, match="flops_per_batch"):
        trainer.fit(Batches())
    with (tmp_path / "run" / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "train/samples", "train/time"]
    assert [float(r["train/samples"]) for r in rows] == [12.0, 24.0, 36.0]
    times = [float(r["train/time"]) for r in rows]
    assert 0 < times[0] < times[1] < times[2]
