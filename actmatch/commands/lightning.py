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
    actmatch predict --config experiments/explain_folder.yaml --data.init_args.root DIR \
        --trainer.callbacks.init_args.out_dir OUT --trainer.devices 2 --trainer.strategy ddp

Logging defaults to W&B **offline** under ``outputs/`` (no account needed); sync a run later
with ``wandb sync outputs/<experiment>/wandb/offline-run-*``. TensorBoard or CSV by config
(``trainer.logger``). Each run writes its resolved config next to its logs (the W&B run's
``files/config.yaml``, or the TensorBoard/CSV version folder; without a logger, the
:class:`~actmatch.callbacks.ExplanationWriter`'s output folder), so it re-runs exactly.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

# imported so that short class names resolve in configs and --help lists them
import actmatch.callbacks  # noqa: F401
import actmatch.classifier_training  # noqa: F401
import actmatch.datamodules.imagenet  # noqa: F401
import actmatch.datamodules.predict  # noqa: F401
import actmatch.datamodules.synthetic  # noqa: F401
from actmatch.callbacks.writer import ExplanationWriter
from actmatch.explainers import losses as loss_terms
from actmatch.explainers.classifier import ClassifierLoadError
from actmatch.explainers.module import ActMatchExplainer

__all__ = ["ActMatchCLI", "RunConfigSaver", "main", "DEFAULT_LOGGER"]

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"offline": True, "save_dir": "outputs", "project": "actmatch"},
}


def config_dir(trainer: L.Trainer) -> Path:
    """Where a run's resolved config goes: the W&B run's files folder, else the logger's
    versioned log dir, else a prediction writer's output folder, else the trainer's root dir.
    Rank zero only (no collectives)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return Path(logger.experiment.dir)
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # Lightning sets it outside the Trainer class
        if isinstance(callback, ExplanationWriter):
            return callback.out_dir
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


def loss_term_classes() -> dict[str, type[loss_terms.LossTerm]]:
    """Log name -> class of every loss term in :mod:`actmatch.explainers.losses`."""
    classes = {}
    for name in loss_terms.__all__:
        cls = getattr(loss_terms, name)
        if isinstance(cls, type) and issubclass(cls, loss_terms.LossTerm) and cls is not loss_terms.LossTerm:
            classes[_snake(cls.__name__)] = cls  # == LossTerm.name
    return classes


def _snake(name: str) -> str:
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class ActMatchCLI(LightningCLI):
    """LightningCLI in subclass mode with actmatch's defaults (explainer model, W&B offline).

    ``--loss_weights.<term> W`` (e.g. ``--loss_weights.area 8``) sets the weight of the loss term
    of that name already listed in ``model.init_args.losses``: the flat flags that loss-weight
    ablations and W&B sweeps drive.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": f"{ActMatchExplainer.__module__}.{ActMatchExplainer.__name__}"}})
        for name in loss_term_classes():
            parser.add_argument(
                f"--loss_weights.{name}",
                type=float | None,
                default=None,
                help=f"weight of the {name} loss term listed in model.init_args.losses",
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        weights = {k: v for k, v in vars(config.get("loss_weights") or {}).items() if v is not None}
        if not weights:
            return
        classes = loss_term_classes()
        losses = config.model.init_args.get("losses") if "init_args" in config.model else None
        if not losses:
            raise ValueError("--loss_weights needs the loss terms listed in the config (model.init_args.losses)")
        for name, weight in weights.items():
            cls = classes[name]
            entries = [t for t in losses if str(t.class_path).rsplit(".", 1)[-1] == cls.__name__]
            if not entries:
                raise ValueError(
                    f"--loss_weights.{name}: the config has no {cls.__name__} term; add it to model.init_args.losses first"
                )
            for entry in entries:
                entry.init_args.weight = float(weight)


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
    except ClassifierLoadError as err:  # the classifier's checkpoint: one line, no traceback
        print(f"actmatch {command}: {err}", file=sys.stderr)
        return 2
    return 0
