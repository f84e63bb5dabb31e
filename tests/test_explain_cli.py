"""`actmatch explain` end to end: outputs, bad inputs, atomic writes, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actmatch.commands import explain as explain_cmd

FAST = ["--steps", "3"]


def run(args: list[str]) -> int:
    return explain_cmd.main("explain", args)


def write_variants(folder: Path, source: Path) -> dict[str, Path]:
    """The same photo as grayscale, RGBA, palette and 16-bit files."""
    img = Image.open(source).convert("RGB").resize((96, 64))
    paths = {}
    paths["gray"] = folder / "gray.png"
    img.convert("L").save(paths["gray"])
    paths["rgba"] = folder / "rgba.png"
    img.convert("RGBA").save(paths["rgba"])
    paths["palette"] = folder / "palette.gif"
    img.convert("P").save(paths["palette"])
    paths["sixteen"] = folder / "sixteen.png"
    gray16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(paths["sixteen"])  # uint16 -> a 16-bit PNG
    assert Image.open(paths["sixteen"]).mode.startswith("I")
    return paths


def test_outputs_follow_the_contract(small_coffee_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *FAST]) == 0
    folder = out / "small_coffee"
    mask = np.asarray(Image.open(folder / "mask.png"))
    width, height = Image.open(small_coffee_path).size
    assert mask.shape == (height, width)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert Image.open(folder / "explanation.png").size == (width, height)
    assert Image.open(folder / "figure.png").size[0] > width
    summary = json.loads((folder / "summary.json").read_text())
    for key in ["image", "backbone", "label", "label_name", "confidence_original", "confidence_explanation",
                "label_kept", "mask_area", "steps", "seconds"]:
        assert key in summary
    assert summary["label_name"] == "espresso" and summary["steps"] == 3
    assert 0 <= summary["mask_area"] <= 1
    assert summary["mask_area"] == pytest.approx((mask > 0).mean(), abs=1e-5)
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("__aggregate__")
    assert "label kept" in capsys.readouterr().out


def test_bad_inputs_are_named_and_the_rest_still_explained(small_coffee_path, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    variants = write_variants(photos, small_coffee_path)
    missing = photos / "missing.jpg"
    text = photos / "notes.png"
    text.write_text("this is not an image")
    truncated = photos / "truncated.jpg"
    Image.open(small_coffee_path).convert("RGB").save(photos / "full.jpg", quality=90)
    data = (photos / "full.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    tiny = photos / "tiny.png"
    Image.new("RGB", (8, 8), "red").save(tiny)
    out = tmp_path / "out"
    args = [str(p) for p in variants.values()] + [str(missing), str(text), str(truncated), str(tiny)]
    code = run(args + ["--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 1
    for bad in (missing, text, truncated, tiny):
        assert str(bad) in err
    assert "too small" in err and "no such file" in err
    for name in variants:  # grayscale, RGBA, palette and 16-bit were converted and explained
        stem = variants[name].stem
        mask = np.asarray(Image.open(out / stem / "mask.png"))
        assert mask.shape == (64, 96)
    for bad in (missing, text, truncated, tiny):
        assert not (out / bad.stem).exists()
    csv_text = (out / "summary.csv").read_text()
    assert csv_text.count(",error,") == 4


def test_a_failure_halfway_keeps_the_previous_result(small_coffee_path, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *FAST]) == 0
    folder = out / "small_coffee"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_figure(*args, **kwargs):
        raise OSError("disk full while drawing")

    monkeypatch.setattr(explain_cmd, "_figure_png", broken_figure)
    assert run([str(small_coffee_path), "--out", str(out), *FAST, "--seed", "5"]) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["aggregate.json", "small_coffee", "summary.csv"]


def test_same_seed_gives_the_same_mask(small_coffee_path, tmp_path):
    masks = []
    for name in ("a", "b"):
        assert run([str(small_coffee_path), "--out", str(tmp_path / name), "--steps", "6", "--seed", "1"]) == 0
        masks.append((tmp_path / name / "small_coffee" / "mask.png").read_bytes())
    assert masks[0] == masks[1]


def test_config_file_and_flags(small_coffee_path, tmp_path):
    config = tmp_path / "explainer.yaml"
    config.write_text(
        "model:\n"
        "  init_args:\n"
        "    fill: blur\n"
        "    taps: [blocks.2, blocks.6]\n"
        "    unet:\n"
        "      class_path: actmatch.explainers.unet.MaskUNet\n"
        "      init_args: {width: 8, depth: 2}\n"
        "    losses:\n"
        "      - class_path: actmatch.explainers.losses.ActivationMatching\n"
        "        init_args: {distance: cosine}\n"
        "      - class_path: actmatch.explainers.losses.Area\n"
        "        init_args: {weight: 2.0}\n"
    )
    explainer = explain_cmd.build_explainer(str(config), steps=2)
    assert explainer.fill == "blur" and explainer.taps == ["blocks.2", "blocks.6"]
    assert [t.name for t in explainer.losses] == ["activation_matching", "area"]
    assert explainer.losses[0].distance == "cosine" and explainer.unet.width == 8 and explainer.steps == 2
    assert run([str(small_coffee_path), "--out", str(tmp_path / "o"), "--config", str(config), "--steps", "2"]) == 0


def test_clear_errors_for_bad_setup(small_coffee_path, tmp_path, capsys):
    assert run([str(small_coffee_path), "--out", str(tmp_path), "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert run([str(tmp_path / "empty-folder-*.png"), "--out", str(tmp_path)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_console_script_runs(small_coffee_path, tmp_path):
    exe = Path(sys.executable).with_name("actmatch")
    proc = subprocess.run([str(exe), "explain", str(small_coffee_path), "--out", str(tmp_path), "--steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "small_coffee" / "mask.png").exists()


@pytest.mark.slow
def test_circuit_flag_adds_circuit_outputs(small_coffee_path, tmp_path):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), "--steps", "2", "--circuit"]) == 0
    folder = out / "small_coffee"
    assert (folder / "circuit.json").exists() and (folder / "circuit.png").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["circuit_nodes"] > 0
    assert 0 < summary["circuit_fraction"] <= 1
    assert isinstance(summary["circuit_label_kept"], bool)
