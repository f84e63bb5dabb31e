"""experiments/evaluation/ranking_inside_mask.py and complement_probability.py: the mask's gradient, the orders
and the probability left without the mask, worked out by hand."""

from __future__ import annotations

import torch
from torch import nn

from lightning_helpers import evaluation_script


class Linear(nn.Module):
    """f(x) = W · x over a 1×2 image (two classes), mean colour (0.3, 0.4, 0.5): the gradient is known by hand."""

    data_config = {"mean": (0.3, 0.4, 0.5)}

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]], [[3.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.weight).flatten(2).sum(-1)


def _order(scores: torch.Tensor) -> list[int]:
    return torch.argsort(scores.flatten(), descending=True).tolist()


def test_the_mask_gradient_is_the_weighted_difference_to_the_mean_colour():
    """f_0(e) = Σ W_c,i e_c,i with e = m x + (1 − m) μ, so ∂f_0/∂m_i = Σ_c W_c,i (x_c,i − μ_c), whatever m is.
    x = 1 everywhere: pixel 0: 1·0.7 + 0·0.6 + 3·0.5 = 2.2; pixel 1: 2·0.7 − 1·0.6 + 0·0.5 = 0.8."""
    script = evaluation_script("ranking_inside_mask")
    x = torch.ones(1, 3, 1, 2)
    for mask in (torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]])):
        assert torch.allclose(script.mask_gradient(Linear(), x, mask, 0), torch.tensor([[[[2.2, 0.8]]]]))


def test_the_mask_comes_first_in_its_own_order_then_the_rest_in_the_network_s():
    """A 1×4 map: mask = pixels 1 and 3 (map ≥ 1), the inside order ranks 3 above 1 though the network ranks 1
    above 3; outside, the network's 0.9 (pixel 2) above 0.2 (pixel 0)."""
    script = evaluation_script("ranking_inside_mask")
    mask = torch.tensor([[[[False, True, False, True]]]])
    order = script.inside_first(mask, torch.tensor([[[[5.0, -1.0, 7.0, 3.0]]]]), torch.tensor([[[[0.2, 0.8, 0.9, 0.1]]]]))
    assert _order(order) == [3, 1, 2, 0]
    assert order[mask].min() >= 2 and order[~mask].max() < 1


def test_the_complement_probability_removes_the_mask_with_the_mean_colour():
    """Removing pixel 0 of x = 1 (mask [1, 0]) gives pixel 0 = μ = (0.3, 0.4, 0.5) and pixel 1 = 1: logit 0 =
    1·0.3 + 0·0.4 + 3·0.5 + 2·1 − 1·1 + 0·1 = 2.8, logit 1 = 0, so p_0 = σ(2.8)."""
    script = evaluation_script("complement_probability")
    p = script.complement_probability(Linear(), torch.ones(1, 3, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), 0)
    assert abs(p - torch.sigmoid(torch.tensor(2.8)).item()) < 1e-6


def test_the_class_map_order_is_captums_grad_cam_before_its_relu():
    """The ``cam`` orders rank the pixels by Grad-CAM of the predicted class before its ReLU (Captum's
    LayerGradCam on the pooled features of a random ResNet, standardised, bilinear to the image), and
    ``unit_interval`` keeps that order inside [0, 1)."""
    from captum.attr import LayerAttribution, LayerGradCam

    from actmatch.explainers.classifier import load_classifier

    script = evaluation_script("ranking_inside_mask")
    torch.manual_seed(0)
    classifier = load_classifier("resnet10t", pretrained=False).eval()
    image = torch.rand(1, 3, 96, 128)
    normalized = classifier.normalize(image)
    model = classifier.model
    target = model(normalized).argmax(-1)
    grad_cam = LayerGradCam(model, model.layer4).attribute(normalized, target=target, relu_attributions=False)
    expected = LayerAttribution.interpolate((grad_cam - grad_cam.mean()) / grad_cam.std(), (96, 128), interpolate_mode="bilinear")
    found = script.class_map(classifier, image)
    assert torch.allclose(found, expected, atol=1e-4)
    unit = script.unit_interval(found)
    ascending = found.flatten().argsort()
    assert unit.min() >= 0 and unit.max() < 1 and (unit.flatten()[ascending].diff() >= 0).all()
