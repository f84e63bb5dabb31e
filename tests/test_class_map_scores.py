"""experiments/evaluation/class_map_scores.py: answers known without the project's metrics."""

from __future__ import annotations

import shutil

import numpy as np

from lightning_helpers import evaluation_script


def test_the_whole_image_keeps_the_label_at_its_own_confidence(coffee_path, tmp_path):
    """Cut at area 1, every pixel is kept: the explanation is the photo, so every class map keeps the
    label with p(e)/p(x) = 1; at a tenth of the image none can be the photo itself."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(coffee_path, folder / "coffee.png")
    rows = evaluation_script("class_map_scores").screen(folder, [0.1, 1.0])
    assert set(rows) == {"logit", "log_probability", "margin"}
    for r in rows.values():
        assert r.shape == (1, 2, 2)
        assert r[0, 1, 0] == 1 and abs(r[0, 1, 1] - 1) < 1e-4
        assert r[0, 0, 1] != 1


def test_paired_kept_counts_the_discordant_photos():
    """Photos 0 and 3 only A keeps, photo 2 only B: 2–1, and the two-sided sign test of 2 in 3 is 1."""
    wins, losses, p = evaluation_script("class_map_scores").paired_kept(np.array([1, 1, 0, 1]), np.array([0, 1, 1, 0]))
    assert (wins, losses) == (2, 1) and p == 1.0
