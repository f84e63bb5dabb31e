"""Train a small timm classifier to be explained (e.g. on the synthetic evidence set).

``ClassifierTrainer`` is a plain supervised LightningModule. At the end of ``fit`` it writes the
timm model's state dict to ``export_path`` (safetensors), loadable as the explainer's frozen
backbone::

    load_classifier(backbone, weights=export_path, pretrained=False, num_classes=N)

Images are taken in [0, 1] and normalised with the model's own timm data config, exactly as
:class:`~actmatch.explainers.classifier.FrozenClassifier` does, so the exported weights see the
same inputs when explained.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.data import resolve_data_config
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ClassifierTrainer"]


class ClassifierTrainer(L.LightningModule):
    """Supervised training of a timm classifier on batches ``{"image", "label"}``.

    Args:
        backbone: timm model name (random init: ``pretrained=False``).
        num_classes: number of classes.
        lr: AdamW learning rate (cosine-annealed over ``trainer.max_epochs`` or ``max_steps``).
        weight_decay: AdamW weight decay.
        export_path: where ``fit`` writes the state dict (``.safetensors`` or a torch file);
            None writes nothing.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``).
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffer
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(
        self,
        backbone: str = "resnet10t",
        num_classes: int = 4,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        export_path: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **(model_kwargs or {}))
        config = resolve_data_config({}, model=self.model)
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, -1, 1, 1), persistent=False)
        self.lr, self.weight_decay, self.export_path = lr, weight_decay, export_path
        self.train_accuracy = MulticlassAccuracy(num_classes)
        self.val_accuracy = MulticlassAccuracy(num_classes)
        self.test_accuracy = MulticlassAccuracy(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of images (B, 3, H, W) in [0, 1]."""
        return self.model((images - self.mean) / self.std)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = getattr(self, f"{stage}_accuracy")
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, batch_size=len(labels), sync_dist=stage != "train", prog_bar=True)
        self.log(f"{stage}/accuracy", accuracy, batch_size=len(labels), on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not total or total == float("inf"):
            return optimizer
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=int(total), pct_start=0.15)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export(self, path: str | Path) -> Path:
        """Write the timm model's state dict to ``path`` (safetensors by suffix, else torch)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(path))
        else:
            torch.save(state, path)
        return path

    def on_fit_end(self) -> None:
        if self.export_path and self.trainer.is_global_zero:
            path = self.export(self.export_path)
            rank_zero_info(
                f"classifier weights written to {path}; explain it with backbone={self.hparams['backbone']}, "
                f"weights={path}, pretrained=false, num_classes={self.hparams['num_classes']}"
            )
