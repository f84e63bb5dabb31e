"""Activation taps: capture feature maps at named layers with hooks that never outlive use.

``with ActivationTaps(model, layers) as taps: model(x)`` fills ``taps.features`` with
(B, C, h, w) maps, one per layer. Each captured tensor is cloned inside the hook, so later
in-place operations (timm's ``ReLU(inplace=True)``, residual ``x += shortcut``) cannot
overwrite it. Transformer token outputs (B, N, C) are turned into maps without the class and
register tokens; channels-last outputs (Swin) are permuted to channels-first.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

__all__ = ["HookContext", "ActivationTaps", "default_taps", "stage_taps", "validate_layers", "hook_count"]


def _model_of(module: nn.Module) -> nn.Module:
    """The timm model inside a FrozenClassifier (or the module itself)."""
    return getattr(module, "model", module)


def default_taps(module: nn.Module, max_transformer_taps: int = 4) -> list[str]:
    """The backbone's feature stages from timm's ``feature_info``.

    For transformers with one feature entry per block, ``max_transformer_taps`` evenly spaced
    blocks (always including the last) are kept. Models without ``feature_info`` (torchvision,
    your own) raise; :func:`stage_taps` finds their stages with a probe pass (the Python API
    uses it).
    """
    model = _model_of(module)
    info = getattr(model, "feature_info", None)
    names = [entry["module"] for entry in info] if isinstance(info, list) else []
    names = [n for n in names if n]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no timm feature_info; pass the layers to tap explicitly (e.g. --taps layer1 layer2)"
        )
    if len(names) > max_transformer_taps and getattr(model, "num_prefix_tokens", None) is not None:
        step = len(names) / max_transformer_taps
        names = [names[min(len(names) - 1, round((i + 1) * step) - 1)] for i in range(max_transformer_taps)]
    return names


def validate_layers(module: nn.Module, layers: list[str]) -> list[str]:
    """Check that every layer exists; the error lists the valid names."""
    model = _model_of(module)
    if not layers:
        raise ValueError("the tap list is empty; give at least one layer name (or None for the default stages)")
    valid = dict(model.named_modules())
    missing = [name for name in layers if name not in valid]
    if missing:
        names = [n for n in valid if n]
        shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
        raise ValueError(f"unknown layer(s) {missing} in {type(model).__name__}; valid names: {shown}")
    return list(layers)


def hook_count(module: nn.Module) -> int:
    """Number of forward (pre-)hooks registered anywhere in ``module``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def to_feature_map(output: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A layer's output as a (B, C, h, w) map.

    Token sequences (B, N, C) drop the ``num_prefix_tokens`` class/register tokens and fold the
    patch tokens to the patch grid; channels-last 4-D outputs (timm ``output_fmt == 'NHWC'``)
    are permuted.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            return rearrange(output, "b h w c -> b c h w")
        return output
    if output.dim() == 3:
        tokens = output[:, int(getattr(model, "num_prefix_tokens", 0)) :]  # (B, h·w, C)
        n = tokens.shape[1]
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is None or grid[0] * grid[1] != n:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"cannot fold {n} tokens into a square grid")
            grid = (side, side)
        return rearrange(tokens, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
    if output.dim() == 2:
        return output[:, :, None, None]
    raise ValueError(f"cannot turn an output of shape {tuple(output.shape)} into a feature map")


class HookContext:
    """Base of every hook-owning context: hooks added in :meth:`register` are removed on exit,
    also when registering or the body raises. Subclasses append handles to ``self._handles``."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def register(self) -> None:
        """Register the hooks (override)."""
        raise NotImplementedError

    def __enter__(self):
        try:
            self.register()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()


class _OutputShapes(HookContext):
    """Records (module name, output shape) of every sub-module, in the order they finish."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, (tuple, list)) and output:
                output = output[0]
            if isinstance(output, torch.Tensor):
                self.calls.append((name, tuple(output.shape)))

        return record

    def register(self) -> None:
        for name, module in self.model.named_modules():
            if name:
                self._handles.append(module.register_forward_hook(self._hook(name)))


def stage_taps(module: nn.Module, input_shape: tuple[int, int] = (224, 224), max_taps: int = 4) -> list[str]:
    """The last module of each spatial stage, for models without timm ``feature_info``.

    One forward pass of a zero image (eval mode, no grad, hooks removed afterwards, training
    flags restored) records every sub-module's output; for each distinct spatial size of a
    (B, C, h, w) output larger than 1×1, the module that finishes last at that size is the
    stage's tap, preferring modules highest in the hierarchy (a stage container over a block
    inside the next stage that has not downsampled yet): ``layer1`` … ``layer4`` for a
    torchvision ResNet, ``features.1/3/8`` and ``features`` for MobileNetV3. Modules called at
    several sizes (a shared ReLU) are skipped, and the ``max_taps`` deepest stages are kept.

    Args:
        module: a FrozenClassifier or a model mapping (B, 3, H, W) images to logits.
        input_shape: (H, W) of the probe image.
        max_taps: keep at most this many stages, the deepest.

    Raises:
        ValueError: the probe fails or finds no spatial feature map; the message lists the
            module names to pass as taps instead.
    """
    model = _model_of(module)
    param = next(model.parameters(), None)
    probe = torch.zeros(
        1,
        3,
        *input_shape,
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None and param.is_floating_point() else None,
    )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), _OutputShapes(model) as shapes:
            model(probe)
    except Exception as err:  # noqa: BLE001 - any model error: ask for explicit taps
        raise ValueError(
            f"could not run {type(model).__name__} on a {tuple(probe.shape)} probe to find its stages "
            f"({err}); pass the layers to tap explicitly"
        ) from err
    finally:
        for m, mode in modes:
            m.training = mode
    sizes: dict[str, set] = {}
    for name, shape in shapes.calls:
        sizes.setdefault(name, set()).add(shape[2:] if len(shape) == 4 else None)
    best: dict[tuple[int, ...], tuple[int, int, str]] = {}  # spatial size -> (−depth, finish order, name)
    for order, (name, shape) in enumerate(shapes.calls):
        if len(shape) == 4 and shape[2] * shape[3] > 1 and len(sizes[name]) == 1:
            best[shape[2:]] = max(best.get(shape[2:], (-999, -1, "")), (-name.count("."), order, name))
    names = [name for _, order, name in sorted(best.values(), key=lambda entry: entry[1])]
    if not names:
        valid = [n for n, _ in model.named_modules() if n]
        raise ValueError(
            f"{type(model).__name__} produces no (B, C, h, w) feature map; pass the layers to tap "
            f"explicitly, from: {', '.join(valid[:60])}"
        )
    return names[-max_taps:]


class ActivationTaps(HookContext):
    """Context manager that records feature maps at ``layers`` during forward passes.

    Args:
        module: a FrozenClassifier or a timm model.
        layers: module names (as in ``named_modules()``); None taps the default stages.

    Hooks are registered on ``__enter__`` and removed on ``__exit__``, also when the body
    raises.
    """

    def __init__(self, module: nn.Module, layers: list[str] | None = None) -> None:
        super().__init__()
        self.model = _model_of(module)
        self.layers = validate_layers(module, layers if layers is not None else default_taps(module))
        self.features: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            self.features[name] = to_feature_map(output, self.model).clone()

        return record

    def register(self) -> None:
        modules = dict(self.model.named_modules())
        self.features = {}
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
