"""Log original | mask | explanation panels to W&B, with the mask as an overlay."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from actmatch.callbacks.base import WandbCallback

__all__ = ["MaskImages", "mask_panel"]


def mask_panel(image: torch.Tensor, mask: torch.Tensor, explanation: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One (H, 3W, 3) uint8 panel ``original | mask | explanation`` and its (H, 3W) overlay labels.

    The overlay marks the kept pixels (1) over the original, so the W&B viewer can toggle it.
    """
    mask3 = mask.expand_as(image)  # (3, H, W)
    panel = torch.cat([image, mask3, explanation], dim=-1).clamp(0, 1)  # (3, H, 3W)
    overlay = torch.zeros(panel.shape[-2:], dtype=torch.uint8)
    overlay[:, : image.shape[-1]] = (mask[0] > 0.5).to(torch.uint8)
    array = (panel.float().permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return array, overlay.cpu().numpy()


class MaskImages(WandbCallback):
    """Every ``every_n_steps`` training steps (and on the first batch of each validation/test
    epoch), log at most ``max_images`` panels ``original | mask | explanation`` as
    ``wandb.Image`` under ``<stage>/masks``, on rank zero only.

    Reads the ``images``, ``masks``, ``explanations``, ``target``, ``confidence_*`` and
    ``mask_area`` that the module's step returns; never recomputes them.

    Args:
        every_n_steps: training steps between two logs.
        max_images: images per log.
        stages: stages that log (``train``, ``val``, ``test``).
    """

    def __init__(
        self, every_n_steps: int = 50, max_images: int = 8, stages: list[str] | tuple[str, ...] = ("train", "val", "test")
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or max_images < 1:
            raise ValueError(f"every_n_steps and max_images must be >= 1, got {every_n_steps}, {max_images}")
        self.every_n_steps, self.max_images, self.stages = every_n_steps, max_images, self.check_stages(stages)

    def log_panels(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, stage: str) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, dict) or "masks" not in outputs:
            return
        logger = self.wandb_logger(trainer)
        if logger is None:
            return
        import wandb

        names = getattr(getattr(pl_module, "classifier", None), "class_name", str)
        images = []
        for i in range(min(self.max_images, outputs["images"].shape[0])):
            panel, overlay = mask_panel(outputs["images"][i], outputs["masks"][i], outputs["explanations"][i])
            label = int(outputs["target"][i])
            caption = (
                f"{names(label)}: p(x)={float(outputs['confidence_original'][i]):.2f} "
                f"p(e)={float(outputs['confidence_explanation'][i]):.2f} area={float(outputs['mask_area'][i]):.3f}"
            )
            images.append(
                wandb.Image(
                    panel, caption=caption, masks={"mask": {"mask_data": overlay, "class_labels": {0: "removed", 1: "kept"}}}
                )
            )
        logger.log_metrics({f"{stage}/masks": images}, step=trainer.global_step)  # type: ignore[dict-item]  # Lightning types values as float; WandbLogger logs wandb media too

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if "train" in self.stages and trainer.global_step % self.every_n_steps == 0:
            self.log_panels(trainer, pl_module, outputs, "train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" in self.stages and batch_idx == 0 and not trainer.sanity_checking:
            self.log_panels(trainer, pl_module, outputs, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages and batch_idx == 0:
            self.log_panels(trainer, pl_module, outputs, "test")
