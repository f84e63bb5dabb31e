"""experiments/evaluation/background_surrogates.py: answers worked out by hand on a classifier of channel means."""

from __future__ import annotations

import torch
from torch import nn

from lightning_helpers import evaluation_script


class ChannelMeans(nn.Module):
    """A 3-class 'classifier' whose logit c is the mean of colour channel c: its decisions are known by hand."""

    input_size, num_classes = 16, 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def test_kept_share_counts_the_backgrounds_on_which_the_label_survives():
    """x is pure red (label 0); the cut keeps the left quarter, so the planted red mean is 0.25 and another
    channel of value v in the background has mean 0.75 v. Backgrounds green 0.2 (0.15: kept), green 0.4 (0.30:
    lost) and blue 1 (0.75: lost): one of three kept. The whole image as the cut keeps all three."""
    script = evaluation_script("background_surrogates")
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 1
    quarter = torch.zeros(1, 1, 4, 4)
    quarter[..., :1] = 1
    backgrounds = torch.zeros(3, 3, 4, 4)
    backgrounds[0, 1], backgrounds[1, 1], backgrounds[2, 2] = 0.2, 0.4, 1.0
    assert abs(script.kept_share(ChannelMeans(), x, quarter, backgrounds, 0) - 1 / 3) < 1e-6
    assert script.kept_share(ChannelMeans(), x, torch.ones(1, 1, 4, 4), backgrounds, 0) == 1.0


def test_rival_images_raise_the_logit_of_their_class():
    """Gradient ascent on the mean of channel c from pink noise drives that channel up: each image ends up
    classified as its own random class."""
    script = evaluation_script("background_surrogates")
    images, classes = script.rival_images(ChannelMeans(), 6, 40)
    assert images.shape == (6, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(ChannelMeans()(images).argmax(-1), classes)
