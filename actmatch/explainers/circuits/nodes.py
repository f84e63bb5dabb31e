"""Circuit nodes: the most energetic channels at each tapped layer.

One forward pass of a single image records, at every tapped layer, the feature map
a_c(p) (post-activation where the layer ends in an activation) and, at the classifier head,
its input: the pooled penultimate features f_i. A channel's **energy** is its mean absolute
activation over positions,

    E_c = (1 / |P|) Σ_p |a_c(p)|,

which equals the mean activation after a ReLU. The circuit keeps, per layer, the k channels
of highest energy; k is absolute (an ``int`` ≥ 1) or a fraction of the layer's channels
(a ``float`` in (0, 1], rounded up, at least one channel), the same for every layer or given
per layer as a mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from actmatch.explainers.taps import ActivationTaps, default_taps, validate_layers

__all__ = [
    "PRE_LOGITS",
    "KSpec",
    "Site",
    "Activations",
    "find_head",
    "resolve_counts",
    "read_activations",
    "top_channels",
    "sites",
    "block_taps",
    "circuit_taps",
    "TAP_PRESETS",
]

PRE_LOGITS = "pre_logits"
"""Name of the layer of pooled penultimate features (the input of the linear classifier head)."""

KSpec = int | float | Mapping[str, int | float]
"""Channels per layer: an int (absolute), a float in (0, 1] (fraction), or a per-layer mapping."""


@dataclass(frozen=True)
class Site:
    """Where a layer's activations are read: the ``output`` of a module, or its ``input``."""

    name: str  # layer name in the circuit
    module: str  # module name in the model
    kind: str = "output"  # "output" | "input"


@dataclass
class Activations:
    """One image's activations at the circuit's layers (all on CPU, batch dimension dropped).

    Attributes:
        layers: layer names in forward order; the last one is :data:`PRE_LOGITS`.
        maps: layer -> (C, h, w) feature map ((F, 1, 1) for the pre-logits features).
        energy: layer -> (C,) mean absolute activation.
        mean: layer -> (C,) mean (signed) activation.
        logits: (K,) class logits.
        attribution: label -> layer -> (C,) full-model channel attribution, filled on demand.
    """

    layers: list[str]
    maps: dict[str, torch.Tensor]
    energy: dict[str, torch.Tensor] = field(default_factory=dict)
    mean: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    attribution: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # label -> layer -> (C,)

    def __post_init__(self) -> None:
        for name, fmap in self.maps.items():
            self.energy.setdefault(name, fmap.abs().flatten(1).mean(1))
            self.mean.setdefault(name, fmap.flatten(1).mean(1))

    def channels(self, layer: str) -> int:
        """Number of channels at ``layer``."""
        return int(self.maps[layer].shape[0])

    def need_logits(self) -> torch.Tensor:
        """(K,) :attr:`logits`; a ``ValueError`` if these activations were made without them."""
        if self.logits is None:
            raise ValueError("these activations hold no logits (read_activations records them)")
        return self.logits

    @property
    def probs(self) -> torch.Tensor:
        """(K,) softmax of the logits."""
        return self.need_logits().softmax(-1)


def _model_of(module: nn.Module) -> nn.Module:
    return getattr(module, "model", module)


def find_head(classifier: nn.Module, head: str | None = None) -> str:
    """Name of the linear classifier head: ``head`` if given, timm's ``get_classifier()``, or the
    last ``nn.Linear`` of the model.

    Raises:
        ValueError: no such module, or it is not ``nn.Linear``.
    """
    model = _model_of(classifier)
    modules = dict(model.named_modules())
    if head is not None:
        validate_layers(classifier, [head])
        if not isinstance(modules[head], nn.Linear):
            raise ValueError(f"the head {head!r} is a {type(modules[head]).__name__}, not nn.Linear; name the final linear layer")
        return head
    get_classifier = getattr(model, "get_classifier", None)  # timm models
    if get_classifier is not None:
        fc = get_classifier()
        for name, module in modules.items():
            if module is fc and isinstance(fc, nn.Linear):
                return name
    linear = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier head, so class links cannot be scored; "
            f"pass head=NAME of the final linear layer"
        )
    return linear[-1]


def resolve_counts(k: KSpec, channels: Mapping[str, int]) -> dict[str, int]:
    """Channels to keep per layer.

    Args:
        k: int ≥ 1 (absolute), float in (0, 1] (fraction, rounded up, ≥ 1 channel), or a mapping
            layer -> int/float; layers missing from a mapping keep all channels.
        channels: layer -> number of channels.

    Raises:
        ValueError: k out of range, larger than a layer's channel count, or naming an unknown layer.
    """
    if isinstance(k, Mapping):
        unknown = sorted(set(k) - set(channels))
        if unknown:
            raise ValueError(f"k names unknown layer(s) {unknown}; the circuit's layers are {list(channels)}")
        per_layer = {name: k.get(name, 1.0) for name in channels}
    else:
        per_layer = {name: k for name in channels}
    counts = {}
    for name, value in per_layer.items():
        total = channels[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"k for layer {name!r} must be an int (channels) or a float fraction, got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"k for layer {name!r} must be >= 1 channel, got {value}")
            if value > total:
                raise ValueError(
                    f"k={value} is larger than the {total} channels of layer {name!r}; use k <= {total} or a fraction such as 0.1"
                )
            counts[name] = value
        else:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"fraction for layer {name!r} must be in (0, 1], got {value}")
            counts[name] = max(1, min(total, math.ceil(value * total - 1e-9)))
    return counts


def top_channels(energy: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest-energy channels, highest first (ties: lower index)."""
    order = torch.argsort(energy, descending=True, stable=True)
    return order[:count]


@contextmanager
def _capture_input(module: nn.Module, store: dict) -> Iterator[None]:
    def record(_module: nn.Module, inputs) -> None:
        store["input"] = inputs[0].detach().clone()

    handle = module.register_forward_pre_hook(record)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def read_activations(
    classifier: nn.Module, image: torch.Tensor, layers: list[str] | None = None, head: str | None = None
) -> Activations:
    """One forward pass of ``image`` (1, 3, H, W) in [0, 1] recording the circuit's layers.

    Taps are returned in the order the forward pass reaches them, followed by :data:`PRE_LOGITS`.

    Raises:
        ValueError: not a single image, unknown layer (the message lists the valid names), a tap
            that the forward pass never reaches, or no linear head.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"circuits are read one image at a time: expected (1, 3, H, W), got {tuple(image.shape)}")
    layers = list(layers) if layers is not None else default_taps(classifier)
    if PRE_LOGITS in layers:
        raise ValueError(f"{PRE_LOGITS!r} is added automatically (the classifier head's input); do not tap it")
    validate_layers(classifier, layers)
    head_name = find_head(classifier, head)
    head_module = dict(_model_of(classifier).named_modules())[head_name]
    store: dict = {}
    with ActivationTaps(classifier, layers) as taps, _capture_input(head_module, store):
        logits = classifier(image)
    missing = [name for name in layers if name not in taps.features]
    if missing:
        raise ValueError(f"the forward pass never reached layer(s) {missing}; tap modules the model actually runs")
    order = list(taps.features)  # insertion order = forward order
    maps = {name: taps.features[name][0].cpu() for name in order}  # (C, h, w)
    pre = store["input"][0].cpu()
    maps[PRE_LOGITS] = pre.reshape(pre.shape[0], 1, 1) if pre.dim() == 1 else pre.flatten(1)[:, :, None]
    return Activations(layers=order + [PRE_LOGITS], maps=maps, logits=logits[0].cpu())


def block_taps(classifier: nn.Module) -> list[str]:
    """The hidden channels inside every block, where a circuit can be cut without cutting the stream.

    - timm inverted residuals (EfficientNet, MobileNet-V2/V3, MNASNet: blocks with ``conv_pwl``):
      ``bn2``, the activation after the depthwise convolution (BatchNormAct2d: norm + activation);
    - timm ResNet basic blocks: ``act1``; bottlenecks: ``act1`` and ``act2``.

    Stage outputs (:func:`~actmatch.explainers.taps.default_taps`) are the residual stream
    itself, often only 16–40 channels wide early on: keeping 10% of them cuts the image down to
    a handful of channels, and no circuit that small keeps a label.

    Raises:
        ValueError: the model has none of these blocks (name the layers with ``--taps``).
    """
    model = _model_of(classifier)
    names = []
    for name, module in model.named_modules():
        if not name:
            continue  # the model itself is not a block
        if hasattr(module, "conv_pwl") and hasattr(module, "bn2"):
            names.append(f"{name}.bn2")
        elif hasattr(module, "downsample") and hasattr(module, "act1"):  # timm ResNet blocks
            names += [f"{name}.act1", f"{name}.act2"] if hasattr(module, "conv3") else [f"{name}.act1"]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no inverted-residual or ResNet blocks to tap inside; "
            f"use the stage taps ('stages') or name the layers (e.g. --taps layer1 layer2)"
        )
    return names


TAP_PRESETS: dict[str, Callable[[nn.Module], list[str]]] = {"blocks": block_taps, "stages": default_taps}
"""Named tap sets for circuits: ``blocks`` (hidden channels inside every block) and ``stages``."""


def circuit_taps(
    classifier: nn.Module, layers: str | Sequence[str] | None = None, fallback: list[str] | None = None
) -> list[str]:
    """The circuit's layers: explicit names, a preset name from :data:`TAP_PRESETS`, or by default
    :func:`block_taps` where the model has such blocks, else its stages, else ``fallback`` (e.g. the
    explainer's taps)."""
    if isinstance(layers, (list, tuple)) and len(layers) == 1 and layers[0] in TAP_PRESETS:
        layers = layers[0]  # a preset given on the command line (--taps blocks)
    if isinstance(layers, str):
        if layers not in TAP_PRESETS:
            raise ValueError(f"unknown tap preset {layers!r}; choose one of {sorted(TAP_PRESETS)} or give layer names")
        return TAP_PRESETS[layers](classifier)
    if layers is not None:
        return validate_layers(classifier, list(layers))
    for preset in (block_taps, default_taps):
        try:
            return preset(classifier)
        except ValueError:
            pass
    if fallback:
        return validate_layers(classifier, list(fallback))
    return block_taps(classifier)  # raises, naming the fix


def sites(classifier: nn.Module, layers: list[str], head: str | None = None) -> dict[str, Site]:
    """Layer name -> :class:`Site` for the taps and the pre-logits features."""
    out = {name: Site(name, name, "output") for name in layers if name != PRE_LOGITS}
    out[PRE_LOGITS] = Site(PRE_LOGITS, find_head(classifier, head), "input")
    return out
