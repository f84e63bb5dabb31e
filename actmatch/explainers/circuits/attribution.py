"""Attribution ranking of circuit channels: the channels the label needs, not the loudest ones.

A channel's attribution is the first-order estimate of how much log p(label) falls when the
channel is ablated to its fill r_c (0 for zero ablation, the mean for mean ablation):

    A_c = Σ_p (a_c(p) − r_c) · ∂ log p_label / ∂ a_c(p).

:func:`attribution_select` picks k channels per layer in two steps, because one gradient at the
full model misjudges a network with 90% of its channels gone: rank by A at the full model and
keep the top min(C, 2k); recompute A with every other channel ablated; keep the top k of those.
Measured on the 100 ImageNet-sample images (EfficientNet-Lite0, block taps, zero ablation):
see docs/circuits.md.

Gradients are taken under ``torch.enable_grad()`` with the input as the leaf, so this works with
a frozen classifier and inside loops that disable grad (not inside ``torch.inference_mode``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn

from actmatch.explainers.circuits.ablation import Ablation, ablated, make_ablation
from actmatch.explainers.circuits.nodes import top_channels

__all__ = ["channel_attribution", "attribution_select"]


def channel_attribution(
    classifier: nn.Module,
    image: torch.Tensor,
    layers: list[str],
    label: int,
    ablation: str | Ablation = "zero",
    keep: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Layer -> (C,) attribution A_c of ``label`` for ``image`` (1, 3, H, W), on CPU.

    Args:
        keep: layer -> (C,) bool circuit; channels outside it are ablated during the pass (their
            attribution is then 0). None: the full model.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("channel attribution needs autograd; call it outside torch.inference_mode()")
    ablation = make_ablation(ablation)
    model = getattr(classifier, "model", classifier)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}

    def record(layer: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            outputs[layer] = output  # registered after the ablation hooks: sees the ablated output

        return hook

    with ablated(classifier, keep, ablation) if keep else nullcontext():
        handles = [modules[layer].register_forward_hook(record(layer)) for layer in layers]
        try:
            with torch.enable_grad():
                logits = classifier(image.detach().clone().requires_grad_(True))
                objective = logits.log_softmax(-1)[0, label]
                grads = torch.autograd.grad(objective, [outputs[layer] for layer in layers])
        finally:
            for handle in handles:
                handle.remove()
    scores = {}
    for layer, grad in zip(layers, grads):
        out = outputs[layer].detach()
        contribution = (out - ablation.fill(layer, out)) * grad  # (1, C, h, w) or (1, C)
        scores[layer] = (contribution.flatten(2).sum(-1) if contribution.dim() == 4 else contribution)[0].cpu()
    return scores


def attribution_select(
    classifier: nn.Module,
    image: torch.Tensor,
    counts: Mapping[str, int],
    label: int,
    ablation: str | Ablation = "zero",
    full_scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Layer -> indices of the ``counts[layer]`` channels chosen in two attribution steps, best first.

    Args:
        counts: channels to keep per tapped layer.
        full_scores: :func:`channel_attribution` at the full model, if already computed.
    """
    layers = list(counts)
    full_scores = full_scores or channel_attribution(classifier, image, layers, label, ablation)
    wide = {}
    for layer in layers:
        channels = full_scores[layer].numel()
        mask = torch.zeros(channels, dtype=torch.bool)
        mask[top_channels(full_scores[layer], min(channels, 2 * counts[layer]))] = True
        wide[layer] = mask
    if all(bool(mask.all()) for mask in wide.values()):
        return {layer: top_channels(full_scores[layer], counts[layer]) for layer in layers}
    refined = channel_attribution(classifier, image, layers, label, ablation, keep=wide)
    return {layer: top_channels(refined[layer].masked_fill(~wide[layer], -float("inf")), counts[layer]) for layer in layers}
