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


def test_a_smoothed_order_keeps_the_mask_first():
    """Mask = pixels 0 and 3 of a 1×4 map, with probabilities 0 and 0.1; outside 0.95 and 0.9. Blurred, every
    probability stays in [0, 1], so the mask (2 + its blurred probability) still ranks above the rest, though
    the outside pixels score higher than the mask's on their own."""
    am = torch.tensor([[[[1.0, 0.95, 0.9, 1.1]]]])
    orders = evaluation_script("ranking_beyond_mask").orders(am, torch.zeros_like(am), (1.0,))
    assert set(_order(orders["smooth1"])[:2]) == {0, 3}
    assert set(orders) == {"am", "gradcam", "am_then_gradcam", "mask_by_gradcam", "smooth1"}


def test_the_rank_mean_order_averages_the_two_orders_on_each_side_of_the_mask():
    """The 2×2 map of the first test: network probabilities 0.9, 0.2 (mask), 0.3, 0.8; Grad-CAM 0, 1, 4, 2.
    Percentile ranks over the 4 pixels (0 lowest, 1 highest): network 1, 0, 1/3, 2/3; Grad-CAM 0, 1/3, 1, 2/3;
    means 1/2, 1/6 inside the mask, 2/3, 2/3 outside (a tie, broken by position). Order: 0, 1, then 2 and 3."""
    script = evaluation_script("ranking_beyond_mask")
    am, gradcam = torch.tensor([[[[1.9, 1.2], [0.3, 0.8]]]]), torch.tensor([[[[0.0, 1.0], [4.0, 2.0]]]])
    ranks = script.percentile_ranks(torch.tensor([0.9, 0.2, 0.3, 0.8]))
    assert torch.allclose(ranks, torch.tensor([1.0, 0.0, 1 / 3, 2 / 3]))
    order = script.orders(am, gradcam, rank_mean=True)["rank_mean"]
    assert torch.allclose(order.flatten(), torch.tensor([2.5, 2 + 1 / 6, 2 / 3, 2 / 3]))
    assert _order(order)[:2] == [0, 1]
