"""experiments/evaluation/paired_benchmarks.py: two hand-made results.csv files, counts worked out by hand."""

from __future__ import annotations

import csv

from lightning_helpers import evaluation_script


def _results(folder, method: str, areas: list[float]) -> None:
    """``folder/results.csv`` with one row per image p, q, r: the robust-sufficient areas given, 0.5 elsewhere."""
    script = evaluation_script("paired_benchmarks")
    folder.mkdir()
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "method", "error", *script.COLUMNS])
        writer.writeheader()
        for image, area in zip("pqr", areas):
            writer.writerow({"image": image, "method": method, "error": "", **dict.fromkeys(script.COLUMNS, 0.5),
                             "robust_sufficient_area": area})  # fmt: skip


def test_one_method_of_a_is_paired_with_another_of_b(tmp_path, capsys):
    """A's am against B's centre on p, q, r: robust-sufficient areas 0.1, 0.2, 0.3 against 0.2, 0.2, 0.5 (lower is
    better): A wins 2, ties 1, loses 0, A − B = −0.1 (−0.1, 0, −0.2: mean and median); every other column ties 0–3–0."""
    _results(tmp_path / "a", "am", [0.1, 0.2, 0.3])
    _results(tmp_path / "b", "centre", [0.2, 0.2, 0.5])
    evaluation_script("paired_benchmarks").main([str(tmp_path / "a"), str(tmp_path / "b"), "--method-b", "centre"])
    printed = capsys.readouterr().out
    assert "am (A) against centre (B): 3 paired images" in printed
    line = next(row for row in printed.splitlines() if row.startswith("robust_sufficient_area"))
    assert line.split()[2:5] == ["0.200", "0.300", "-0.100"] and "2-1-0" in line.split()
    assert next(row for row in printed.splitlines() if row.startswith("dg_score")).split().count("0-3-0") == 1
