"""experiments/evaluation/paired_studies.py: the masks' overlap, against counts worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lightning_helpers import evaluation_script


def _mask(path, cells: list[tuple[int, int]]) -> None:
    array = np.zeros((4, 4), dtype=np.uint8)
    for row, col in cells:
        array[row, col] = 255
    path.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path / "mask_input.png")


def test_mask_iou_counts_pixels_by_hand(tmp_path):
    """A keeps 3 pixels, B 3, sharing 2: IoU 2 / 4 = 0.5; a mask with itself 1; two empty masks 1; disjoint 0."""
    script = evaluation_script("paired_studies")
    _mask(tmp_path / "a", [(0, 0), (0, 1), (1, 1)])
    _mask(tmp_path / "b", [(0, 1), (1, 1), (3, 3)])
    _mask(tmp_path / "c", [(2, 2)])
    _mask(tmp_path / "empty1", [])
    _mask(tmp_path / "empty2", [])
    iou = script.mask_iou
    assert iou(tmp_path / "a" / "mask_input.png", tmp_path / "b" / "mask_input.png") == 0.5
    assert iou(tmp_path / "a" / "mask_input.png", tmp_path / "a" / "mask_input.png") == 1.0
    assert iou(tmp_path / "empty1" / "mask_input.png", tmp_path / "empty2" / "mask_input.png") == 1.0
    assert iou(tmp_path / "a" / "mask_input.png", tmp_path / "c" / "mask_input.png") == 0.0


def test_mask_iou_refuses_masks_of_different_sizes(tmp_path):
    script = evaluation_script("paired_studies")
    _mask(tmp_path / "a", [(0, 0)])
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(tmp_path / "b" / "mask_input.png")
    with pytest.raises(SystemExit, match="differ in size"):
        script.mask_iou(tmp_path / "a" / "mask_input.png", tmp_path / "b" / "mask_input.png")


def test_main_prints_the_overlap_of_the_paired_images(tmp_path, capsys):
    """Two images: one mask pair identical (IoU 1), one sharing 1 of 3 pixels (1/3). Median 2/3, one the same
    pixel for pixel, one below 0.8 and one below 0.5."""
    script = evaluation_script("paired_studies")
    row = {"label_kept": True, "robustness": 0.5, "robust_photos": 0.25, "confidence_ratio": 0.9, "mask_area": 0.125}
    for run, second in (("A", [(0, 0), (0, 1)]), ("B", [(0, 1), (2, 2)])):
        for image, cells in (("same", [(1, 1)]), ("other", second)):
            _mask(tmp_path / run / image, cells)
            (tmp_path / run / image / "summary.json").write_text(json.dumps(row))
    assert script.main([str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    out = capsys.readouterr().out
    assert "2 paired images" in out
    assert "IoU over 2 images: median 0.667" in out
    assert "the same pixel for pixel 1, below 0.8 1, below 0.5 1" in out
