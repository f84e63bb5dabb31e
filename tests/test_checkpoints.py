"""Checkpoints as users have them: plain state dicts with their own classes, Lightning
checkpoints, timm / Hugging Face folders; bad forms get a one-line message naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from actmatch.commands import benchmark as benchmark_cmd
from actmatch.commands import circuit as circuit_cmd
from actmatch.commands import explain as explain_cmd
from actmatch.explainers.classifier import ClassifierLoadError, load_classifier, load_labels, match_state_dict

ARCH = "resnet10t"


@pytest.fixture(scope="module")
def two_class_model() -> torch.nn.Module:
    """A tiny timm ResNet 'fine-tuned' to 2 classes (random weights, eval mode)."""
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, num_classes=2).eval()


@pytest.fixture(scope="module")
def plain_weights(two_class_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save(two_class_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def same_logits(loaded, model: torch.nn.Module) -> bool:
    """The loaded classifier gives the source model's logits on the same input."""
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(loaded(images), model(loaded.normalize(images)), atol=1e-6)


# ---------------------------------------------------------------- forms that load


def test_plain_state_dict_with_two_classes(two_class_model, plain_weights):
    loaded = load_classifier(ARCH, weights=plain_weights)  # no num_classes: read from fc.weight
    assert loaded.num_classes == 2 and loaded.class_names == ["0", "1"]
    assert same_logits(loaded, two_class_model)


@pytest.mark.parametrize("prefix", ["model.", "net.", "classifier.", "_orig_mod.module."])
def test_lightning_checkpoint_prefix_is_stripped(two_class_model, tmp_path, prefix):
    state = {f"{prefix}{k}": v for k, v in two_class_model.state_dict().items()}
    state["unet.head.weight"] = torch.zeros(3)  # other parts of the LightningModule are dropped
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": state,
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2.4.0",
            "hyper_parameters": {"lr": 0.01, "backbone": ARCH},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        path,
    )
    loaded = load_classifier(ARCH, weights=path)
    assert loaded.num_classes == 2
    assert same_logits(loaded, two_class_model)


def test_match_state_dict_prefers_the_prefix_that_names_model_keys():
    keys = ["conv.weight", "fc.weight"]
    state = {"model.conv.weight": torch.zeros(1), "model.fc.weight": torch.zeros(1), "loss.weight": torch.zeros(1)}
    renamed, prefix = match_state_dict(state, keys)
    assert prefix == "model." and set(renamed) == set(keys)
    assert match_state_dict({"conv.weight": torch.zeros(1)}, keys)[1] == ""


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_save_for_hf_folder_needs_no_backbone(two_class_model, tmp_path, safe):
    folder = tmp_path / "my-model"
    timm.models.save_for_hf(two_class_model, str(folder), model_config={"label_names": ["cat", "dog"]}, safe_serialization=safe)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], input_size=[3, 96, 96])
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_classifier(weights=folder)
    assert loaded.name == ARCH and loaded.class_names == ["cat", "dog"]
    assert loaded.settings == {"num_classes": 2, "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 96}
    assert same_logits(loaded, two_class_model)


def test_overrides_beat_the_data_config(plain_weights, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    loaded = load_classifier(
        ARCH, weights=plain_weights, class_names=labels, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], input_size=48
    )
    assert loaded.class_name(1) == "dog"
    assert loaded.settings == {"num_classes": 2, "mean": [0.1, 0.2, 0.3], "std": [0.5] * 3, "input_size": 48}


@pytest.mark.parametrize(
    "text, names",
    [
        ("cat\ndog\n", ["cat", "dog"]),
        ('["cat", "dog"]', ["cat", "dog"]),
        ('{"1": "dog", "0": "cat"}', ["cat", "dog"]),
        ('{"0": "cat", "2": "bird"}', ["cat", "1", "bird"]),
    ],
)
def test_labels_file_formats(tmp_path, text, names):
    path = tmp_path / ("labels.json" if text.startswith(("[", "{")) else "labels.txt")
    path.write_text(text)
    assert load_labels(path) == names


# ---------------------------------------------------------------- forms that are refused


def test_pickled_whole_model_is_refused_with_the_fix(two_class_model, tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(two_class_model, path)
    with pytest.raises(ClassifierLoadError, match=r"torch\.save\(model\.state_dict\(\)") as info:
        load_classifier(ARCH, weights=path)
    assert "\n" not in str(info.value) and "ResNet" in str(info.value)


def test_mismatched_keys_are_named(two_class_model, tmp_path):
    state = dict(two_class_model.state_dict())
    state["stem.weight"] = state.pop("conv1.0.weight")  # renamed: one missing, one unexpected
    state["fc.bias"] = torch.zeros(7)  # mis-shaped
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(ARCH, weights=path)
    message = str(info.value)
    assert "missing keys conv1.0.weight" in message and "unexpected keys stem.weight" in message
    assert "mis-shaped fc.bias (7,)" in message and "\n" not in message


def test_num_classes_overrides_the_head_and_a_wrong_one_is_named(plain_weights):
    with pytest.raises(ClassifierLoadError, match=r"mis-shaped fc\.weight \(2, 512\) in the file vs \(5, 512\)"):
        load_classifier(ARCH, weights=plain_weights, num_classes=5)


def test_wrong_architecture_names_the_keys(plain_weights):
    with pytest.raises(ClassifierLoadError, match="does not fit resnet18: missing keys"):
        load_classifier("resnet18", weights=plain_weights)


def test_folder_problems_say_how_to_fix(two_class_model, tmp_path):
    with pytest.raises(ClassifierLoadError, match="without config.json"):
        load_classifier(weights=tmp_path)
    timm.models.save_for_hf(two_class_model, str(tmp_path / "hf"))
    with pytest.raises(ClassifierLoadError, match="drop --backbone"):
        load_classifier("resnet18", weights=tmp_path / "hf")


def test_missing_file_and_wrong_label_count(plain_weights, tmp_path):
    with pytest.raises(ClassifierLoadError, match="weights file not found"):
        load_classifier(ARCH, weights=tmp_path / "nope.pth")
    with pytest.raises(ClassifierLoadError, match="3 class names for a classifier with 2 classes"):
        load_classifier(ARCH, weights=plain_weights, class_names=["a", "b", "c"])


# ---------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def bad_weights(two_class_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "whole.pth"
    torch.save(two_class_model, path)
    return path


@pytest.mark.parametrize(
    "module, command, args",
    [
        (explain_cmd, "explain", ["{image}", "--out", "{out}"]),
        (benchmark_cmd, "benchmark", ["--images", "{image}", "--out", "{out}"]),
        (circuit_cmd, "circuit", ["{image}", "--out", "{out}"]),
    ],
    ids=["explain", "benchmark", "circuit"],
)
def test_commands_print_one_line_and_exit_2(module, command, args, bad_weights, image_path, tmp_path, capsys):
    argv = [a.format(image=image_path, out=tmp_path / "out") for a in args]
    assert module.main(command, argv + ["--backbone", ARCH, "--weights", str(bad_weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert "torch.save(model.state_dict()" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_labels_and_preprocessing_reach_summary_json(plain_weights, image_path, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text('["cat", "dog"]')
    out = tmp_path / "out"
    code = explain_cmd.main(
        "explain",
        [
            str(image_path),
            "--out",
            str(out),
            "--backbone",
            ARCH,
            "--weights",
            str(plain_weights),
            "--labels",
            str(labels),
            "--steps",
            "2",
            "--input-size",
            "64",
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.2",
            "0.2",
            "0.2",
        ],
    )
    assert code == 0
    summary = json.loads((out / "photo" / "summary.json").read_text())
    assert summary["label_name"] in ("cat", "dog")
    assert summary["label_name"] == ["cat", "dog"][summary["label"]]
    assert summary["num_classes"] == 2 and summary["input_size"] == 64
    assert summary["mean"] == [0.5] * 3 and summary["std"] == [0.2] * 3


def test_explain_a_save_for_hf_folder_without_backbone(two_class_model, image_path, tmp_path):
    folder = tmp_path / "my-model"
    timm.models.save_for_hf(two_class_model, str(folder), model_config={"label_names": ["cat", "dog"]}, safe_serialization=True)
    out = tmp_path / "out"
    assert (
        explain_cmd.main(
            "explain", [str(image_path), "--out", str(out), "--weights", str(folder), "--steps", "2", "--input-size", "64"]
        )
        == 0
    )
    summary = json.loads((out / "photo" / "summary.json").read_text())
    assert summary["backbone"] == ARCH and summary["label_name"] == ["cat", "dog"][summary["label"]]
    assert summary["mean"] == [0.485, 0.456, 0.406] and summary["num_classes"] == 2  # from config.json
