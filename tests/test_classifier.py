"""Frozen classifiers: offline default weights, local checkpoints, clear failures."""

from __future__ import annotations

import pytest
import timm
import torch

from actmatch.datamodules.images import load_image
from actmatch.explainers.classifier import (
    ClassifierLoadError,
    load_classifier,
    load_in_order,
    state_fingerprint,
)


def test_offline_default_is_frozen_and_recognises_the_espresso(lite0, coffee_path):
    assert not lite0.training
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()  # a Lightning loop calls train(); the classifier stays in eval
    assert not lite0.training and not lite0.model.training
    image, _ = load_image(coffee_path, lite0.input_size)
    with torch.no_grad():
        top = lite0(image[None]).argmax(-1).item()
    assert lite0.class_name(top) == "espresso"
    assert lite0.data_config["mean"] == (0.5, 0.5, 0.5)


def test_local_checkpoint_round_trip(tmp_path):
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)
    loaded = load_classifier("resnet10t", weights=str(path), num_classes=7)
    assert state_fingerprint(loaded.model) == state_fingerprint(source)
    from safetensors.torch import save_file

    st_path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(st_path))
    assert state_fingerprint(load_classifier("resnet10t", weights=str(st_path), num_classes=7).model) == state_fingerprint(source)


def test_shape_mismatch_fails_loudly(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    state = dict(model.state_dict())
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ClassifierLoadError, match="has shape"):
        load_in_order(model, {f"other.{k}": v for k, v in state.items()}, "test file")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "resnet10t", "weights": "/nonexistent/model.pth"}, "weights file not found"),
        ({"name": "not_a_model_xyz"}, "unknown backbone"),
        ({"name": "resnet10t", "pretrained": True}, "pass a local checkpoint with --weights"),
    ],
)
def test_load_failures_say_how_to_fix(kwargs, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClassifierLoadError, match=message):
        load_classifier(**kwargs)


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ClassifierLoadError, match="could not read weights file"):
        load_classifier("resnet10t", weights=str(path))
