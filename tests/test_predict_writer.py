"""`actmatch predict` with experiments/explain_folder.yaml: the ExplanationWriter's folders and summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actmatch.commands import explain as explain_cmd
from actmatch.results import MODEL_MASK, RESULT_FILES
from lightning_helpers import class_folder_images, cli_in_process, tiny_explainer_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_dataset(root: Path, count: int = 4, broken: bool = True) -> list[Path]:
    """``count`` random PNGs of different shapes in two class folders (+ an unreadable file)."""
    paths = class_folder_images(root, count, seed=2, shape=lambda i: (40 + 4 * i, 56))
    if broken:
        (root / "n01" / "broken.jpg").write_text("not an image")
    return paths


def predict_args(tmp_path: Path, data: Path, out: Path, *extra: str) -> list[str]:
    config = tiny_explainer_config(tmp_path / "tiny.yaml", input_size=48, steps=3, data_size=48)
    return [
        "--config",
        str(ROOT / "experiments" / "explain_folder.yaml"),
        "--config",
        str(config),
        "--data.init_args.root",
        str(data),
        "--trainer.callbacks.init_args.out_dir",
        str(out),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def summary_rows(out: Path) -> list[dict]:
    with (out / "summary.csv").open() as handle:
        return [r for r in csv.DictReader(handle) if r["image"] != "__aggregate__"]


def test_predict_writes_explain_folders_and_summary(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    paths = tiny_dataset(data)
    assert cli_in_process("predict", predict_args(tmp_path, data, out)) == 0
    rows = {r["image"]: r for r in summary_rows(out)}
    assert len(rows) == len(paths) + 1 and rows[str(data / "n01" / "broken.jpg")]["status"] == "error"
    for path in paths:
        row = rows[str(path)]
        folder = out / row["folder"]
        assert row["folder"] == path.relative_to(data).with_suffix("").as_posix() and row["status"] == "ok"
        assert sorted(p.name for p in folder.iterdir()) == sorted(RESULT_FILES + (MODEL_MASK,))
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["folder"] == row["folder"]
        assert {"recipe", "recipe_version", "recipe_digest"} <= set(summary) and row["recipe_digest"] == summary["recipe_digest"]
        width, height = Image.open(path).size
        assert np.asarray(Image.open(folder / "mask.png")).shape == (height, width)
    assert json.loads((out / "aggregate.json").read_text())["explained"] == len(paths)
    assert (out / "config.yaml").is_file()  # the resolved config beside the results
    # one engine: `actmatch explain` with the same recipe and seed writes the same mask
    config = tiny_explainer_config(tmp_path / "explain.yaml", input_size=48, steps=3)
    assert explain_cmd.main("explain", [str(paths[0]), "--out", str(tmp_path / "single"), "--config", str(config)]) == 0
    same = (tmp_path / "single" / paths[0].stem / "mask.png").read_bytes()
    assert same == (out / rows[str(paths[0])]["folder"] / "mask.png").read_bytes()


def test_predict_resumes_and_overwrites(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    paths = tiny_dataset(data, broken=False)
    assert cli_in_process("predict", predict_args(tmp_path, data, out)) == 0
    redo = out / "n01" / "img_000"
    import shutil

    shutil.rmtree(redo)
    kept = {f: f.stat().st_mtime_ns for f in out.glob("n0*/img_*/*")}
    assert cli_in_process("predict", predict_args(tmp_path, data, out)) == 0
    assert {f: f.stat().st_mtime_ns for f in kept} == kept  # finished folders untouched
    assert (redo / "summary.json").is_file()
    assert sorted(r["image"] for r in summary_rows(out)) == sorted(str(p) for p in paths)
    assert cli_in_process("predict", predict_args(tmp_path, data, out, "--trainer.callbacks.init_args.overwrite", "true")) == 0
    assert all(f.stat().st_mtime_ns != t for f, t in kept.items() if f.name == "summary.json")


def test_predict_refuses_inference_mode(tmp_path):
    data = tmp_path / "data"
    tiny_dataset(data, count=1, broken=False)
    with pytest.raises(ValueError, match="inference_mode=false"):
        cli_in_process("predict", predict_args(tmp_path, data, tmp_path / "out", "--trainer.inference_mode", "true"))
