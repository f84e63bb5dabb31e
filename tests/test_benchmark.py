"""``actmatch benchmark`` end to end on two small real photos, with cheap settings."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from actmatch.commands import benchmark
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.unet import MaskUNet

CHEAP = ["--steps", "2", "--rise-masks", "4", "--window", "80", "--ig-steps", "2", "--curve-steps", "2", "--backgrounds", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two scikit-image photos, a random tiny timm model's weights and a fake `fit` checkpoint."""
    import skimage.data

    root = tmp_path_factory.mktemp("bench")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.coffee()).resize((120, 80)).save(photos / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).resize((100, 80)).save(photos / "chelsea.png")
    weights = root / "tiny.pth"
    torch.manual_seed(0)
    torch.save(load_classifier("test_efficientnet", pretrained=False).model.state_dict(), weights)
    ckpt = root / "fit.ckpt"
    torch.save({"state_dict": {f"unet.{k}": v for k, v in MaskUNet().state_dict().items()}}, ckpt)
    return photos, weights, ckpt


def test_benchmark_runs_end_to_end_and_writes_every_file(setup, tmp_path, capsys):
    photos, weights, ckpt = setup
    methods = "am,am-amortized,saliency,gradcam,occlusion,ig,rise,convad"
    argv = ["--images", str(photos), "--methods", methods, "--out", str(tmp_path), "--backbone", "test_efficientnet",
            "--weights", str(weights), "--checkpoint", str(ckpt), "--gallery", "2", *CHEAP]  # fmt: skip
    assert benchmark.main("benchmark", argv) == 0
    for name in ("results.csv", "summary.csv", "summary.png", "comparison.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 8
    assert not any(r["error"] for r in rows)
    assert set(rows[0]) >= {"kept_equal_area", "smallest_sufficient_area", "insertion_auc", "deletion_auc", "robustness", "seconds"}
    for r in rows:
        assert 0 <= float(r["insertion_auc"]) <= 1 and 0 < float(r["smallest_sufficient_area"]) <= 1
    am_area = {r["image"]: r["area"] for r in rows if r["method"] == "am"}
    assert all(r["area"] == am_area[r["image"]] for r in rows)  # every map cut to actmatch's area
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["method"] for r in summary] == methods.split(",")
    out = capsys.readouterr().out
    assert "kept@area" in out and "rise" in out and "median equal-area cut" in out


def test_unknown_method_is_named(setup, tmp_path, capsys):
    photos, weights, _ = setup
    code = benchmark.main("benchmark", ["--images", str(photos), "--methods", "saliency,lime", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "lime" in err and "gradcam" in err


def test_amortized_without_checkpoint_and_unreadable_image_are_named(setup, tmp_path, capsys):
    photos, weights, _ = setup
    common = ["--out", str(tmp_path), "--backbone", "test_efficientnet", "--weights", str(weights)]
    assert benchmark.main("benchmark", ["--images", str(photos), "--methods", "am-amortized", *common]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert benchmark.main("benchmark", ["--images", str(broken), "--methods", "saliency", *common]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_registry_names_classes():
    assert set(benchmark.METHODS) >= {"am", "am-amortized", "saliency", "gradcam", "occlusion", "ig", "rise", "convad", "ep"}


def test_am_runs_first_so_that_its_area_sets_the_cut():
    assert benchmark.parse_methods("saliency,am,rise,saliency", None) == ["am", "saliency", "rise"]


def test_am_takes_an_explainer_config(tmp_path):
    """--config sets am's recipe (U-Net, lr, loss terms) while the benchmark's classifier is kept."""
    config = tmp_path / "am.yaml"
    config.write_text(
        "lr: 0.005\n"
        "unet: {class_path: actmatch.explainers.unet.MaskUNet, init_args: {width: 4, depth: 2, padding_mode: replicate}}\n"
    )
    classifier = load_classifier("test_efficientnet", pretrained=False)
    method = benchmark.METHODS["am"](classifier, steps=2, config=str(config))
    assert method.explainer.classifier is classifier
    assert method.explainer.lr == 0.005 and method.explainer.unet.padding_mode == "replicate"
    maps = method.attribute(torch.rand(1, 3, 40, 48))
    assert maps.shape == (1, 1, 40, 48)
