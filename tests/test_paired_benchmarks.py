"""experiments/evaluation/paired_benchmarks.py: hand-made results.csv files, counts and p values worked out by hand."""

from __future__ import annotations

import csv

import pytest

from lightning_helpers import evaluation_script


def _results(folder, rows: dict[str, list[float]]) -> None:
    """``folder/results.csv`` with one row per image and method: method -> its robust-sufficient areas, 0.5 elsewhere."""
    script = evaluation_script("paired_benchmarks")
    folder.mkdir()
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "method", "error", *script.COLUMNS])
        writer.writeheader()
        for method, areas in rows.items():
            for n, area in enumerate(areas):
                writer.writerow({"image": f"photo{n}", "method": method, "error": "",
                                 **dict.fromkeys(script.COLUMNS, 0.5), "robust_sufficient_area": area})  # fmt: skip


def _line(printed: str, start: str, block: int = 0) -> list[str]:
    return [row for row in printed.splitlines() if row.startswith(start)][block].split()


def test_one_method_of_a_is_paired_with_another_of_b(tmp_path, capsys):
    """A's am against B's centre on 3 photos: robust-sufficient areas 0.1, 0.2, 0.3 against 0.2, 0.2, 0.5 (lower is
    better): A wins 2, ties 1, loses 0, A − B = −0.1 (−0.1, 0, −0.2: mean and median); every other column ties 0–3–0."""
    _results(tmp_path / "a", {"am": [0.1, 0.2, 0.3]})
    _results(tmp_path / "b", {"centre": [0.2, 0.2, 0.5]})
    evaluation_script("paired_benchmarks").main([str(tmp_path / "a"), str(tmp_path / "b"), "--method-b", "centre"])
    printed = capsys.readouterr().out
    assert "am (A) against centre (B): 3 paired images" in printed
    line = _line(printed, "robust_sufficient_area")
    assert line[2:5] == ["0.200", "0.300", "-0.100"] and "2-1-0" in line
    assert _line(printed, "dg_score").count("0-3-0") == 1


def test_holm_runs_over_every_method_and_column_printed(tmp_path, capsys):
    """am and gradcam of A against B's centre, two columns: 4 comparisons. am's robust-sufficient area is 0.1 below the
    centre's on all 8 photos (one size, so the exact sign test): p = 2 · 2⁻⁸ = 0.0078, and Holm over 4 gives
    4 · 0.0078 = 0.031; gradcam ties the centre (p = 1), and so does every DG score."""
    _results(tmp_path / "a", {"am": [0.2] * 8, "gradcam": [0.3] * 8})
    _results(tmp_path / "b", {"centre": [0.3] * 8})
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--method", "am,gradcam", "--method-b", "centre",
            "--columns", "robust_sufficient_area,dg_score"]  # fmt: skip
    evaluation_script("paired_benchmarks").main(argv)
    printed = capsys.readouterr().out
    assert "Holm over 4 comparisons (2 × 2)" in printed and "gradcam (A) against centre (B): 8 paired images" in printed
    am, gradcam = _line(printed, "robust_sufficient_area", 0), _line(printed, "robust_sufficient_area", 1)
    assert am[-3] == "8-0-0" and float(am[-2]) == pytest.approx(2 / 2**8, abs=1e-4)
    assert float(am[-1]) == pytest.approx(4 * 2 / 2**8, abs=1e-3)
    assert gradcam[-3] == "0-8-0" and float(gradcam[-1]) == 1


def test_an_unknown_column_is_named(tmp_path, capsys):
    _results(tmp_path / "a", {"am": [0.2]})
    with pytest.raises(SystemExit):
        evaluation_script("paired_benchmarks").main([str(tmp_path / "a"), str(tmp_path / "a"), "--columns", "robustnes"])
    assert "unknown ['robustnes']" in capsys.readouterr().err
