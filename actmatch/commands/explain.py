"""``actmatch explain`` and ``actmatch demo``: per-image masks for image files.

For each image, ``OUT/<folder>/`` receives ``mask.png`` (0/255, the file's size),
``mask_input.png`` (the mask the classifier saw, at the model's input size), ``explanation.png``,
``figure.png`` and ``summary.json`` (which also records the classifier's ``num_classes``,
``mean``, ``std`` and ``input_size``); ``<folder>`` is the image's path under the input folder it
was found in, without suffix (``n01440764/img_001``), or its stem for a file named on its own
(:func:`~actmatch.datamodules.images.expand_image_items`).
``OUT/summary.csv`` gets one row per image (with its ``folder``) plus an ``__aggregate__`` row,
and ``OUT/aggregate.json`` the aggregate (the files are written by :mod:`actmatch.results`).

Each image's folder is written to a hidden staging folder next to it and moved into place only
when complete, so a failure never leaves a half-written or corrupted result behind, and a
re-run skips the images whose folder is complete (``--overwrite`` redoes them): a killed run
loses only the images in flight. Staging folders of killed runs are removed at the start.
``--batch-size B`` fits B images at once (each resized to the model's square input).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from actmatch.commands.parsers.explain import (
    PRESETS,
    add_model_arguments,
    parse_args,
)
from actmatch.datamodules.images import ImageItem, ImageReadError, expand_image_items, read_for_model
from actmatch.explainers.classifier import ClassifierLoadError, FrozenClassifier
from actmatch.explainers.fit_checkpoint import FitCheckpoint
from actmatch.explainers.module import ActMatchExplainer, Explanation
from actmatch.explainers.stages import BorderFree, Grow, Scan, Stage
from actmatch.report import write_report
from actmatch.results import as_items, clean_staging, explanation_at, finished_rows, recipe_digest, write_result, write_summary

__all__ = [
    "main",
    "run",
    "add_model_arguments",
    "build_explainer",
    "explainer_init_args",
    "explain_files",
    "load_unet",
    "use_checkpoint",
    "preset_path",
    "PRESETS",
]


def classifier_overrides(args: argparse.Namespace) -> dict:
    """The explainer init args set by the classifier's flags
    (:func:`~actmatch.commands.parsers.explain.add_classifier_arguments`; unset ones left out)."""
    values = {
        "labels": args.labels,
        "num_classes": args.num_classes,
        "mean": args.mean,
        "std": args.std,
        "input_size": args.input_size,
    }
    return {key: value for key, value in values.items() if value is not None}


PRESET_DIR = Path(__file__).resolve().parents[2] / "experiments" / "explain"


def preset_path(name: str) -> str:
    """The config file of preset ``name`` (experiments/explain/<name>.yaml in the repository)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"preset {name!r} needs {path}; run actmatch from a checkout of the repository or pass --config with the file"
        )
    return str(path)


def _config_init_args(path: str) -> dict:
    import yaml

    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file not found: {config_path}")
    config = yaml.safe_load(config_path.read_text()) or {}
    config = config.get("model", config)
    return dict(config.get("init_args", {})) if "class_path" in config or "init_args" in config else dict(config)


def explainer_init_args(config: str | None = None, **overrides) -> dict:
    """:class:`ActMatchExplainer`'s init args, instantiated, from a YAML config (its ``model:``
    section or plain init args, with ``class_path``/``init_args`` for losses and U-Net) and
    overrides (None values are ignored); unset args take the class's defaults."""
    from jsonargparse import ArgumentParser

    init = _config_init_args(config) if config else {}
    init.update({key: value for key, value in overrides.items() if value is not None})
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ActMatchExplainer, skip={"classifier"}, fail_untyped=False)
    try:
        cfg = parser.parse_object(init)
    except argparse.ArgumentError as err:  # jsonargparse: unknown key, class_path or type
        raise ValueError(f"{config or 'explainer settings'}: {err}") from err
    return parser.instantiate_classes(cfg).as_dict()


def build_explainer(
    config: str | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    steps: int | None = None,
    classifier: FrozenClassifier | None = None,
    **overrides,
) -> ActMatchExplainer:
    """An :class:`ActMatchExplainer` from a YAML config and command-line overrides (see
    :func:`explainer_init_args`). An already loaded ``classifier`` is used as is (the config's
    backbone is then ignored)."""
    init = explainer_init_args(config, backbone=backbone, weights=weights, steps=steps, **overrides)
    return ActMatchExplainer(**init, classifier=classifier)


def load_unet(path: str, fallback: torch.nn.Module | None = None) -> torch.nn.Module:
    """The trained mask network of an ``actmatch fit`` checkpoint (see :meth:`FitCheckpoint.unet`)."""
    return FitCheckpoint.read(path).unet(fallback)


def use_checkpoint(explainer: ActMatchExplainer, path: str, amortized: bool) -> dict:
    """Give ``explainer`` the checkpoint's trained network (after checking that it explains this
    backbone); ``amortized``: one pass, under the checkpoint's recipe name and version. Returns the
    network's weights (a per-image fit's warm start)."""
    checkpoint = FitCheckpoint.read(path)
    checkpoint.check_backbone(explainer.classifier.name)
    explainer.unet = explainer.reading_classifier(checkpoint.unet(fallback=explainer.unet))
    if amortized:
        explainer.mode = "amortized"
        explainer.recipe, explainer.recipe_version = checkpoint.recipe, checkpoint.recipe_version
    return explainer.unet.state_dict()


def use_amortized_refinement(
    explainer: ActMatchExplainer,
    areas: int | None,
    border_free: float | None = None,
    grow: int | None = None,
    bisect: bool = False,
) -> str:
    """Refine ``explainer``'s amortized masks by the smallest accepted cut of their ranking
    (:class:`~actmatch.explainers.stages.Scan` with ``areas`` cuts, the recipe's criterion) or, with
    ``grow`` instead, only where the criterion refuses the pass's mask, by the smallest accepted of
    ``grow`` larger cuts (:class:`~actmatch.explainers.stages.Grow`; with ``bisect``, found by
    bisection); then, with ``border_free``, by a band-free cut of at most that many times the area
    (:class:`~actmatch.explainers.stages.BorderFree`). Returns the suffix the recipe's name gains,
    ``+scan<areas>``, ``+grow<grow>`` or ``+grow<grow>bisect`` (and ``+bf<factor>``), e.g.
    ``amortized-lite0+scan16``. With neither ``areas`` nor ``grow``, changes nothing and returns ``""``."""
    if areas is not None and grow is not None:
        raise ValueError(f"refine the amortized masks by a scan or a grow, one of them (got areas={areas}, grow={grow})")
    if areas is not None:
        first: Stage = Scan(areas=areas)
    elif grow is not None:
        first = Grow(areas=grow, bisect=bisect)
    else:
        return ""
    stages: list[Stage] = [first] + ([BorderFree(factor=border_free)] if border_free else [])
    explainer.amortized_stages = explainer.checked_amortized_stages(stages)
    suffix = f"+scan{areas}" if areas is not None else f"+grow{grow}" + ("bisect" if bisect else "")
    suffix += f"+bf{border_free:g}" if border_free else ""
    explainer.recipe += suffix
    return suffix


def print_table(rows: list[dict], agg: dict, stream=None) -> None:
    """A fixed-width table of the results and the aggregate (to stdout by default)."""
    stream = stream or sys.stdout
    header = f"{'image':<32} {'label':<22} {'p(x)':>6} {'p(e)':>6} {'kept':>5} {'area':>7} {'sec':>7}"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for r in rows:
        name = (r.get("folder") or Path(r["image"]).name)[-32:]
        if r["status"] != "ok":
            print(f"{name:<32} ERROR: {r['error']}", file=stream)
            continue
        print(
            f"{name:<32} {r['label_name'][:22]:<22} {r['confidence_original']:>6.3f} "
            f"{r['confidence_explanation']:>6.3f} {'yes' if r['label_kept'] else 'NO':>5} "
            f"{100 * r['mask_area']:>6.2f}% {r['seconds']:>7.2f}",
            file=stream,
        )
    print("-" * len(header), file=stream)
    if agg["explained"]:
        print(
            f"{agg['explained']}/{agg['images']} explained: label kept {100 * agg['label_kept_rate']:.1f}%, "
            f"median area {100 * agg['median_mask_area']:.2f}%, median {agg['median_seconds']:.2f} s/image",
            file=stream,
        )
    if agg["failed"]:
        print(f"{agg['failed']} image(s) failed (see above)", file=stream)


def _error_row(path: Path, err: Exception) -> dict:
    message = str(err) if str(path) in str(err) else f"{path}: {err}"
    tqdm.write(f"error: {message}", file=sys.stderr)
    return {"image": str(path), "folder": "", "status": "error", "error": message}


def _read(path: Path, classifier: FrozenClassifier, square: bool) -> tuple[Image.Image, torch.Tensor]:
    """The file as RGB and its model input (3, h, w): short side (or, if ``square``, both
    sides) at the classifier's input size."""
    return read_for_model(path, classifier.input_size, square or classifier.fixed_input_size)


def _batches(items: list[tuple[int, ImageItem]], classifier: FrozenClassifier, batch_size: int, on_error):
    """Yield lists of (position, item, original, model_image) of up to ``batch_size`` readable
    images; an unreadable file goes to ``on_error(position, item, error)`` and does not count."""
    batch = []
    for index, item in items:
        try:
            batch.append((index, item, *_read(item.path, classifier, square=batch_size > 1)))
        except (ImageReadError, OSError, ValueError) as err:
            on_error(index, item, err)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def explain_files(
    explainer: ActMatchExplainer,
    paths: Sequence[Path | ImageItem],
    out_dir: Path,
    seed: int = 0,
    steps: int | None = None,
    init_state: dict | None = None,
    amortized: bool = False,
    circuit: bool = False,
    show_progress: bool = True,
    measure=None,
    batch_size: int = 1,
    resume: bool = False,
) -> list[dict]:
    """Explain each file, write its folder, and return one summary row per file (errors too),
    in the order given.

    Args:
        explainer: the explainer (its classifier sets the input size).
        paths: files, or :class:`ImageItem` with their output folders (bare paths: the stem).
        out_dir: output root.
        seed, steps, init_state: passed to ``fit_images``.
        amortized: one forward pass of the explainer's U-Net instead of a fit.
        circuit: also write the channel circuit.
        show_progress: a progress bar on stderr.
        measure: ``measure(images, result, original, path) -> dict`` adds fields to each image's row
            and summary (called per image, with a batch of one; ``original`` is the file as an RGB
            image, ``path`` the file).
        batch_size: images fitted together; > 1 resizes each to the model's square input (a
            failed fit, e.g. out of memory, fails its whole batch; an unreadable file only itself).
        resume: keep the images whose folder is already complete (their row is read from
            their summary.json) and explain the rest.
    """
    classifier = explainer.classifier
    items = as_items(paths)
    clean_staging(out_dir)
    digest = recipe_digest(explainer, steps, seed, amortized, init_state is not None)
    rows = finished_rows(items, out_dir, classifier, circuit, digest) if resume else {}
    if resume and show_progress:
        others = len(finished_rows(items, out_dir, classifier, circuit)) - len(rows)
        if rows:
            print(f"{len(rows)} image(s) already explained in {out_dir}, skipped (--overwrite redoes them)", file=sys.stderr)
        if others:
            print(
                f"{others} image(s) in {out_dir} were explained with another recipe (settings, steps or seed): explained again",
                file=sys.stderr,
            )

    def with_digest(images, result, original, path) -> dict:
        return {**(measure(images, result, original, path) if measure else {}), "recipe_digest": digest}

    todo = [(index, item) for index, item in enumerate(items) if index not in rows]
    bar = tqdm(total=len(todo), desc="explaining", unit="image", disable=not show_progress, file=sys.stderr)

    def unreadable(index: int, item: ImageItem, err: Exception) -> None:
        rows[index] = _error_row(item.path, err)
        bar.update(1)

    for batch in _batches(todo, classifier, batch_size, unreadable):
        name = batch[0][1].path.name[:24] + (f" +{len(batch) - 1}" if len(batch) > 1 else "")
        bar.set_postfix_str(name)
        images = torch.stack([model_image for *_, model_image in batch]).to(explainer.device)  # (B, 3, h, w)
        try:
            if amortized:
                result = explainer.explain(images)
            else:
                result = explainer.fit_images(
                    images,
                    steps=steps,
                    seed=seed,
                    init_state=init_state,
                    progress=lambda i, n, name=name: bar.set_postfix_str(f"{name} step {i}/{n}", refresh=False),
                )
        except (OSError, ValueError, RuntimeError) as err:
            rows.update({index: _error_row(item.path, err) for index, item, *_ in batch})
            bar.update(len(batch))
            continue
        for i, (index, item, original, model_image) in enumerate(batch):
            rows[index] = _write_one(
                explainer,
                item,
                original,
                model_image,
                explanation_at(result, i, len(batch)),
                images[i : i + 1],
                out_dir,
                seed,
                circuit,
                with_digest,
            )
            bar.update(1)
    bar.close()
    return [rows[index] for index in range(len(items))]


def _write_one(
    explainer,
    item: ImageItem,
    original,
    model_image,
    result: Explanation,
    images: torch.Tensor,
    out_dir: Path,
    seed: int,
    circuit: bool,
    measure,
) -> dict:
    """Write one image's folder; its row, or an error row if measuring or writing fails."""
    try:
        extra = measure(images, result, original, item.path) if measure else None
        return write_result(explainer, item.path, original, model_image, result, out_dir, seed, circuit, item.folder, extra)
    except (ImageReadError, OSError, ValueError, RuntimeError) as err:
        return _error_row(item.path, err)


def _demo_photo(name: str, folder: Path) -> Path:
    """Save scikit-image's photo ``name`` as ``folder/<name>.png`` (the input of the demo)."""
    import skimage.data

    if not hasattr(skimage.data, name):
        raise ValueError(f"scikit-image has no photo {name!r}; try coffee, chelsea, astronaut or rocket")
    array = getattr(skimage.data, name)()
    path = folder / f"{name}.png"
    Image.fromarray(array).save(path)
    return path


def _outside(items: list[ImageItem], out_dir: Path) -> list[ImageItem]:
    """The items not inside ``out_dir`` (an output folder within an input folder is not input)."""
    out = out_dir.resolve()
    return [item for item in items if not item.path.resolve().is_relative_to(out)]


def main(command: str, argv: list[str]) -> int:
    return run(command, parse_args(command, argv))


def run(command: str, args: argparse.Namespace) -> int:
    """``actmatch explain|demo`` with arguments checked by :func:`~actmatch.commands.parsers.explain.parse_args`."""
    out_dir = Path(args.out)
    torch.manual_seed(args.seed)
    try:
        config = preset_path(args.preset) if args.preset else args.config
        explainer = build_explainer(config, args.backbone, args.weights, args.steps, **classifier_overrides(args))
        # the checkpoint's own network: one pass with --amortized, else the fit's starting point
        init_state = use_checkpoint(explainer, args.checkpoint, args.amortized) if args.checkpoint else None
        use_amortized_refinement(explainer, args.scan, args.border_free, args.grow, args.bisect)
    except (ClassifierLoadError, FileNotFoundError, ValueError) as err:
        print(f"actmatch {command}: {err}", file=sys.stderr)
        return 2
    explainer.to(args.device)
    paths: Sequence[Path | ImageItem]
    if command == "demo":
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            paths = [_demo_photo(args.photo, out_dir)]
        except ValueError as err:
            print(f"actmatch demo: {err}", file=sys.stderr)
            return 2
    else:
        paths = _outside(expand_image_items(args.images), out_dir)
        if not paths:
            print(f"actmatch explain: no images found in {args.images}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    rows = explain_files(
        explainer,
        paths,
        out_dir,
        args.seed,
        args.steps,
        init_state,
        args.amortized,
        args.circuit,
        batch_size=args.batch_size,
        resume=not args.overwrite,
    )
    agg = write_summary(rows, out_dir)
    report = write_report(out_dir)
    print_table(rows, agg)
    print(f"wrote {out_dir}/ in {time.perf_counter() - start:.1f} s; open {report} in a browser")
    return 1 if agg["failed"] else 0
