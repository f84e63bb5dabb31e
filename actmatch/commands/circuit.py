"""``actmatch circuit``: the channel circuits behind the decisions on image files.

For each image: a per-image activation-matching mask (``--steps``), or the mask of an earlier
``actmatch explain`` run (``--masks-from DIR``: ``DIR/<image stem>/mask_input.png``, the mask the
classifier saw; else ``mask.png`` at the file's size, brought back to the model input exactly when
it was upsampled from it, resized otherwise); then the circuits of the
explanation and of the original image, their ablation test and, with ``--search``, the
smallest per-layer channel fraction that keeps the original top-1 label.

Writes ``OUT/<image stem>/`` (``circuit.json``, ``circuit.graphml``, ``circuit.png``,
``circuit_original.json``, ``circuit_comparison.png``, ``mask.png``, ``circuit_summary.json``),
``OUT/circuits.csv`` (one row per image) and ``OUT/circuits_summary.json``, and prints a summary.
Unreadable images are reported by name and the others still run; the exit code is 1 if any
image failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from actmatch.commands.parsers.circuit import parse_args
from actmatch.datamodules.images import (
    ImageReadError,
    expand_image_paths,
    open_image,
    read_rgb,
    resize_for_model,
    to_tensor,
)
from actmatch.explainers.circuits import (
    DEFAULT_FRACTIONS,
    MeanAblation,
    circuit_taps,
    write_circuit_outputs,
)
from actmatch.explainers.classifier import ClassifierLoadError

__all__ = ["main", "run", "read_mask", "CSV_FIELDS", "summarize"]

CSV_FIELDS = [
    "image",
    "label",
    "label_name",
    "mask_source",
    "mask_area",
    "explanation_label_kept",
    "circuit_fraction",
    "circuit_nodes",
    "circuit_label_kept",
    "circuit_confidence",
    "circuit_fraction_original",
    "circuit_nodes_original_smallest",
    "circuit_label_kept_original",
    "circuit_nodes_original",
    "circuit_jaccard_nodes",
    "circuit_jaccard_edges",
    "circuit_random_kept",
    "circuit_rank",
    "circuit_scoring",
    "circuit_ablation",
    "seconds",
    "status",
    "error",
]


def _nearest_sources(out_size: int, in_size: int) -> torch.Tensor:
    """(out_size,) the source index each output row takes when ``F.interpolate(mode="nearest")``
    resizes ``in_size`` rows to ``out_size``."""
    probe = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    return F.interpolate(probe, size=(out_size, 1), mode="nearest").flatten().long()


def _undo_nearest(full: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
    """The (1, 1, h, w) mask whose nearest upsampling is ``full`` (1, 1, H, W), or None if there is none.

    ``actmatch explain`` writes the mask it classified (at the model's input size) upsampled to the
    file's size; this gives back exactly that mask, pixel for pixel. A resize would shift cell edges
    by a pixel, and a minimal mask at the label boundary can lose the label by that.
    """
    picks = []
    for out_size, in_size in zip(full.shape[-2:], size):
        sources = _nearest_sources(out_size, in_size)
        first = torch.searchsorted(sources, torch.arange(in_size))  # the first output row of each source row
        if out_size < in_size or (first >= out_size).any() or not torch.equal(sources[first], torch.arange(in_size)):
            return None  # not an upsampling: some source rows were never written
        picks.append(first)
    small = full[..., picks[0], :][..., picks[1]]
    return small if torch.equal(F.interpolate(small, size=full.shape[-2:], mode="nearest"), full) else None


def _read_binary(path: Path) -> torch.Tensor:
    """A 0/255 mask file as a (1, 1, H, W) {0, 1} tensor at the file's size."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask (run `actmatch explain` on this image first, or drop --masks-from)")
    try:
        array = np.asarray(open_image(path).convert("L"), dtype=np.float32)
    except ImageReadError as err:
        raise ImageReadError(f"unreadable mask: {err}") from err
    return torch.from_numpy((array > 127).astype(np.float32))[None, None]


def _at_size(full: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """``full`` (1, 1, H, W) at ``size``, and whether that is exact: the mask whose nearest upsampling
    ``full`` is, else a nearest resize (False)."""
    exact = _undo_nearest(full, size)
    return (exact, True) if exact is not None else (F.interpolate(full, size=size, mode="nearest"), False)


def read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A 0/255 ``mask.png`` as a (1, 1, h, w) {0, 1} mask at the model input ``size``: exactly the
    mask ``actmatch explain`` classified when the file is its nearest upsampling, else resized (nearest)."""
    return _at_size(_read_binary(path), size)[0]


def saved_mask(folder: Path, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """The mask an ``actmatch explain`` folder holds, at the model input ``size``, and where it came
    from: ``mask_input.png`` when it has that size (what was classified), else ``mask.png`` (exact
    when it is that mask's nearest upsampling; resized, and marked so, when the file was smaller)."""
    from actmatch.results import MODEL_MASK

    model_mask = folder / MODEL_MASK
    if model_mask.is_file():
        classified = _read_binary(model_mask)
        if tuple(classified.shape[-2:]) == tuple(size):
            return classified, str(model_mask)
    full = folder / "mask.png"
    mask, exact = _at_size(_read_binary(full), size)
    return mask, str(full) if exact else f"{full} (resized from the file's size: may differ from the classified mask)"


def _load(path: Path, classifier) -> tuple[Image.Image, torch.Tensor]:
    original = read_rgb(path)
    try:
        image = resize_for_model(to_tensor(original), classifier.input_size, classifier.fixed_input_size)
    except ImageReadError as err:
        raise ImageReadError(f"{path}: {err}") from err
    return original, image[None]


def _write_mask(mask: torch.Tensor, size: tuple[int, int], path: Path) -> None:
    full = F.interpolate(mask.float().cpu(), size=size, mode="nearest")[0, 0]
    Image.fromarray((full.numpy() > 0.5).astype(np.uint8) * 255).save(path)


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 4),
    }


def summarize(rows: list[dict]) -> dict:
    """Aggregate of ``circuits.csv`` rows: fraction distribution, share kept at <= 10%, sizes."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict = {"images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok)}
    if not ok:
        return out
    out["circuit_label_kept"] = sum(bool(r["circuit_label_kept"]) for r in ok) / len(ok)
    searched = [r for r in ok if "circuit_fraction_original" in r and r.get("searched")]
    if searched:
        for key, name in (("circuit_fraction", "explanation"), ("circuit_fraction_original", "original")):
            found = [r[key] for r in searched if r[key] is not None and (key != "circuit_fraction" or r["circuit_label_kept"])]
            histogram = {str(f): sum(1 for v in found if v == f) for f in DEFAULT_FRACTIONS}
            histogram["none"] = len(searched) - len(found)
            out[f"smallest_fraction_{name}"] = {
                "distribution": histogram,
                **_quantiles(found),
                "share_kept_at_10pct": sum(1 for v in found if v <= 0.1) / len(searched),
            }
        pairs = [
            (r["circuit_fraction"], r["circuit_fraction_original"])
            for r in searched
            if r["circuit_label_kept"] and r["circuit_fraction_original"] is not None
        ]
        out["explanation_vs_original"] = {
            "pairs": len(pairs),
            "explanation_smaller": sum(e < x for e, x in pairs),
            "equal": sum(e == x for e, x in pairs),
            "explanation_larger": sum(e > x for e, x in pairs),
            "nodes_explanation": _quantiles([r["circuit_nodes"] for r in searched if r["circuit_label_kept"]]),
            "nodes_original": _quantiles(
                [r["circuit_nodes_original_smallest"] for r in searched if r["circuit_nodes_original_smallest"] is not None]
            ),
        }
    controls = [r["circuit_random_kept"] for r in ok if r.get("circuit_random_kept") is not None]
    if controls:
        out["random_circuit_label_kept"] = round(statistics.fmean(controls), 4)
    out["jaccard_nodes"] = _quantiles([r["circuit_jaccard_nodes"] for r in ok])
    return out


def print_summary(summary: dict, stream=sys.stdout) -> None:
    print(f"images: {summary['images']}  ok: {summary['ok']}  failed: {summary['failed']}", file=stream)
    if not summary.get("ok"):
        return
    print(f"circuit keeps the label: {100 * summary['circuit_label_kept']:.0f}% of images", file=stream)
    for name in ("explanation", "original"):
        stats = summary.get(f"smallest_fraction_{name}")
        if stats:
            dist = ", ".join(f"{k}: {v}" for k, v in stats["distribution"].items() if v)
            print(f"smallest label-keeping fraction per layer ({name}): median {stats.get('median')}  [{dist}]", file=stream)
            print(f"  kept with <= 10% of channels per layer: {100 * stats['share_kept_at_10pct']:.0f}% of images", file=stream)
    comp = summary.get("explanation_vs_original")
    if comp:
        print(
            f"explanation's circuit vs original's (smallest fractions, {comp['pairs']} images): smaller "
            f"{comp['explanation_smaller']}, equal {comp['equal']}, larger {comp['explanation_larger']}; "
            f"median channels {comp['nodes_explanation'].get('median')} vs {comp['nodes_original'].get('median')}",
            file=stream,
        )
    if "random_circuit_label_kept" in summary:
        print(
            f"control: random circuits of the same size keep the label {100 * summary['random_circuit_label_kept']:.0f}% "
            f"of the time",
            file=stream,
        )
    print(f"node Jaccard original vs explanation: median {summary['jaccard_nodes'].get('median')}", file=stream)


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch circuit`` with arguments checked by :func:`~actmatch.commands.parsers.circuit.parse_args`."""
    from actmatch.commands.explain import build_explainer

    out_dir = Path(args.out)
    torch.manual_seed(args.seed)
    try:
        explainer = build_explainer(None, args.backbone, args.weights, args.steps).to(args.device)
        layers = circuit_taps(explainer.classifier, args.taps, fallback=explainer.taps)
    except (ClassifierLoadError, FileNotFoundError, ValueError) as err:
        print(f"actmatch circuit: {err}", file=sys.stderr)
        return 2
    classifier = explainer.classifier
    paths = expand_image_paths(args.images)
    if not paths:
        print(f"actmatch circuit: no images found in {args.images}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    ablation = args.ablation
    if ablation == "mean":  # dataset means over the readable images (one forward pass each)
        images = []
        for path in paths:
            with contextlib.suppress(ImageReadError, OSError):  # reported in the main loop
                images.append(_load(path, classifier)[1].to(explainer.device))
        ablation = MeanAblation.from_images(classifier, images, list(layers)) if images else "mean"
    k = args.k if args.k is not None else args.fraction
    rows = []
    start_all = time.perf_counter()
    bar = tqdm(paths, desc="circuits", unit="image", file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.name[:30])
        start = time.perf_counter()
        row = {"image": str(path), "searched": args.search}
        try:
            original, image = _load(path, classifier)
            image = image.to(explainer.device)
            if args.masks_from:
                mask, row["mask_source"] = saved_mask(Path(args.masks_from) / path.stem, (image.shape[-2], image.shape[-1]))
            else:
                mask = explainer.fit_images(image, steps=args.steps, seed=args.seed).masks
                row["mask_source"] = f"fit ({args.steps or explainer.steps} steps)"
            evaluated = explainer.evaluate(image, mask.to(explainer.device))
            label = int(evaluated.label[0])
            folder = out_dir / path.stem
            folder.mkdir(parents=True, exist_ok=True)
            _write_mask(mask, (original.size[1], original.size[0]), folder / "mask.png")
            summary = write_circuit_outputs(
                explainer,
                image,
                mask,
                folder,
                k=k,
                scoring=args.scoring,
                ablation=ablation,
                search=args.search,
                layers=layers,
                rank=args.rank,
            )
            row.update(
                label=label,
                label_name=classifier.class_name(label),
                mask_area=round(float(mask.mean()), 6),
                explanation_label_kept=bool(evaluated.label_kept[0]),
                **summary,
                seconds=round(time.perf_counter() - start, 2),
                status="ok",
                error="",
            )
            (folder / "circuit_summary.json").write_text(json.dumps(row, indent=2) + "\n")
        except (ImageReadError, OSError, ValueError, RuntimeError) as err:
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            tqdm.write(f"error: {message}", file=sys.stderr)
            row.update(status="error", error=message)
        rows.append(row)
    with open(out_dir / "circuits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (out_dir / "circuits_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    print(f"wrote {out_dir}/ in {time.perf_counter() - start_all:.1f} s")
    return 1 if summary["failed"] else 0
