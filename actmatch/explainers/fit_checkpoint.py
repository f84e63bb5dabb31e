"""What an ``actmatch fit`` checkpoint says about the mask network it trained.

A checkpoint of :class:`~actmatch.explainers.module.ActMatchExplainer` holds the mask network's
weights (``unet.*``), its class and constructor arguments (``unet_init``, saved by
``on_save_checkpoint``), and the module's hyper-parameters: the backbone it explains and the
recipe's name and version. :class:`FitCheckpoint` reads them once; ``explain``, ``study`` and
``benchmark`` rebuild the network from it.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["FitCheckpoint", "UNET_INIT_KEY", "instantiate", "network_spec"]

#: the checkpoint key under which the mask network's class and constructor arguments are saved
UNET_INIT_KEY = "unet_init"


def instantiate(spec: dict):
    """``class_path(**init_args)``, nested ``{class_path, init_args}`` arguments built first."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    kwargs = {
        key: instantiate(value) if isinstance(value, dict) and "class_path" in value else value
        for key, value in spec.get("init_args", {}).items()
    }
    return getattr(importlib.import_module(module_name), class_name)(**kwargs)


def network_spec(net: nn.Module) -> dict | None:
    """``{class_path, init_args}`` that :func:`instantiate` rebuilds ``net`` from; None for a
    network without ``init_args()``."""
    init_args = getattr(net, "init_args", None)
    if not callable(init_args):
        return None
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args()}


@dataclass
class FitCheckpoint:
    """The mask network of an ``actmatch fit`` checkpoint and what it was trained for."""

    path: str
    unet_state: dict  # the mask network's weights, without the ``unet.`` prefix
    unet_init: dict | None  # {class_path, init_args}; None in checkpoints written before it was saved
    backbone: str | None  # the classifier it explains, as the config named it
    recipe: str
    recipe_version: int

    @classmethod
    def read(cls, path: str | Path) -> FitCheckpoint:
        """Read ``path``; a missing file or one without mask-network weights is refused."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt)
        unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        if not unet_state:
            raise ValueError(f"{path} holds no U-Net weights (keys `unet.*`); is it an `actmatch fit` checkpoint?")
        hparams = ckpt.get("hyper_parameters", {})
        return cls(
            str(path),
            unet_state,
            ckpt.get(UNET_INIT_KEY),
            hparams.get("backbone"),
            str(hparams.get("recipe", "custom")),
            int(hparams.get("recipe_version", 0)),
        )

    def check_backbone(self, backbone: str) -> None:
        """Refuse to explain ``backbone`` with a network trained for another classifier."""
        if self.backbone and self.backbone != backbone:
            raise ValueError(
                f"{self.path} was trained to explain {self.backbone}, not {backbone}; pass --backbone {self.backbone}"
            )

    def unet(self, fallback: nn.Module | None = None) -> nn.Module:
        """The trained network, rebuilt with the architecture it was trained with; a checkpoint that
        does not say which loads into a copy of ``fallback`` (e.g. the config's U-Net)."""
        if self.unet_init is not None:
            net = instantiate(self.unet_init)
        elif fallback is not None:
            net = copy.deepcopy(fallback)
        else:
            raise ValueError(f"{self.path} does not say which U-Net it was trained with; pass the training config with --config")
        try:
            net.load_state_dict(self.unet_state)
        except RuntimeError as err:
            arguments = net.init_args() if callable(getattr(net, "init_args", None)) else {}
            raise ValueError(
                f"{self.path}: its U-Net weights do not fit {type(net).__name__}({arguments}); "
                f"pass the config it was trained with (--config) ({str(err).splitlines()[0]})"
            ) from err
        return net
