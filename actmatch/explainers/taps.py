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

__all__ = ["HookContext", "ActivationTaps", "default_taps", "validate_layers", "hook_count"]


def _model_of(module: nn.Module) -> nn.Module:
    """The timm model inside a FrozenClassifier (or the module itself)."""
    return getattr(module, "model", module)


def default_taps(module: nn.Module, max_transformer_taps: int = 4) -> list[str]:
    """The backbone's feature stages from timm's ``feature_info``.

    For transformers with one feature entry per block, ``max_transformer_taps`` evenly spaced
    blocks (always including the last) are kept.
    """
    model = _model_of(module)
    info = getattr(model, "feature_info", None)
    names = [entry["module"] for entry in info] if isinstance(info, list) else []
    names = [n for n in names if n]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no timm feature_info; pass the layers to tap explicitly "
            f"(e.g. --taps layer1 layer2)"
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
