"""Screen: an int8 copy of EfficientNet-Lite0 as the amortized mask network's encoder, for the latency row.

``amortized-lite0`` reads the classifier's own 224-px pass, so mask + masked forward costs about 2.2 × one
forward. The row asks for 1.5 ×, so the mask may cost at most half a forward. This screen asks whether a
post-training int8 copy of the classifier's feature stages (PyTorch FX static quantization with the
``--engine`` backend's default qconfig, ``x86`` unless told, activations calibrated on ``--calibration`` photos)
is that cheap, and whether it still names the classifier's class:

* ``plain``: the encoder rewritten for quantization: every batch norm folded into its convolution (eval
  statistics), TensorFlow "same" padding as an explicit :class:`SamePad` before an unpadded convolution. In
  float32 it must equal timm's ``forward_intermediates`` (the first printed line, max |difference|).
* ``int8``: ``plain`` quantized, its final features through the classifier's own float head.
* top-1 agreement of ``int8`` with the classifier on ``--check`` photos after the calibration ones;
* B = 1, 224 px, medians of interleaved rounds (:func:`~actmatch.evaluation.timing.interleaved_seconds`), each
  task's ratio to the classifier's forward in the same round with a bootstrap 95 % interval; with
  ``--mobilenet`` also torchvision's MobileNetV2 in float and int8, for the backend's speed on a network it suits;
* ``--profile``: the int8 copy's costliest operators; ``--by-layer``: the int8 and float convolutions' time per
  pass by kind (pointwise, depthwise k×k stride s, full), to find the layers that make it slow.

Usage: ``experiments/evaluation/int8_encoder.py ../shared/data/imagenet-train --calibration 32 --check 100
[--engine onednn] [--mobilenet] [--profile] [--by-layer]``
(training photos: calibration must not see the evaluation photos).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.datamodules.images import expand_image_paths, read_for_model
from actmatch.evaluation.timing import interleaved_seconds, ratio_table
from actmatch.explainers.classifier import load_classifier

# (convolution, batch norm) pairs of timm's EfficientNet blocks, in order
BLOCK_PAIRS = {
    "InvertedResidual": [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
    "DepthwiseSeparableConv": [("conv_dw", "bn1"), ("conv_pw", "bn2")],
}


class SamePad(nn.Module):
    """TensorFlow "same" padding of a convolution (kernel k, stride s, dilation d), per side:
    p = max((⌈n / s⌉ − 1) · s + (k − 1) · d + 1 − n, 0), ⌊p / 2⌋ before and the rest after."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = kernel, stride, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel), reversed(self.stride), reversed(self.dilation)):
            p = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [p // 2, p - p // 2]
        return F.pad(x, pads)


def fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Sequential:
    """``conv`` then timm's ``BatchNormAct2d`` ``norm`` (eval) as one convolution with bias, then the norm's
    activation: w' = w · γ / √(σ² + ε), b' = (b − μ) · γ / √(σ² + ε) + β; "same" padding as :class:`SamePad`.
    (torch's ``fuse_conv_bn_weights`` computes the same with rsqrt; its last-bit differences move the int8
    copy's calibration, 76 instead of 73 labels of 100, so the recorded figures keep this arithmetic.)"""
    same = type(conv).__name__ == "Conv2dSame"
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    0 if same else conv.padding, conv.dilation, conv.groups, bias=True)  # fmt: skip
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        out.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    pad = [SamePad(conv.kernel_size, conv.stride, conv.dilation)] if same else []
    return nn.Sequential(*pad, out, copy.deepcopy(norm.act))


class PlainEncoder(nn.Module):
    """timm EfficientNet's ``forward_intermediates`` with batch norms folded: (final features, [the outputs of
    ``blocks``' stages ``stages``]), as ``forward_intermediates(x, indices=...)`` returns them."""

    def __init__(self, model: nn.Module, stages: list[int]) -> None:
        super().__init__()
        m = copy.deepcopy(model).eval()
        self.stem = fold(m.conv_stem, m.bn1)
        for block in [b for stage in m.blocks for b in stage]:
            for conv, norm in BLOCK_PAIRS[type(block).__name__]:
                setattr(block, conv, fold(getattr(block, conv), getattr(block, norm)))
                setattr(block, norm, nn.Identity())
        self.blocks, self.head, self.stages = m.blocks, fold(m.conv_head, m.bn2), list(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.stem(x), []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self.stages:
                features.append(x)
        return self.head(x), features


def block_stages(model: nn.Module, indices: list[int]) -> list[int]:
    """The ``blocks`` positions of timm ``feature_info`` indices (``module`` = ``blocks.<i>``)."""
    return [int(model.feature_info[i]["module"].split(".")[1]) for i in indices]


def int8_copy(encoder: PlainEncoder, calibration: list[torch.Tensor], engine: str = "x86") -> nn.Module:
    """``encoder`` quantized (FX static, ``engine``'s default qconfig), activations calibrated on the normalised images."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    config = PrepareCustomConfig().set_non_traceable_module_classes([SamePad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (the API moves to torchao)
        prepared = prepare_fx(copy.deepcopy(encoder), get_default_qconfig_mapping(engine), (calibration[0],),
                              prepare_custom_config=config)  # fmt: skip
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        return convert_fx(prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", help="a folder of training photos (calibration, then the agreement check)")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--check", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", default="x86", choices=["x86", "fbgemm", "onednn", "qnnpack"], help="quantized backend")
    parser.add_argument("--mobilenet", action="store_true", help="also torchvision's MobileNetV2, float and int8 (speed only)")
    parser.add_argument("--profile", action="store_true", help="also the int8 encoder's 8 costliest operators (torch.profiler)")
    parser.add_argument("--by-layer", action="store_true", help="also the int8 and float convolutions' time by kind")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = args.engine
    classifier = load_classifier("efficientnet_lite0").eval()
    model, indices = classifier.model, [1, 2, 3, 4]  # FeatureMaskNet's stages [-4, -3, -2, -1] of Lite0
    paths = expand_image_paths([args.photos])[: args.calibration + args.check]
    if len(paths) < args.calibration + args.check:
        raise SystemExit(f"{args.photos}: {len(paths)} photos, fewer than --calibration + --check")
    images = [classifier.normalize(read_for_model(p, classifier.input_size, classifier.fixed_input_size)[1][None]) for p in paths]
    plain = PlainEncoder(model, block_stages(model, indices)).eval()
    probe = classifier.normalize(torch.rand(1, 3, 224, 298, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        ours, theirs = plain(probe), model.forward_intermediates(probe, indices=indices)
    gap = max((a - b).abs().max().item() for a, b in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]]))
    print(f"plain encoder against timm's forward_intermediates, float32: max |difference| {gap:.1e}")
    quantized = int8_copy(plain, images[: args.calibration], args.engine)
    with torch.no_grad():
        same = [model(x).argmax(-1) == model.forward_head(quantized(x)[0]).argmax(-1) for x in images[args.calibration :]]
    agree = int(sum(same))
    print(f"int8 encoder + float head names the classifier's class on {agree} of {args.check} photos")
    x = classifier.normalize(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        tasks = {
            "forward": lambda: model(x),
            "float encoder (timm)": lambda: model.forward_intermediates(x, indices=indices),
            "float encoder (plain)": lambda: plain(x),
            "int8 encoder": lambda: quantized(x),
        }
        if args.mobilenet:
            float_net, int8_net = mobilenet_pair()
            tasks |= {"MobileNetV2, float": lambda: float_net(x), "MobileNetV2, int8": lambda: int8_net(x)}
        times = interleaved_seconds(tasks, args.rounds)
    print(f"B = 1, 224 px, {args.rounds} rounds, {torch.get_num_threads()} threads, {args.engine} engine")
    print("\n".join(ratio_table(times, dict.fromkeys(times, "forward"), width=24)))
    if args.profile:
        from torch.profiler import profile

        with torch.no_grad(), profile() as prof:
            for _ in range(10):
                quantized(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    if args.by_layer:
        kinds = {"int8": seconds_by_kind(quantized, x), "float": seconds_by_kind(plain, x)}
        print(f"\nconvolutions by kind, ms per pass (mean of 20 passes, each call timed by forward hooks): {', '.join(kinds)}")
        for kind in sorted(kinds["float"], key=lambda k: -kinds["float"][k]):
            print(f"  {kind:<34} {1000 * kinds['int8'].get(kind, float('nan')):>8.2f} {1000 * kinds['float'][kind]:>8.2f}")


def conv_kind(module: nn.Module) -> str | None:
    """e.g. ``depthwise 5×5 stride 2``, ``pointwise``, ``full 3×3 stride 2`` for a (quantized) convolution, else None."""
    if not all(hasattr(module, name) for name in ("kernel_size", "stride", "groups", "in_channels")):
        return None
    k, stride = module.kernel_size, module.stride
    if k == (1, 1) or k == 1:
        return "pointwise"
    shape = "depthwise" if module.groups == module.in_channels else "full"
    return f"{shape} {k[0]}×{k[1]} stride {stride[0]}"


def seconds_by_kind(net: nn.Module, x: torch.Tensor, passes: int = 20) -> dict[str, float]:
    """Each convolution's seconds per pass, summed by :func:`conv_kind` (forward hooks around each call)."""
    starts: dict[int, float] = {}
    totals: dict[str, list[float]] = {}
    hooks = []
    for module in net.modules():
        kind = conv_kind(module)
        if kind is None:
            continue
        hooks.append(module.register_forward_pre_hook(lambda m, _: starts.__setitem__(id(m), time.perf_counter())))
        hooks.append(module.register_forward_hook(
            lambda m, _i, _o, kind=kind: totals.setdefault(kind, []).append(time.perf_counter() - starts[id(m)])))  # fmt: skip
    with torch.no_grad():
        net(x)  # warm-up
        totals.clear()
        for _ in range(passes):
            net(x)
    for hook in hooks:
        hook.remove()
    return {kind: sum(values) / passes for kind, values in totals.items()}


def mobilenet_pair() -> tuple[nn.Module, nn.Module]:
    """torchvision's MobileNetV2 (random weights: for its speed only) in float and quantized with its own recipe
    (fused conv + batch norm + ReLU, the current engine's qconfig, calibrated on random images)."""
    import torchvision
    from torchvision.models.quantization import mobilenet_v2

    int8_net = mobilenet_v2(weights=None, quantize=False).eval()
    int8_net.fuse_model(is_qat=False)
    int8_net.qconfig = torch.ao.quantization.get_default_qconfig(torch.backends.quantized.engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.prepare(int8_net, inplace=True)
        with torch.no_grad():
            int8_net(torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
        torch.ao.quantization.convert(int8_net, inplace=True)
    return torchvision.models.mobilenet_v2().eval(), int8_net


if __name__ == "__main__":
    main()
