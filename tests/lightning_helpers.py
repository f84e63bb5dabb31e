"""Helpers for the LightningCLI tests: run the CLI, stand-in weights and folders, W&B records.

Also holds small probe callbacks that the subprocess tests load by class_path
(``lightning_helpers.RankProbe``) with ``PYTHONPATH`` set to this folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def evaluation_script(name: str):
    """``experiments/evaluation/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "evaluation" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m actmatch.cli ARGS`` in a subprocess; probes in tests/ are importable."""
    full_env = dict(
        os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1", **(env or {})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "actmatch.cli", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def cli_in_process(command: str, args: list[str]) -> int:
    """The same CLI in this process (cheaper: no interpreter start, imports shared)."""
    from actmatch.commands.lightning import main

    return main(command, args)


def save_random_weights(backbone: str, path: Path, num_classes: int | None = None) -> Path:
    """A random-init timm state dict standing in for hub or trained weights."""
    import timm
    from safetensors.torch import save_file

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    arch = {"efficientnet_lite1": "tf_efficientnet_lite1", "efficientnet_lite2": "tf_efficientnet_lite2"}.get(backbone, backbone)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


WNIDS = ("n01440764", "n01443537", "n01484850")


def fake_imagenet(root: Path, layout: str = "split", per_class: int = 2, size: int = 72) -> Path:
    """A tiny ImageNet-style folder of random JPEGs (``split`` or ``flat`` layout)."""
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        for i in range(per_class):
            folder = root / "train" / wnid if layout == "split" else root
            name = f"{wnid}_{i}.JPEG" if layout == "split" else f"{wnid}_img{i}.JPEG"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(folder / name)
            if layout == "split":
                (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "val" / wnid / name)
    return root


def write_mask_targets(photos: list[Path], masks_dir: Path, size: tuple[int, int] | None = None) -> Path:
    """A ``mask.png`` per photo where ``actmatch explain PHOTOS --out masks_dir`` writes it
    (``masks_dir/<stem>/mask.png``): the photo's left half, at the photo's size or at ``size`` (W, H)."""
    for photo in photos:
        width, height = size or Image.open(photo).size
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[:, : width // 2] = 255
        (masks_dir / photo.stem).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(masks_dir / photo.stem / "mask.png")
    return masks_dir


def wandb_records(run_dir: Path):
    """Decode the protobuf records of an offline run's ``run-*.wandb`` file (LevelDB-style log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    block, pos, chunks, buf = 32768, 7, [], b""  # 7-byte file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            chunks.append(buf + chunk)
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def history_keys(run_dir: Path) -> set[str]:
    keys = set()
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


class RankProbe(L.Callback):
    """Writes ``rank<r>.json``: rank, world size, batches seen, local and synced mask area."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.batches, self.areas = Path(out_dir), 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self.areas.append(outputs["mask_area"].detach().cpu())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "rank": trainer.global_rank,
                    "world_size": trainer.world_size,
                    "batches": self.batches,
                    "local_mask_area": float(torch.cat(self.areas).mean()),
                    "metrics": metrics,
                }
            )
        )


class StepRecorder(L.Callback):
    """Appends the global step after every completed training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(trainer.global_step) + "\n")


class KillAt(L.Callback):
    """Kills the process (no clean-up, like a pre-empted job) when training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)


def tiny_explainer_config(
    path: Path, input_size: int | None = None, steps: int | None = None, data_size: int | None = None
) -> Path:
    """Write the config of a random-init ``test_resnet`` explainer (4 classes, a width-8 U-Net) to
    ``path``: for ``actmatch explain --config``, or with ``data_size`` also the predict datamodule's
    backbone and image size (for ``actmatch predict``)."""
    init = {
        "backbone": "test_resnet",
        "pretrained": False,
        "num_classes": 4,
        "unet": {
            "class_path": "actmatch.explainers.unet.MaskUNet",
            "init_args": {"width": 8, "depth": 2, "working_size": None, "padding_mode": "replicate"},  # as the built-in U-Net
        },
    }
    init.update({k: v for k, v in (("input_size", input_size), ("steps", steps)) if v is not None})
    config = {"model": {"init_args": init}}
    if data_size is not None:
        config["data"] = {"init_args": {"backbone": "test_resnet", "image_size": data_size}}
    path.write_text(yaml.safe_dump(config))
    return path


#: a plain per-image fit: area continuation without the default's lookahead and post-fit stages (no
#: scan, no pruning, no border-free cut); for tests of a command's contract, not of the fit's quality
PLAIN_FITTING = {"class_path": "actmatch.explainers.fitting.AreaContinuation"}


def plain_fit_config(path: Path) -> Path:
    """Write a config for ``actmatch explain --config`` that keeps the default classifier, U-Net and
    loss terms but fits with :data:`PLAIN_FITTING` (a few forward passes per step, none after it)."""
    path.write_text(yaml.safe_dump({"model": {"init_args": {"fitting": PLAIN_FITTING}}}))
    return path


def class_folder_images(root: Path, count: int, seed: int, shape=lambda i: (40, 56), prefix: str = "n0") -> list[Path]:
    """``count`` random PNGs in two class folders, ``root/<prefix><i % 2>/img_<i // 2>.png``,
    image i of ``shape(i)`` = (height, width)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = root / f"{prefix}{i % 2}" / f"img_{i // 2:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*shape(i), 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
