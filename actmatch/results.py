"""An explanation output folder: one result folder per image, its summary rows and the aggregate.

``OUT/<folder>/`` receives ``mask.png`` (0/255, the file's size), ``mask_input.png`` (the mask the
classifier saw, at the model's input size), ``explanation.png``, ``figure.png`` and
``summary.json`` (the image's summary row plus the classifier's ``num_classes``, ``mean``,
``std`` and ``input_size``); with the circuit, ``circuit.json`` and ``circuit.png`` too. A row
names the recipe that wrote it: ``recipe`` and ``recipe_version`` (the explainer's, e.g.
``minimal`` 16, or ``custom`` 0) and ``recipe_digest`` (of its settings, :func:`recipe_digest`).
``OUT/summary.csv`` holds one row per image plus an ``__aggregate__`` row, ``OUT/aggregate.json``
the aggregate.

Each folder is written to a hidden staging folder next to it and moved into place only when
complete (:func:`write_result`), so a failure never leaves a half-written result behind;
:func:`clean_staging` removes what killed runs left, and :func:`finished_rows` reads back the
rows of the complete folders written with the same recipe (:func:`recipe_digest`), so a re-run
can skip them. ``actmatch explain``, ``actmatch study``, ``actmatch throughput`` and the
``actmatch predict`` writer (:class:`~actmatch.callbacks.ExplanationWriter`) all write through
this module.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from actmatch.datamodules.images import ImageItem, file_items, to_tensor
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.module import ActMatchExplainer, Explanation

__all__ = [
    "write_result",
    "write_summary",
    "aggregate",
    "finished_row",
    "finished_rows",
    "recipe_digest",
    "arithmetic",
    "clean_staging",
    "explanation_at",
    "as_items",
    "SUMMARY_FIELDS",
    "RESULT_FILES",
    "MODEL_MASK",
    "CIRCUIT_FILES",
]

SUMMARY_FIELDS = [
    "image",
    "folder",
    "backbone",
    "label",
    "label_name",
    "confidence_original",
    "label_explanation",
    "label_explanation_name",
    "confidence_explanation",
    "label_kept",
    "mask_area",
    "steps",
    "seconds",
    "seed",
    "recipe",
    "recipe_version",
    "recipe_digest",
    "arithmetic",
    "status",
    "error",
]

#: the files of a complete image folder (and CIRCUIT_FILES with --circuit)
RESULT_FILES = ("mask.png", "explanation.png", "figure.png", "summary.json")
#: the mask at the model's input size, pixel for pixel what was classified (folders written before it
#: existed are still complete: ``actmatch circuit --masks-from`` then recovers it from ``mask.png``)
MODEL_MASK = "mask_input.png"
CIRCUIT_FILES = ("circuit.json", "circuit.png")
STAGING_MARK = ".staging-"  # staging folders: OUT/<parent>/.<name>.staging-XXXX
BACKUP_MARK = ".old-"  # a replaced result while its successor moves in: .<name>.old-<pid>


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(original: np.ndarray, mask: np.ndarray, explanation: np.ndarray, titles: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = mask.shape
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2 * height / max(width, 1) + 0.6))
    for ax, img, title in zip(axes, [original, mask, explanation], titles):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _install_dir(staging: Path, target: Path) -> None:
    """Move a complete staging folder to ``target``, replacing an older result only now."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}{BACKUP_MARK}{os.getpid()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_result(
    explainer: ActMatchExplainer,
    path: Path,
    original: Image.Image,
    model_image: torch.Tensor,
    result: Explanation,
    out_dir: Path,
    seed: int,
    circuit: bool = False,
    folder: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Write one image's folder ``out_dir/folder`` (default: the file's stem) atomically and
    return its summary row (with the explainer's ``recipe`` and ``recipe_version``, plus ``extra``
    fields such as ``recipe_digest``); ``result`` holds this image only."""
    folder = folder or path.stem
    width, height = original.size
    mask_small = result.masks[:1]  # (1, 1, h, w)
    mask = F.interpolate(mask_small, size=(height, width), mode="nearest")[0, 0]  # (H, W)
    image = to_tensor(original)  # (3, H, W)
    fill = make_fill(image[None], explainer.fill, explainer.classifier.data_config["mean"])[0]
    explanation = mask * image + (1 - mask) * fill
    mask_u8 = (mask.numpy() > 0.5).astype(np.uint8) * 255
    explanation_u8 = (explanation.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    classifier = explainer.classifier
    label, label_e = int(result.label[0]), int(result.label_explanation[0])
    row = {
        "image": str(path),
        "folder": folder,
        "backbone": classifier.name,
        "label": label,
        "label_name": classifier.class_name(label),
        "confidence_original": round(float(result.confidence_original[0]), 6),
        "label_explanation": label_e,
        "label_explanation_name": classifier.class_name(label_e),
        "confidence_explanation": round(float(result.confidence_explanation[0]), 6),
        "label_kept": bool(result.label_kept[0]),
        "mask_area": round(float((mask_u8 > 0).mean()), 6),
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "seed": seed,
        "recipe": explainer.recipe,
        "recipe_version": explainer.recipe_version,
        "arithmetic": arithmetic(explainer),
        "status": "ok",
        "error": "",
        **(extra or {}),
    }
    titles = [
        f"original: {row['label_name']} ({row['confidence_original']:.2f})",
        f"mask: {100 * row['mask_area']:.1f}% of pixels kept",
        f"explanation: {row['label_explanation_name']} ({row['confidence_explanation']:.2f})"
        + ("" if row["label_kept"] else " — label lost"),
    ]
    target = out_dir / folder
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
    staging.chmod(0o755)
    try:
        (staging / "mask.png").write_bytes(_png_bytes(mask_u8))
        (staging / MODEL_MASK).write_bytes(_png_bytes((mask_small[0, 0].cpu().numpy() > 0.5).astype(np.uint8) * 255))
        (staging / "explanation.png").write_bytes(_png_bytes(explanation_u8))
        (staging / "figure.png").write_bytes(_figure_png(np.asarray(original), mask_u8, explanation_u8, titles))
        if circuit:
            from actmatch.explainers.circuits import write_circuit_outputs

            row.update(write_circuit_outputs(explainer, model_image[None], mask_small, staging))
        summary = {**row, **getattr(classifier, "settings", {})}  # + num_classes, mean, std, input_size
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _install_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return row


def clean_staging(out_dir: Path) -> int:
    """Remove the staging folders, replaced results and temporary files that killed runs left
    anywhere under ``out_dir``; returns how many. Call it before any writer starts."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for folder, dirs, files in os.walk(out_dir):
        for name in list(dirs):
            if name.startswith(".") and (STAGING_MARK in name or BACKUP_MARK in name):
                shutil.rmtree(Path(folder) / name, ignore_errors=True)
                dirs.remove(name)
                removed += 1
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                (Path(folder) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def finished_row(folder: Path, drop: tuple[str, ...] = (), circuit: bool = False) -> dict | None:
    """The summary row of a complete image folder (all its files there, ``summary.json``
    readable and ``ok``), without the keys in ``drop``; None if the folder is not complete.
    A folder written before recipes had names keeps its digest as ``recipe``: the row gives it as
    ``recipe_digest``."""
    names = RESULT_FILES + (CIRCUIT_FILES if circuit else ())
    if not all((folder / name).is_file() for name in names):
        return None
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "ok":
        return None
    row = {key: value for key, value in summary.items() if key not in drop}
    if "recipe" in row and "recipe_version" not in row and "recipe_digest" not in row:
        row["recipe_digest"] = row.pop("recipe")
    return row


@functools.cache
def explainer_source_digest() -> str:
    """sha1 of the source of :mod:`actmatch.explainers` and :mod:`actmatch.datamodules` (every ``.py``
    below them, by path and content): the code that loads the images and turns a recipe into masks.
    Computed once per process."""
    import actmatch.datamodules
    import actmatch.explainers

    digest = hashlib.sha1()
    for package in (actmatch.explainers, actmatch.datamodules):
        root = Path(str(package.__file__)).parent
        for path in sorted(root.rglob("*.py")):
            name = f"{package.__name__}/{path.relative_to(root).as_posix()}"
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def arithmetic(module: torch.nn.Module) -> str:
    """Where a module's float arithmetic runs (an explainer's, a classifier's), e.g. ``"cpu, 2 threads, torch 2.14.1"`` or
    ``"cuda, torch 2.14.1"``: the device type, on the CPU torch's thread count (it sets the order of
    float sums), and torch's version. A fit decides at thresholds (the criterion's p(e) >= r p(x), the
    cut between two logits), so the last bits of a sum can send it elsewhere: with 1 thread instead
    of 2, ``faithful`` v4 ends with another mask on 93 of the 100 evaluation photos (docs/explain.md)."""
    device = next(module.parameters()).device.type
    count = torch.get_num_threads()
    threads = f", {count} thread{'s' if count != 1 else ''}" if device == "cpu" else ""
    return f"{device}{threads}, torch {torch.__version__}"


def recipe_digest(explainer, steps: int | None, seed: int, amortized: bool = False, warm_start: bool = False) -> str:
    """8 hex digits naming what produced a mask: the classifier, the U-Net (and its weights when
    they are a trained checkpoint's: ``amortized`` or ``warm_start``), the loss terms, the fitting
    strategy and its settings, the steps, restarts, fill and seed (not the recipe's name, which a
    config states), the source of the code that fits them (:func:`explainer_source_digest`) and where
    its arithmetic runs (:func:`arithmetic`). Written as ``recipe_digest``; a resumed run keeps only the
    folders written with the same digest, so an edited explainer module, another device or another
    thread count is never resumed from masks the earlier run wrote."""
    parts = [
        explainer_source_digest(),
        arithmetic(explainer),
        explainer.classifier.name,
        repr(getattr(explainer.classifier, "settings", {})),
        repr(explainer.unet.__class__),
        repr({k: v for k, v in vars(explainer.unet).items() if not k.startswith("_") and k != "training"}),
        repr([(type(t).__name__, repr(t)) for t in explainer.losses]),
        repr(explainer.fitting),
        str(steps or explainer.steps),
        str(explainer.restarts),
        explainer.fill,
        str(seed),
        str(amortized),
        str(warm_start),
    ]
    if amortized and getattr(explainer, "amortized_stages", None):  # what refines the pass's masks
        parts.append(repr(explainer.amortized_stages))
    if amortized or warm_start:  # the masks depend on the trained weights, not only on the settings
        weights = hashlib.sha1()
        for tensor in explainer.unet.state_dict().values():
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        parts.append(weights.hexdigest())
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


def finished_rows(
    items: list[ImageItem], out_dir: Path, classifier: FrozenClassifier, circuit: bool = False, digest: str | None = None
) -> dict[int, dict]:
    """Position in ``items`` -> summary row, for the images whose folder under ``out_dir`` is
    complete (rows as written, less the classifier's settings that summary.json adds) and, with
    ``digest``, was written with that ``recipe_digest`` (:func:`recipe_digest`)."""
    drop = tuple(getattr(classifier, "settings", {}))
    rows = {}
    for index, item in enumerate(items):
        row = finished_row(out_dir / item.folder, drop, circuit)
        if row is not None and (digest is None or row.get("recipe_digest") == digest):
            rows[index] = {**row, "folder": item.folder}
    return rows


def explanation_at(result: Explanation, index: int, images: int = 1) -> Explanation:
    """Image ``index`` of a batched ``result`` as a batch of one (float tensors in float32);
    ``seconds`` is the batch's time shared by its ``images``."""
    one = result.select(slice(index, index + 1))
    floats: dict[str, Any] = {
        f.name: value.float()
        for f in dataclasses.fields(one)
        if isinstance(value := getattr(one, f.name), torch.Tensor) and value.is_floating_point()
    }
    return dataclasses.replace(one, **floats, seconds=result.seconds / max(1, images))


def as_items(paths: Sequence[Path | ImageItem]) -> list[ImageItem]:
    """Items as they are; bare paths get their stem as folder (``-<hash>`` for repeated stems)."""
    items = [p for p in paths if isinstance(p, ImageItem)]
    if len(items) == len(paths):
        return items
    if items:
        raise TypeError("pass either image paths or ImageItem entries, not both")
    return file_items([p for p in paths if not isinstance(p, ImageItem)])


def aggregate(rows: list[dict]) -> dict:
    """Label-kept rate, median area and median seconds over the explained images."""
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "images": len(rows),
        "explained": len(ok),
        "failed": len(rows) - len(ok),
        "label_kept_rate": round(sum(r["label_kept"] for r in ok) / len(ok), 4) if ok else None,
        "median_mask_area": round(statistics.median(r["mask_area"] for r in ok), 6) if ok else None,
        "median_seconds": round(statistics.median(r["seconds"] for r in ok), 3) if ok else None,
    }


def write_summary(rows: list[dict], out_dir: Path) -> dict:
    """``summary.csv`` (one row per image + ``__aggregate__``) and ``aggregate.json``."""
    agg = aggregate(rows)
    fields = list(dict.fromkeys(SUMMARY_FIELDS + [k for r in rows for k in r]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow(
        {
            "image": "__aggregate__",
            "label_kept": agg["label_kept_rate"],
            "mask_area": agg["median_mask_area"],
            "seconds": agg["median_seconds"],
            "status": f"{agg['explained']} ok, {agg['failed']} failed",
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out_dir / "summary.csv", buffer.getvalue())
    _atomic_write_text(out_dir / "aggregate.json", json.dumps(agg, indent=2) + "\n")
    return agg
