"""`actmatch explain` end to end: outputs, bad inputs, atomic writes, determinism.

These tests are about the command's contract, not the quality of the fit: most fit the default
classifier and loss terms for 3 steps with a plain area continuation (``--config`` of
:func:`~lightning_helpers.plain_fit_config`, no pruning) on a small copy of the espresso photo.
The default recipe runs end to end at a small input size in the determinism test, and at full size
in the behaviour tests (``make test-behaviour``).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from actmatch import results
from actmatch.commands import explain as explain_cmd
from lightning_helpers import PLAIN_FITTING, plain_fit_config, tiny_explainer_config, torch_threads

STEPS = ["--steps", "3"]


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> list[str]:
    """A cheap recipe: the default classifier and loss terms, 3 steps of a plain fit."""
    return ["--config", str(plain_fit_config(tmp_path_factory.mktemp("recipe") / "plain.yaml")), *STEPS]


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


def test_outputs_follow_the_contract(small_coffee_path, tmp_path, capsys, fast):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    folder = out / "small_coffee"
    mask = np.asarray(Image.open(folder / "mask.png"))
    width, height = Image.open(small_coffee_path).size
    assert mask.shape == (height, width)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    classified = np.asarray(Image.open(folder / "mask_input.png"))  # what the classifier saw
    summary = json.loads((folder / "summary.json").read_text())
    assert set(np.unique(classified).tolist()) <= {0, 255} and min(classified.shape) == summary["input_size"]
    assert Image.open(folder / "explanation.png").size == (width, height)
    assert Image.open(folder / "figure.png").size[0] > width
    summary = json.loads((folder / "summary.json").read_text())
    for key in [
        "image",
        "backbone",
        "label",
        "label_name",
        "confidence_original",
        "confidence_explanation",
        "label_kept",
        "mask_area",
        "steps",
        "seconds",
    ]:
        assert key in summary
    assert summary["label_name"] == "espresso" and summary["steps"] == 3
    assert 0 <= summary["mask_area"] <= 1
    assert summary["mask_area"] == pytest.approx((mask > 0).mean(), abs=1e-5)
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("__aggregate__")
    assert "label kept" in capsys.readouterr().out


def test_bad_inputs_are_named_and_the_rest_still_explained(small_coffee_path, tmp_path, capsys, fast):
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
    code = run(args + ["--out", str(out), *fast])
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


def test_a_failure_halfway_keeps_the_previous_result(small_coffee_path, tmp_path, monkeypatch, fast):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    folder = out / "small_coffee"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_figure(*args, **kwargs):
        raise OSError("disk full while drawing")

    monkeypatch.setattr(results, "_figure_png", broken_figure)
    assert run([str(small_coffee_path), "--out", str(out), *fast, "--seed", "5", "--overwrite"]) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["aggregate.json", "report.html", "small_coffee", "summary.csv"]


def test_same_seed_gives_the_same_mask(small_coffee_path, tmp_path):
    """The default recipe (no --config: class-map network, lookahead, scan, border-free cut) at a 64 px input,
    where every stage runs on few cells; its results go by the faithful preset's name and version."""
    masks = []
    for name in ("a", "b"):
        assert (
            run([str(small_coffee_path), "--out", str(tmp_path / name), "--steps", "6", "--seed", "1", "--input-size", "64"]) == 0
        )
        masks.append((tmp_path / name / "small_coffee" / "mask.png").read_bytes())
    assert masks[0] == masks[1]
    summary = json.loads((tmp_path / "a" / "small_coffee" / "summary.json").read_text())
    assert (summary["recipe"], summary["recipe_version"]) == ("faithful", 4)


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
        "    fitting:\n"
        "      class_path: actmatch.explainers.fitting.AreaContinuation\n"
        "      init_args:\n"
        "        lookahead: 3\n"
        "        lookahead_every: 2\n"
        "        criterion: {class_path: actmatch.explainers.criteria.Sufficient, init_args: {fill: blur}}\n"
    )
    explainer = explain_cmd.build_explainer(str(config), steps=2)
    assert explainer.fill == "blur" and explainer.taps == ["blocks.2", "blocks.6"]
    assert [t.name for t in explainer.losses] == ["activation_matching", "area"]
    assert explainer.losses[0].distance == "cosine" and explainer.unet.width == 8 and explainer.steps == 2
    assert type(explainer.fitting).__name__ == "AreaContinuation" and explainer.fitting.lookahead == 3
    assert explainer.fitting.criterion.fill == "blur"  # a mask is kept with the fill the steps use
    assert run([str(small_coffee_path), "--out", str(tmp_path / "o"), "--config", str(config), "--steps", "2"]) == 0


def test_clear_errors_for_bad_setup(small_coffee_path, tmp_path, capsys):
    assert run([str(small_coffee_path), "--out", str(tmp_path), "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert run([str(tmp_path / "empty-folder-*.png"), "--out", str(tmp_path)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_console_script_runs(small_coffee_path, tmp_path, fast):
    exe = Path(sys.executable).with_name("actmatch")
    proc = subprocess.run(
        [str(exe), "explain", str(small_coffee_path), "--out", str(tmp_path), *fast], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "small_coffee" / "mask.png").exists()


@pytest.mark.behaviour  # the default recipe at full size, then the circuit readout and its ablation test
def test_circuit_flag_adds_circuit_outputs(small_coffee_path, tmp_path):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), "--steps", "2", "--circuit"]) == 0
    folder = out / "small_coffee"
    assert (folder / "circuit.json").exists() and (folder / "circuit.png").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["circuit_nodes"] > 0
    assert 0 < summary["circuit_fraction"] <= 1
    assert isinstance(summary["circuit_label_kept"], bool)


def dataset_folder(root: Path) -> dict[str, Path]:
    """Class sub-folders with clashing file names, a same-stem pair and an unreadable file."""
    rng = np.random.default_rng(1)
    files = {
        "a/img_001": root / "a" / "img_001.jpg",
        "b/img_001": root / "b" / "img_001.jpg",
        "b/deep/img_002": root / "b" / "deep" / "img_002.png",
        "a/twin.jpg": root / "a" / "twin.jpg",
        "a/twin.png": root / "a" / "twin.png",
    }
    for i, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(path)
    (root / "b" / "broken.jpg").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / ".hidden" / "skip.png")
    return files


def test_expand_image_items_keeps_relative_folders(tmp_path):
    from actmatch.datamodules.images import expand_image_items

    files = dataset_folder(tmp_path / "data")
    items = expand_image_items([str(tmp_path / "data"), str(files["a/img_001"])])  # the file twice: kept once
    folders = {item.path: item.folder for item in items}
    assert len(items) == 6 and folders[files["a/img_001"]] == "a/img_001" and folders[files["b/img_001"]] == "b/img_001"
    assert folders[files["b/deep/img_002"]] == "b/deep/img_002"
    twins = [folders[files["a/twin.jpg"]], folders[files["a/twin.png"]]]
    assert twins[0] != twins[1] and all(t.startswith("a/twin-") for t in twins)
    again = [i.folder for i in expand_image_items([files["a/twin.png"].parent]) if "twin" in i.folder]
    assert [t.removeprefix("a/") for t in twins] == again  # the hash depends on the file, not on the order
    globbed = expand_image_items([str(tmp_path / "data" / "*" / "img_001.jpg")])
    assert [i.folder for i in globbed] == ["a/img_001", "b/img_001"]
    named = expand_image_items([files["a/img_001"], files["b/img_001"]])  # same stem from two inputs
    assert len({i.folder for i in named}) == 2 and all(i.folder.startswith("img_001-") for i in named)


def test_batched_folder_layout_and_folder_column(tmp_path, capsys):
    files = dataset_folder(tmp_path / "data")
    out, config = tmp_path / "out", tiny_explainer_config(tmp_path / "tiny.yaml")
    code = run(
        [str(tmp_path / "data"), "--out", str(out), "--config", str(config), "--input-size", "48", "--batch-size", "2", *STEPS]
    )
    assert code == 1 and "broken.jpg" in capsys.readouterr().err  # the bad file fails alone
    import csv

    with (out / "summary.csv").open() as handle:
        rows = {r["image"]: r for r in csv.DictReader(handle)}
    assert rows[str(tmp_path / "data" / "b" / "broken.jpg")]["status"] == "error"
    for path in files.values():
        row = rows[str(path)]
        assert row["status"] == "ok"
        folder = out / row["folder"]
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["folder"] == row["folder"] and summary["steps"] == 3
        width, height = Image.open(path).size
        assert np.asarray(Image.open(folder / "mask.png")).shape == (height, width)  # back to the file's size
    assert (out / "a" / "img_001").is_dir() and (out / "b" / "img_001").is_dir() and (out / "b" / "deep" / "img_002").is_dir()
    assert not list(out.rglob(".*"))


def test_rerun_skips_complete_folders_and_overwrite_redoes_them(small_coffee_path, tmp_path, monkeypatch, capsys, fast):
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    first = (out / "summary.csv").read_text()

    def no_fit(*args, **kwargs):
        raise RuntimeError("a complete image was fitted again")

    monkeypatch.setattr(explain_cmd.ActMatchExplainer, "fit_images", no_fit)
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    assert "1 image(s) already explained" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == first  # the row comes back from summary.json
    assert run([str(small_coffee_path), "--out", str(out), *fast, "--overwrite"]) == 1  # redone: fit_images called
    assert "a complete image was fitted again" in capsys.readouterr().err


def test_rerun_with_another_recipe_explains_again(small_coffee_path, tmp_path, capsys, fast):
    """A folder written with other settings (here: steps) is not passed off as this run's result."""
    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    first = json.loads(next(out.rglob("summary.json")).read_text())
    assert (first["recipe"], first["recipe_version"]) == ("custom", 0)  # a config that names no recipe
    capsys.readouterr()
    other = [*fast[: fast.index("--steps")], "--steps", "2"]
    assert run([str(small_coffee_path), "--out", str(out), *other]) == 0
    err = capsys.readouterr().err
    assert "explained with another recipe" in err and "already explained" not in err
    second = json.loads(next(out.rglob("summary.json")).read_text())
    assert second["steps"] == 2 and second["recipe_digest"] != first["recipe_digest"]


def test_rerun_after_an_explainer_code_change_explains_again(small_coffee_path, tmp_path, monkeypatch, capsys, fast):
    """The same settings with edited explainer code (its source digest) are another recipe: the folder
    the earlier code wrote is not passed off as this code's masks."""
    from actmatch import results

    out = tmp_path / "out"
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    first = json.loads(next(out.rglob("summary.json")).read_text())
    capsys.readouterr()
    monkeypatch.setattr(results, "explainer_source_digest", lambda: "edited")
    assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    err = capsys.readouterr().err
    assert "explained with another recipe" in err and "already explained" not in err
    assert json.loads(next(out.rglob("summary.json")).read_text())["recipe_digest"] != first["recipe_digest"]


def test_rerun_with_another_thread_count_explains_again(small_coffee_path, tmp_path, capsys, fast):
    """The order of float sums follows torch's thread count, and a fit can end elsewhere with it: a folder
    written with 2 threads is not passed off as a 1-thread run's mask, and summary.json says which it was."""
    out = tmp_path / "out"
    with torch_threads(2):
        assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    first = json.loads(next(out.rglob("summary.json")).read_text())
    capsys.readouterr()
    with torch_threads(1):
        assert run([str(small_coffee_path), "--out", str(out), *fast]) == 0
    err = capsys.readouterr().err
    assert "explained with another recipe" in err and "already explained" not in err
    second = json.loads(next(out.rglob("summary.json")).read_text())
    assert first["arithmetic"] == f"cpu, 2 threads, torch {torch.__version__}"
    assert second["arithmetic"] == f"cpu, 1 thread, torch {torch.__version__}"
    assert second["recipe_digest"] != first["recipe_digest"]


def test_explainer_source_digest_follows_the_files(tmp_path, monkeypatch):
    """The digest is sha1 over (path, content) of every explainers/ and datamodules/ module: a changed
    byte in one file changes it, the same files give the same digest."""
    import hashlib
    import sys
    import types

    import actmatch
    from actmatch import results

    def package(name, files):
        root = tmp_path / name
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return types.SimpleNamespace(__file__=str(root / "__init__.py"), __name__=f"actmatch.{name}")

    def digest(explainers_files):
        for name, files in [("explainers", explainers_files), ("datamodules", {"__init__.py": ""})]:
            fake = package(name, files)
            monkeypatch.setattr(actmatch, name, fake)
            monkeypatch.setitem(sys.modules, f"actmatch.{name}", fake)
        results.explainer_source_digest.cache_clear()
        try:
            return results.explainer_source_digest()
        finally:
            results.explainer_source_digest.cache_clear()

    files = {"__init__.py": "", "fitting.py": "a = 1\n"}
    by_hand = hashlib.sha1()
    for name, text in [("actmatch.explainers/__init__.py", ""), ("actmatch.explainers/fitting.py", "a = 1\n"),
                       ("actmatch.datamodules/__init__.py", "")]:  # fmt: skip
        by_hand.update(name.encode() + b"\0" + text.encode() + b"\0")
    assert digest(files) == by_hand.hexdigest()
    assert digest({**files, "fitting.py": "a = 2\n"}) != by_hand.hexdigest()


def test_results_name_the_recipe_and_an_older_folder_still_counts(small_coffee_path, tmp_path, capsys):
    """summary.json and summary.csv carry the config's recipe name and version beside the digest of its
    settings; a folder written before recipes had names (the digest as ``recipe``) is still skipped."""
    config = tmp_path / "named.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"init_args": {"recipe": "plain", "recipe_version": 3, "fitting": PLAIN_FITTING}}})
    )
    out = tmp_path / "out"
    args = [str(small_coffee_path), "--out", str(out), "--config", str(config), *STEPS]
    assert run(args) == 0
    path = out / "small_coffee" / "summary.json"
    summary = json.loads(path.read_text())
    assert (summary["recipe"], summary["recipe_version"]) == ("plain", 3)
    assert re.fullmatch("[0-9a-f]{8}", summary["recipe_digest"])
    with (out / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert (row["recipe"], row["recipe_version"], row["recipe_digest"]) == ("plain", "3", summary["recipe_digest"])

    older = {key: value for key, value in summary.items() if key not in ("recipe", "recipe_version", "recipe_digest")}
    path.write_text(json.dumps({**older, "recipe": summary["recipe_digest"]}))
    written = path.read_text()
    capsys.readouterr()
    assert run(args) == 0
    assert "1 image(s) already explained" in capsys.readouterr().err and path.read_text() == written
    with (out / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert (row["recipe"], row["recipe_version"], row["recipe_digest"]) == ("", "", summary["recipe_digest"])


def test_throughput_command_prints_one_row_per_batch_size(tmp_path, capsys):
    from actmatch.cli import main

    dataset_folder(tmp_path / "data")
    config = tiny_explainer_config(tmp_path / "tiny.yaml")
    out = tmp_path / "tp"
    code = main(
        [
            "throughput",
            str(tmp_path / "data" / "a"),
            "--config",
            str(config),
            "--input-size",
            "48",
            "--batch-sizes",
            "1",
            "3",
            "--limit",
            "3",
            "--steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    import csv

    with (out / "throughput.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["batch_size"]) for r in rows] == [1, 3] and all(int(r["images"]) == 3 for r in rows)
    assert float(rows[0]["speedup"]) == 1.0 and all(float(r["images_per_minute"]) > 0 for r in rows)
    assert "img/min" in capsys.readouterr().out
    assert len(list((out / "b3").rglob("mask.png"))) == 3
    assert (out / "b3" / "summary.csv").is_file() and (out / "b3" / "report.html").is_file()
    capsys.readouterr()
    assert main(["throughput", str(tmp_path / "nothing"), "--config", str(config)]) != 0
    assert "nothing: no such file" in capsys.readouterr().err
