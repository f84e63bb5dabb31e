"""experiments/evaluation/frontier.py with the maps computed on images: answers known without the project's metrics."""

from __future__ import annotations

import csv
import shutil

import pytest

from lightning_helpers import evaluation_script


def test_the_whole_image_is_kept_everywhere_and_pairs_are_counted(coffee_path, tmp_path, capsys):
    """Cut at area 1, every method keeps every pixel: the explanation is the photo itself, on every exam
    background too, so kept, robustness and p(e)/p(x) are 1 for each; paired, the whole-image cuts tie."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(coffee_path, folder / "coffee.png")
    out = tmp_path / "not" / "made" / "yet" / "frontier.csv"  # its folder is made before the images are judged
    frontier = evaluation_script("frontier")
    argv = ["--images", str(folder), "--methods", "gradcam,saliency,centre", "--areas", "0.3,1.0", "--paired", "gradcam"]
    assert frontier.main([*argv, "--out", str(out), "--plot-kept", str(tmp_path / "kept.png")]) == 0
    rows = {(r["method"], float(r["area"])): r for r in csv.DictReader(out.open())}
    assert set(rows) == {(m, a) for m in ("gradcam", "saliency", "centre") for a in (0.3, 1.0)}
    for method in ("gradcam", "saliency", "centre"):
        whole = rows[method, 1.0]
        assert float(whole["kept"]) == 1 and float(whole["robust_median"]) == 1
        assert float(whole["conf_ratio_median"]) == pytest.approx(1, abs=1e-3)
    printed = capsys.readouterr().out
    assert "saliency      1.00  n   1  kept 0–1–0, p 1   robustness 0–1–0, p 1" in printed
    assert (tmp_path / "kept.png").stat().st_size > 0


def test_pairs_are_the_images_both_methods_have():
    """A keeps the label on photos p and q, B on q only; r has no row for A: 1–1–0 over 2 photos, and the
    sign test of 1 in 1 is 1."""
    per = {
        ("a", 0.5): {"p": {"kept": 1.0, "robustness": 0.5}, "q": {"kept": 1.0, "robustness": 1.0}},
        ("b", 0.5): {
            "p": {"kept": 0.0, "robustness": 0.25},
            "q": {"kept": 1.0, "robustness": 1.0},
            "r": {"kept": 1.0, "robustness": 1.0},
        },
    }
    table = evaluation_script("frontier").paired_table(per, "b", ["a", "b"], [0.5])
    assert "a             0.50  n   2  kept 1–1–0, p 1   robustness 1–1–0, p 1" in table


def test_a_run_and_images_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluation_script("frontier").main([str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "x.csv")])
    assert "either a benchmark run folder or --images" in capsys.readouterr().err
