"""``actmatch fit|validate|test|predict``: LightningCLI over experiments/ configs.

Model and datamodule are chosen by ``class_path``/``init_args`` (subclass mode): the default
model is :class:`~actmatch.explainers.module.ActMatchExplainer`, whose loss terms
(``losses: list[LossTerm]``) and mask network (``unet``) are themselves ``class_path``
entries; :class:`~actmatch.classifier_training.ClassifierTrainer` trains the classifier that
the synthetic experiments explain. Examples::

    actmatch fit --config experiments/smoke.yaml
    actmatch fit --config experiments/smoke.yaml --print_config
    actmatch fit --config experiments/smoke.yaml --trainer.devices 2 --trainer.strategy ddp
    actmatch fit --config experiments/smoke.yaml --trainer.precision bf16-mixed
    actmatch fit --config experiments/smoke.yaml --ckpt_path outputs/.../checkpoints/last.ckpt

Logging defaults to W&B **offline** under ``outputs/`` (no account needed); sync a run later
with ``wandb sync outputs/<experiment>/wandb/offline-run-*``. TensorBoard or CSV by config
(``trainer.logger``). Each run writes its resolved config next to its logs (the W&B run's
``files/config.yaml``, or the TensorBoard/CSV version folder), so it re-runs exactly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

# imported so that short class names resolve in configs and --help lists them
import actmatch.callbacks  # noqa: F401
import actmatch.classifier_training  # noqa: F401
import actmatch.datamodules  # noqa: F401
import actmatch.explainers.losses  # noqa: F401
from actmatch.explainers.module import ActMatchExplainer

__all__ = ["ActMatchCLI", "RunConfigSaver", "main", "DEFAULT_LOGGER"]

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"offline": True, "save_dir": "outputs", "project": "actmatch"},
}


def config_dir(trainer: L.Trainer) -> Path:
    """Where a run's resolved config goes: the W&B run's files folder, else the logger's
    versioned log dir, else the trainer's root dir. Rank zero only (no collectives)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return Path(logger.experiment.dir)
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` beside the run's logs (one folder per run)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = config_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        rank_zero_info(f"resolved config saved to {path}")


class ActMatchCLI(LightningCLI):
    """LightningCLI in subclass mode with actmatch's defaults (explainer model, W&B offline)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": f"{ActMatchExplainer.__module__}.{ActMatchExplainer.__name__}"}})


def main(command: str, argv: list[str]) -> int:
    """Run ``command`` (fit, validate, test, predict) with LightningCLI; returns the exit code."""
    os.environ.setdefault("WANDB_SILENT", "true")
    # sys.argv must stay as it is (DDP relaunches it), so LightningCLI sees both it and args
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        ActMatchCLI(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            trainer_defaults={"logger": DEFAULT_LOGGER, "default_root_dir": "outputs"},
            seed_everything_default=0,
            args=[command, *argv],
            parser_kwargs={"prog": "actmatch"},
        )
    except SystemExit as exit_:  # --help, --print_config and argument errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
