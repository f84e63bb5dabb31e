"""Process-synced epoch metrics of the explanations, and evidence metrics where ground truth exists.

The module already logs per-step values (``train/loss``, ``train/mask_area``, ``train/<term>``,
...) through ``self.log_dict``; its training-epoch values are per process. These callbacks add
what it does not:

* :class:`ExplanationMetrics`: per-image aggregates with torchmetrics, **synced across
  processes** at each epoch end, under ``<stage>/epoch/<name>`` (mask area, label kept,
  confidence delta, original and explanation confidence, the loss and every loss term), and
  per-image histograms of mask area and confidence delta (W&B only).
* :class:`EvidenceMetrics`: where the batch carries a ground-truth mask (synthetic data), mask
  precision, mask recall and pointing accuracy, synced, under ``<stage>/mask_precision``,
  ``<stage>/mask_recall``, ``<stage>/pointing`` (and ``<stage>/<name>_precision``,
  ``<stage>/<name>_pointing`` for other masks, e.g. the decoy object of the shortcut set).

Both read what the module's step returns (and the batch's ground truth); neither recomputes
an explanation. Both log through ``pl_module.log``, so they work with any logger.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torchmetrics import CatMetric, MeanMetric, Metric

from actmatch.callbacks.base import STAGES
from actmatch.explainers.backgrounds import gaussian_blur

__all__ = ["ExplanationMetrics", "EvidenceMetrics", "mask_precision", "mask_recall", "pointing_hits"]


def per_image_values(outputs: dict) -> dict[str, torch.Tensor]:
    """The per-image quantities (B,) in a step's output dict."""
    values = {
        "mask_area": outputs["mask_area"],
        "label_kept": outputs["label_kept"].float(),
        "confidence_delta": outputs["confidence_explanation"] - outputs["confidence_original"],
        "confidence_original": outputs["confidence_original"],
        "confidence_explanation": outputs["confidence_explanation"],
    }
    for name, value in (outputs.get("terms") or {}).items():
        values[name] = value
    return {k: v.detach().float().flatten() for k, v in values.items()}


class _Hooks(L.Callback):
    """Route the three stages' batch and epoch hooks to ``update`` and ``emit``."""

    stages: tuple[str, ...]

    def update(self, trainer, pl_module, outputs, batch, stage: str) -> None:
        raise NotImplementedError

    def emit(self, trainer, pl_module, stage: str) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if "train" in self.stages and isinstance(outputs, dict):
            self.update(trainer, pl_module, outputs, batch, "train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" in self.stages and isinstance(outputs, dict) and not trainer.sanity_checking:
            self.update(trainer, pl_module, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages and isinstance(outputs, dict):
            self.update(trainer, pl_module, outputs, batch, "test")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if "train" in self.stages:
            self.emit(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self.emit(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if "test" in self.stages:
            self.emit(trainer, pl_module, "test")


class _MetricStore:
    """torchmetrics objects created lazily per (stage, name), on the module's device."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.metrics: dict[tuple[str, str], Metric] = {}

    def get(self, stage: str, name: str, device: torch.device):
        key = (stage, name)
        if key not in self.metrics:
            self.metrics[key] = self.factory().to(device)
        return self.metrics[key]

    def pop_stage(self, stage: str) -> dict:
        out = {name: m for (s, name), m in self.metrics.items() if s == stage}
        for name in out:
            del self.metrics[(stage, name)]
        return out


class ExplanationMetrics(_Hooks):
    """Synced per-epoch means of every per-image quantity the step returns.

    Logs ``<stage>/epoch/<name>`` (mask_area, label_kept, confidence_delta,
    confidence_original, confidence_explanation, and each loss term when the step returns
    ``terms``) once per epoch; each is the mean over **all** images of the epoch on all
    processes (torchmetrics ``MeanMetric`` weighted by image, synced at compute). With a W&B
    logger it also logs ``<stage>/hist/mask_area`` and ``<stage>/hist/confidence_delta``.

    Args:
        stages: stages to aggregate.
        histograms: log per-image histograms (W&B only).
    """

    def __init__(self, stages: list[str] | tuple[str, ...] = ("train", "val", "test"), histograms: bool = True) -> None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
        self.stages, self.histograms = tuple(stages), histograms
        self.means = _MetricStore(MeanMetric)
        self.values = _MetricStore(lambda: CatMetric(nan_strategy="ignore"))

    def update(self, trainer, pl_module, outputs, batch, stage: str) -> None:
        for name, value in per_image_values(outputs).items():
            self.means.get(stage, name, pl_module.device).update(value)
            if self.histograms and name in ("mask_area", "confidence_delta"):
                self.values.get(stage, name, pl_module.device).update(value)

    def emit(self, trainer, pl_module, stage: str) -> None:
        means = self.means.pop_stage(stage)
        for name in sorted(means):  # every rank computes: compute() is a collective
            pl_module.log(f"{stage}/epoch/{name}", means[name].compute(), sync_dist=False, rank_zero_only=False)
        values = self.values.pop_stage(stage)
        gathered = {name: values[name].compute() for name in sorted(values)}
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is not None and trainer.is_global_zero and gathered:
            import wandb

            hist = {f"{stage}/hist/{n}": wandb.Histogram(v.float().cpu().numpy()) for n, v in gathered.items() if v.numel()}
            wandb_logger.log_metrics(hist, step=trainer.global_step)  # type: ignore[arg-type]  # Lightning types values as float; WandbLogger logs wandb media too


def mask_precision(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of mask pixels inside the ground truth: Σ m·g / Σ m (0 for an empty mask)."""
    m, g = masks.flatten(1).float(), truth.flatten(1).float()
    return (m * g).sum(1) / m.sum(1).clamp_min(1)


def mask_recall(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of ground-truth pixels the mask keeps: Σ m·g / Σ g."""
    m, g = masks.flatten(1).float(), truth.flatten(1).float()
    return (m * g).sum(1) / g.sum(1).clamp_min(1)


def pointing_hits(masks: torch.Tensor, truth: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """(B,) pointing game: does the densest point of the mask lie in the ground truth?

    The point is the argmax of the mask smoothed by a Gaussian (σ defaults to 1/20 of the
    short side), i.e. the centre of the mask's largest blob; an empty mask misses.
    """
    density = gaussian_blur(masks.float(), sigma).flatten(1)  # (B, H·W)
    point = density.argmax(1)
    hit = truth.flatten(1).gather(1, point[:, None]).squeeze(1) > 0.5
    return hit & (masks.flatten(1).sum(1) > 0)


class EvidenceMetrics(_Hooks):
    """Mask precision, recall and pointing accuracy against ground-truth masks in the batch.

    For each ``batch[key]`` of shape (B, 1, H, W) named in ``keys`` it logs
    ``<stage>/<prefix>precision``, ``<stage>/<prefix>recall`` and ``<stage>/<prefix>pointing``
    (epoch means over all images on all processes); the prefix is empty for ``evidence`` and
    ``<name>_`` otherwise. Batches without the key are skipped.

    Args:
        keys: batch key -> short name, e.g. ``{"evidence_mask": "evidence", "object_mask": "object"}``.
        stages: stages to measure.
    """

    def __init__(self, keys: dict[str, str] | None = None, stages: list[str] | tuple[str, ...] = ("val", "test")) -> None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
        self.keys = dict(keys or {"evidence_mask": "evidence"})
        self.stages = tuple(stages)
        self.means = _MetricStore(MeanMetric)

    def metric_name(self, name: str, quantity: str) -> str:
        prefix = "mask_" if quantity in ("precision", "recall") else ""
        return f"{prefix}{quantity}" if name == "evidence" else f"{name}_{quantity}"

    def update(self, trainer, pl_module, outputs, batch, stage: str) -> None:
        if not isinstance(batch, dict):
            return
        masks = outputs["masks"]  # (B, 1, H, W)
        for key, name in self.keys.items():
            if key not in batch:
                continue
            truth = batch[key].to(masks.device)
            if truth.shape[-2:] != masks.shape[-2:]:
                raise ValueError(f"batch[{key!r}] is {tuple(truth.shape)} but the masks are {tuple(masks.shape)}")
            for quantity, value in (
                ("precision", mask_precision(masks, truth)),
                ("recall", mask_recall(masks, truth)),
                ("pointing", pointing_hits(masks, truth).float()),
            ):
                self.means.get(stage, self.metric_name(name, quantity), pl_module.device).update(value)

    def emit(self, trainer, pl_module, stage: str) -> None:
        means = self.means.pop_stage(stage)
        for name in sorted(means):
            pl_module.log(f"{stage}/{name}", means[name].compute(), sync_dist=False)
