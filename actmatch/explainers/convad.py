"""ConvAD: activation-deactivation for timm CNNs (after arXiv 2510.01038).

Instead of filling the occluded pixels with a colour, ConvAD switches off the parts of the
network that the occluded region feeds. A binary input mask m (B, 1, H, W), 1 = kept, is
propagated through the network alongside the activations:

* at every checkpoint — the input of each convolution and spatial pooling layer whose input is
  spatial (h, w > 1), and the input of the global pool — the activations are multiplied by the
  mask at their resolution, so the layer sees zeros where the occluded region would feed it
  (exactly what it sees in its zero padding);
* through each such layer the mask follows the layer's geometry (kernel, stride, padding,
  dilation; TF "same" padding included) by a position-attribution map, the mean-kernel pooling
  of the mask over each output position's window,
  A(p) = (1/|W_p|) Σ_{q ∈ W_p} m(q)   (padding positions excluded from W_p),
  and an output position stays active iff its occluded share 1 − A(p) ≤ τ.

With an all-ones mask, A ≡ 1, every multiplier is exactly 1 and the logits equal the original
model's bit for bit. τ = 0 deactivates every position that any occluded input reaches; τ = 0.5
(default) keeps the occluded region's shape roughly constant through 3×3 convolutions.

Hooks live only inside :class:`Deactivation` (a context manager that removes them on exit,
also on error). Written by hand: no library implements ConvAD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.baselines import AttributionMethod
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.taps import HookContext

__all__ = ["Deactivation", "deactivate", "propagate_mask", "ConvADOcclusion", "CHECKPOINT_TYPES"]

#: layers whose input is deactivated and through which the mask is propagated
CHECKPOINT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _tf_same(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def propagate_mask(mask: torch.Tensor, module: nn.Module, out_size: tuple[int, int], tau: float) -> torch.Tensor:
    """The mask (B, 1, h', w') after ``module`` from the mask (B, 1, h, w) at its input.

    A = mean of ``mask`` over each output position's window (padding excluded), kept iff
    1 − A ≤ τ. Layers whose geometry cannot be read fall back to area pooling to ``out_size``.
    """
    kernel = _pair(getattr(module, "kernel_size", 1))
    stride = _pair(getattr(module, "stride", None) or kernel)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = getattr(module, "padding", 0)
    h, w = mask.shape[-2:]
    if type(module).__name__ == "Conv2dSame" or padding == "same":
        (top, bottom), (left, right) = (
            _tf_same(h, kernel[0], stride[0], dilation[0]),
            _tf_same(w, kernel[1], stride[1], dilation[1]),
        )
    elif isinstance(padding, str):  # "valid"
        top = bottom = left = right = 0
    else:
        (top, left) = _pair(padding)
        bottom, right = top, left
    ones = torch.ones_like(mask[:1])
    window = torch.ones(1, 1, *kernel, dtype=mask.dtype, device=mask.device)
    pad = (left, right, top, bottom)
    kept = F.conv2d(F.pad(mask, pad), window, stride=stride, dilation=dilation)  # Σ kept in window
    valid = F.conv2d(F.pad(ones, pad), window, stride=stride, dilation=dilation)  # |W_p|
    if getattr(module, "ceil_mode", False) or kept.shape[-2:] != tuple(out_size):
        share = F.adaptive_avg_pool2d(mask, out_size)
    else:
        share = kept / valid.clamp_min(1)  # A(p)
    return (1 - share <= tau).to(mask.dtype)


class Deactivation(HookContext):
    """Context manager: while open, ``classifier(images)`` runs with ConvAD deactivation.

    Args:
        classifier: a FrozenClassifier or a timm CNN.
        masks: (B, 1, H, W) binary input masks, 1 = kept (B may be 1 to share one mask).
        tau: threshold on the occluded share of a window above which a position is switched off.

    Example:
        >>> with Deactivation(classifier, masks):
        ...     logits = classifier(images)
    """

    def __init__(self, classifier: nn.Module, masks: torch.Tensor, tau: float = 0.5) -> None:
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must be (B, 1, H, W), got shape {tuple(masks.shape)}")
        if not 0 <= tau < 1:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        super().__init__()
        self.model = getattr(classifier, "model", classifier)
        if getattr(self.model, "num_prefix_tokens", None) is not None or getattr(self.model, "output_fmt", "NCHW") != "NCHW":
            raise ValueError(f"ConvAD supports channels-first CNNs; {type(self.model).__name__} is not one")
        self.masks = masks.detach()
        self.tau = tau
        self.state: dict[tuple[int, int], torch.Tensor] = {}
        self._inputs: dict[int, torch.Tensor] = {}

    # -------------------------------------------------------------- mask bookkeeping
    def mask_at(self, size: tuple[int, int]) -> torch.Tensor:
        """Current mask (B, 1, h, w) at a resolution (derived by area pooling if new)."""
        if size not in self.state:
            finest = max(self.state, key=lambda s: s[0] * s[1])
            share = F.adaptive_avg_pool2d(self.state[finest], size)
            self.state[size] = (1 - share <= self.tau).to(share.dtype)
        return self.state[size]

    def _pre(self, module: nn.Module, args):
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-2] * x.shape[-1] <= 1:
            return None  # squeeze-excite and other global paths are left alone
        mask = self.mask_at((x.shape[-2], x.shape[-1]))
        self._inputs[id(module)] = mask
        return (x * mask.to(x.dtype),) + tuple(args[1:])

    def _post(self, module: nn.Module, _args, output):
        mask = self._inputs.pop(id(module), None)
        if mask is None or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        size = (output.shape[-2], output.shape[-1])
        self.state[size] = propagate_mask(mask, module, size, self.tau)
        return None

    # -------------------------------------------------------------- context
    def register(self) -> None:
        self.state = {(self.masks.shape[-2], self.masks.shape[-1]): self.masks}
        for module in self.model.modules():
            if isinstance(module, CHECKPOINT_TYPES):
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))
        head_pool = getattr(self.model, "global_pool", None)
        if isinstance(head_pool, nn.Module):
            self._handles.append(head_pool.register_forward_pre_hook(self._pre))

    def remove(self) -> None:
        """Remove every hook and forget the masks in flight."""
        super().remove()
        self._inputs.clear()


def deactivate(classifier: nn.Module, images: torch.Tensor, masks: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Logits (B, K) of ``images`` (B, 3, H, W) with the regions where ``masks`` is 0 deactivated.

    The ConvAD counterpart of ``classifier(m ⊙ x + (1 − m) ⊙ fill)``: any mask can be evaluated
    this way instead of by pixel fill.
    """
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} differ in size")
    with Deactivation(classifier, masks.to(images.dtype), tau):
        return classifier(images)


class _MaskChannelModel(nn.Module):
    """Model over (B, 4, H, W): 3 colour channels + 1 ConvAD mask channel (for Captum)."""

    def __init__(self, classifier: nn.Module, tau: float) -> None:
        super().__init__()
        self.classifier, self.tau = classifier, tau

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return deactivate(self.classifier, stacked[:, :3], stacked[:, 3:], self.tau).softmax(-1)


class ConvADOcclusion(AttributionMethod):
    """Occlusion by deactivation: the drop of p_y when a window is switched off by ConvAD.

    Runs Captum's ``Occlusion`` over a fourth, all-ones mask channel whose baseline is 0 (the
    colour channels' baseline is the image itself, so only the mask channel is ever occluded).

    Args:
        classifier: the frozen classifier.
        window: side of the square window, pixels.
        stride: step of the window (default: window // 2).
        tau: ConvAD threshold.
        batch: perturbed inputs per forward pass.
    """

    def __init__(
        self, classifier: FrozenClassifier, window: int = 32, stride: int | None = None, tau: float = 0.5, batch: int = 32
    ) -> None:
        super().__init__(classifier)
        if window < 1 or (stride is not None and stride < 1) or batch < 1:
            raise ValueError(f"ConvADOcclusion: window, stride and batch must be >= 1 (got {window}, {stride}, {batch})")
        self.window, self.stride, self.tau, self.batch = window, stride or max(1, window // 2), tau, batch

    @property
    def name(self) -> str:
        return "convad"

    def compute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        stacked = torch.cat([images, torch.ones_like(images[:, :1])], 1)  # (B, 4, H, W)
        baseline = torch.cat([images, torch.zeros_like(images[:, :1])], 1)
        window = min(self.window, *images.shape[-2:])
        relevance = CaptumOcclusion(_MaskChannelModel(self.classifier, self.tau)).attribute(
            stacked,
            sliding_window_shapes=(4, window, window),  # all channels: the colour ones are unchanged
            strides=(4, self.stride, self.stride),
            baselines=baseline,
            target=target,
            perturbations_per_eval=self.batch,
        )
        return relevance[:, 3:]  # (B, 1, H, W)
