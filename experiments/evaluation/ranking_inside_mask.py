"""Would another order around `am`'s mask (inside it, outside it, or both) score better? A screen on a benchmark run.

    .venv/bin/python experiments/evaluation/ranking_inside_mask.py OUT --images DIR --exam-photos DIR

``OUT`` is an ``actmatch benchmark`` run on ``DIR`` with `am` among its methods (its ``raw/`` maps; with
``ig`` among them too, the ``ig_inside`` order). `am`'s map is its binary mask m plus the mask network's
probability s, so the curves (insertion, deletion) and every cut smaller than the mask follow s inside the
mask. Deletion asks which kept pixels the label needs most, which s was never fitted to say. Orders scored
beside `am`, each the mask first (its equal-area cut is still the mask) and, unless it says otherwise, the
outside in s's order:

* ``grad_e``: inside by the mask's gradient at the fitted mask, ∂f_y(e)/∂m = Σ_c ∂f_y/∂e_c · (x_c − μ_c),
  e = m ⊙ x + (1 − m) ⊙ μ (μ the mean colour, the fit's fill): which kept pixels the explanation's score
  relies on most, to first order; one backward pass;
* ``grad_x``: the same gradient at the image (m = 1), gradient × (image − mean colour);
* ``ig_inside``: inside by the run's integrated-gradients map;
* ``smooth<σ>`` (``--smooth σ ...``): inside and outside by s blurred with a Gaussian of σ pixels (compact cuts);
* ``smooth_in<σ>`` (``--smooth-inside σ ...``): inside by s blurred, outside by s itself (compact cuts below the
  mask's area, the network's order above it);
* ``cam_out``, ``cam_in``, ``cam_all``: the class activation map of the prediction (W_y · A + b_y on the final
  features, Grad-CAM before its ReLU, bilinear to the image; :meth:`FeatureMaskNet.class_activation_map`, the
  map v4's fit starts from) as the order outside the mask, inside it, or on both sides;
* ``cam``: that class map alone, a relevance map without a mask (its region the smallest sufficient cut).

``--orders`` picks among them (default: the three gradient orders); `am` is always scored.

Every order is scored by :func:`actmatch.evaluation.exam.score_maps`, the benchmark's own columns (the same
exam, seed and grid); the run's other methods are read from its results.csv. Prints the means (medians for
areas) and each order against `am` and against every method of the run (wins–ties–losses, p, unadjusted).
A screen for photos other than the evaluation photos (e.g. 30 of ``imagenet-train``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from actmatch.commands.benchmark import load_exam, load_images, read_results
from actmatch.evaluation.benchmark import MapStore
from actmatch.evaluation.exam import score_maps
from actmatch.evaluation.families import EXAM_SEED
from actmatch.evaluation.statistics import paired_comparison
from actmatch.explainers.backgrounds import gaussian_blur, make_fill
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.feature_masknet import FeatureMaskNet

#: column, lower is better, median (else mean)
COLUMNS = [
    ("deletion_auc", True, False),
    ("deletion_auc_blur", True, False),
    ("insertion_auc", False, False),
    ("insertion_auc_rise", False, False),
    ("dg_score", True, False),
    ("robust_sufficient_area", True, True),
    ("robustness", False, False),
]


def mask_gradient(classifier, image: torch.Tensor, mask: torch.Tensor, y: int) -> torch.Tensor:
    """∂f_y(m ⊙ x + (1 − m) ⊙ μ)/∂m at ``mask`` (1, 1, H, W): the logit's first-order loss per removed pixel."""
    fill = make_fill(image, "mean", classifier.data_config["mean"])
    m = mask.clone().requires_grad_(True)
    logit = classifier(m * image + (1 - m) * fill)[0, y]
    (grad,) = torch.autograd.grad(logit, m)
    return grad.detach()


@functools.cache
def class_map_network(classifier) -> FeatureMaskNet:
    """The network whose class activation map :func:`class_map` reads, built once per classifier."""
    return FeatureMaskNet(classifier, stages=[-1], width=4, class_map=True)


def class_map(classifier, image: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W) class activation map of the prediction, W_y · A + b_y standardised, bilinear to the image."""
    net = class_map_network(classifier)
    model = classifier.model
    with torch.no_grad():
        final = model.forward_intermediates(classifier.normalize(image), indices=[len(model.feature_info) - 1])[0]
        cam = net.class_activation_map(final, model.forward_head(final))
    return torch.nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)


def unit_interval(values: torch.Tensor) -> torch.Tensor:
    """``values`` shifted and scaled into [0, 1), the same order (an outside order below every mask pixel)."""
    low = values - values.min()
    return low / low.max().clamp_min(1e-12) * 0.99


def inside_first(mask: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """A map whose order is the mask first (by ``inside``), then the rest (by ``outside`` in [0, 1))."""
    if mask.any():
        inside = inside - inside[mask].min()
        inside = inside / inside[mask].max().clamp_min(1e-12)
    return torch.where(mask, 2 + inside, outside)


GRADIENT_ORDERS = ("grad_e", "grad_x", "ig_inside")
CLASS_MAP_ORDERS = ("cam_out", "cam_in", "cam_all", "cam")
UNDELIVERED = ("cam",)  # relevance maps: no binary mask of their own


def orders(
    classifier, image: torch.Tensor, am: torch.Tensor, ig: torch.Tensor | None, y: int,
    which: tuple[str, ...] = GRADIENT_ORDERS, smooth: tuple[float, ...] = (), smooth_inside: tuple[float, ...] = (),
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The candidate maps (1, 1, H, W) of one image; `am`'s mask is where its map is ≥ 1."""
    mask = am >= 1
    s = am - mask.float()
    cam = class_map(classifier, image) if any(k.startswith("cam") for k in which) else None
    build = {
        "cam_out": lambda: inside_first(mask, s, unit_interval(cam)),
        "cam_in": lambda: inside_first(mask, cam, s),
        "cam_all": lambda: inside_first(mask, cam, unit_interval(cam)),
        "cam": lambda: cam,
        "grad_e": lambda: inside_first(mask, mask_gradient(classifier, image, mask.float(), y), s),
        "grad_x": lambda: inside_first(mask, mask_gradient(classifier, image, torch.ones_like(am), y), s),
        "ig_inside": lambda: inside_first(mask, ig, s),
    }
    candidates = {"am": am, **{key: build[key]() for key in which if key != "ig_inside" or ig is not None}}
    for sigma in smooth:
        blurred = gaussian_blur(s, sigma)
        candidates[f"smooth{sigma:g}"] = inside_first(mask, blurred, blurred.clamp(0, 1 - 1e-6))
    for sigma in smooth_inside:
        candidates[f"smooth_in{sigma:g}"] = inside_first(mask, gaussian_blur(s, sigma), s)
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an `actmatch benchmark` output folder with am's maps")
    parser.add_argument("--images", required=True, help="the run's --images")
    parser.add_argument("--exam-photos", required=True, help="the run's --exam-photos")
    parser.add_argument("--exam-seed", type=int, default=EXAM_SEED)
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (ties in the ranking)")
    parser.add_argument("--orders", nargs="*", default=list(GRADIENT_ORDERS), choices=GRADIENT_ORDERS + CLASS_MAP_ORDERS)
    parser.add_argument("--smooth", type=float, nargs="*", default=[], help="also s blurred, σ in pixels")
    parser.add_argument("--smooth-inside", type=float, nargs="*", default=[], help="also s blurred inside the mask only")
    args = parser.parse_args()
    classifier = load_classifier("efficientnet_lite0").eval()
    images = load_images([args.images], classifier, None)
    exam = load_exam(args.exam_photos, images, classifier.input_size, args.exam_seed)
    run = {(Path(r["image"]).name, r["method"]): r for r in read_results(args.out / "results.csv")}
    baselines = sorted({m for (_, m) in run if m != "am"})
    store = MapStore(args.out / "raw")
    values: dict[str, dict[str, list[float]]] = {}
    for item in images:
        name = Path(item.path).name
        raw = {m: saved["map"].float() for m in ("am", "ig") if (saved := store.load(name, m)) is not None}
        if "am" not in raw:
            raise SystemExit(f"{args.out} has no `am` map of {name}: give a benchmark run of --images with am among its methods")
        x = item.image[None]
        with torch.no_grad():
            logits = classifier(x)
        y = int(logits.argmax(-1))
        as_map = lambda t: t.reshape(1, 1, *t.shape[-2:])  # noqa: E731
        ig = as_map(raw["ig"]) if "ig" in raw else None
        maps = orders(classifier, x, as_map(raw["am"]), ig, y, tuple(args.orders), tuple(args.smooth), tuple(args.smooth_inside))
        area = float((maps["am"] >= 1).float().mean()) or 0.2
        resampled = item.resampled[None] if item.resampled is not None else None
        with torch.no_grad():
            scores = score_maps(
                classifier, x, torch.cat(list(maps.values())), exam.draws(x, name), y, area, logits=logits,
                file_size=item.file_size, resampled=resampled, seed=args.seed, chunk=8,
                delivered=torch.tensor([key not in UNDELIVERED for key in maps]),
            )  # fmt: skip
        for j, key in enumerate(maps):
            for column, _, _ in COLUMNS:
                values.setdefault(key, {}).setdefault(column, []).append(float(scores[column][j]))
        for method in baselines:
            for column, _, _ in COLUMNS:
                values.setdefault(method, {}).setdefault(column, []).append(float(run[name, method][column]))
        gap = abs(values["am"]["deletion_auc"][-1] - float(run[name, "am"]["deletion_auc"]))
        print(name, {k: round(v["deletion_auc"][-1], 3) for k, v in values.items()}, f"am vs run {gap:.1g}", flush=True)
    print(f"\n{len(images)} images; means (medians for areas); lower is better for AUC(del), DG and areas")
    print(f"{'':<12}" + "".join(f"{c[:18]:>20}" for c, _, _ in COLUMNS))
    for key, by_column in values.items():
        cells = [statistics.median(v) if med else statistics.fmean(v) for (c, _, med), v in zip(COLUMNS, by_column.values())]
        print(f"{key:<12}" + "".join(f"{v:>20.3f}" for v in cells))
    for key in [k for k in values if k not in baselines and k != "am"]:
        print(f"\n{key} against: wins–ties–losses p")
        for ref in ["am", *baselines]:
            cells = []
            for column, lower, _ in COLUMNS:
                t = paired_comparison(values[key][column], values[ref][column], higher_is_better=not lower)
                cells.append(f"{t['wins']}–{t['ties']}–{t['losses']} {t['p_value']:.2g}")
            print(f"  {ref:<10}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
