"""`actmatch study`: one complete row per config, errors named, helpers by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from actmatch.commands import study
from actmatch.commands.study import STUDY_FIELDS, border_kept


@pytest.fixture()
def two_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture()
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "model:\n  init_args:\n    steps: 3\n"
        "    unet: {class_path: actmatch.explainers.unet.MaskUNet, init_args: {width: 4, depth: 2, working_size: 32}}\n"
        "    fitting: {class_path: actmatch.explainers.fitting.AreaContinuation, init_args: {lr: 0.01}}\n"
        "    losses:\n      - {class_path: actmatch.explainers.losses.CrossEntropy}\n"
    )
    return path


def test_row_on_two_tiny_images_has_every_column(two_images, tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    md = tmp_path / "table.md"
    png = tmp_path / "plot.png"
    code = study.main(
        "study", [str(two_images), "--config", str(tiny_config), "--out", str(out), "--markdown", str(md), "--plot", str(png)]
    )
    assert code == 0
    with (out / "study.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and list(rows[0]) == STUDY_FIELDS
    row = rows[0]
    assert row["config"] == "tiny" and row["images"] == "2"
    assert (row["recipe"], row["recipe_version"]) == ("custom", "0")  # the config names no recipe
    assert all(row[key] != "" for key in STUDY_FIELDS)
    assert 0 <= float(row["kept"]) <= 1 and 0 <= float(row["robust_median"]) <= 1
    for key in ("robust_photos_mean", "dilated_kept", "shift_kept", "readback_kept", "resampled_kept"):
        assert key == "robust_photos_mean" and row[key] == "nan" or 0 <= float(row[key]) <= 1, key  # no photos given: nan
    assert "16 draws" in row["exam"] and "road" in row["exam"]
    assert float(row["area_p25"]) <= float(row["area_median"]) <= float(row["area_p75"])
    assert float(row["fwd_bwd_ms"]) > 0 and float(row["x_fwd_bwd_median"]) > 0
    assert md.read_text().count("| tiny |") == 1 and png.stat().st_size > 0
    assert "tiny" in capsys.readouterr().out
    assert (out / "tiny" / "a" / "summary.json").is_file()  # the same files as `actmatch explain`


def test_bad_config_is_named(two_images, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    fitting: {class_path: actmatch.explainers.fitting.NoSuchFit}\n")
    assert study.main("study", [str(two_images), "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert study.main("study", [str(two_images), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_exam_seed_must_differ_from_the_fit_seed(two_images, capsys):
    with pytest.raises(SystemExit):
        study.main("study", [str(two_images), "--seed", "3", "--exam-seed", "3"])
    assert "--exam-seed must differ from --seed" in capsys.readouterr().err


def test_a_recipe_fitted_on_a_held_out_family_is_refused(two_images, tmp_path, capsys):
    config = tmp_path / "blurred.yaml"
    config.write_text("model:\n  init_args:\n    fill: blur\n    steps: 2\n")
    assert study.main("study", [str(two_images), "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "held-out exam family blur (fill: blur)" in capsys.readouterr().err


def test_border_kept_by_hand():
    mask = torch.zeros(100, 100)
    assert border_kept(mask) == 0.0
    mask[:3, :] = 1  # the top band (3 px = 3 % of 100)
    assert border_kept(mask) == pytest.approx(300 / (100 * 100 - 94 * 94))


def test_resume_keeps_scored_images_and_names_other_settings(two_images, tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    base = [str(two_images), "--config", str(tiny_config), "--out", str(out)]
    assert study.main("study", base) == 0
    summary = out / "tiny" / "a" / "summary.json"
    written = summary.read_text()
    first = list(csv.DictReader((out / "study.csv").open()))[0]
    capsys.readouterr()

    assert study.main("study", base + ["--resume"]) == 0
    assert "2 image(s) already explained" in capsys.readouterr().err
    assert summary.read_text() == written  # not fitted again
    again = list(csv.DictReader((out / "study.csv").open()))[1]
    for key in ("images", "kept", "area_median", "robust_median", "conf_ratio_median", "seconds_median"):
        assert again[key] == first[key]

    # scored with the exam's seed 1000: resuming with seed 7 would mix two exams in one row
    assert study.main("study", [*base, "--exam-seed", "7", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "(seed 1000)" not in err and "(seed 7)" in err and "another --out" in err
    assert summary.read_text() == written


def test_rows_appended_to_a_study_csv_with_older_columns_keep_its_columns(tmp_path):
    """A study.csv begun before a column existed (here: recipe_version) gets rows under its own header."""
    path = tmp_path / "study.csv"
    older = [key for key in STUDY_FIELDS if key != "recipe_version"]
    path.write_text(",".join(older) + "\n")
    row = {key: f"v_{key}" for key in STUDY_FIELDS}
    study._append_csv(path, [row])
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{key: f"v_{key}" for key in older}]
