"""experiments/evaluation/ranking_beyond_mask.py: the orders it screens, on a 2×2 map worked out by hand."""

from __future__ import annotations

import torch

from lightning_helpers import evaluation_script


def _order(scores: torch.Tensor) -> list[int]:
    return torch.argsort(scores.flatten(), descending=True).tolist()


def test_the_mask_comes_first_and_each_side_follows_its_own_order():
    """am's mask is pixels 0 and 1 (map ≥ 1; network order 0, 1); Grad-CAM ranks 2, 3, 1, 0. Network inside then
    Grad-CAM outside: 0, 1, 2, 3; Grad-CAM inside then outside: 1, 0, 2, 3."""
    am, gradcam = torch.tensor([[[[1.9, 1.2], [0.3, 0.8]]]]), torch.tensor([[[[0.0, 1.0], [4.0, 2.0]]]])
    orders = evaluation_script("ranking_beyond_mask").orders(am, gradcam)
    assert _order(orders["am"]) == [0, 1, 3, 2]
    assert _order(orders["am_then_gradcam"]) == [0, 1, 2, 3]
    assert _order(orders["mask_by_gradcam"]) == [1, 0, 2, 3]
    assert _order(orders["gradcam"]) == [2, 3, 1, 0]
