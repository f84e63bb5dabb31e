"""Shared plumbing of the W&B callbacks: find the W&B logger, warn once when there is none."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["WandbCallback", "STAGES"]

STAGES = ("train", "val", "test")


class WandbCallback(L.Callback):
    """Base class of callbacks that log W&B media; a no-op (warned once) under other loggers.

    Override points: the Lightning hooks; call :meth:`wandb_logger` to get the logger or None.
    """

    def __init__(self) -> None:
        self._warned = False

    def wandb_logger(self, trainer: L.Trainer) -> WandbLogger | None:
        """The trainer's first :class:`WandbLogger`, or None (with a one-time warning)."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger
        if not self._warned:
            rank_zero_warn(
                f"{type(self).__name__} logs to Weights & Biases only and does nothing with "
                f"{[type(lg).__name__ for lg in trainer.loggers] or 'no logger'}; "
                "use trainer.logger=lightning.pytorch.loggers.WandbLogger (offline: true works without an account)"
            )
            self._warned = True
        return None

    @staticmethod
    def check_stages(stages: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
        return tuple(stages)
