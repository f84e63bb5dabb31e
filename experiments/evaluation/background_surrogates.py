"""Which backgrounds a fit may draw stand in for the exam's other photos? A screen on a benchmark run.

    .venv/bin/python experiments/evaluation/background_surrogates.py OUT --images DIR --exam-photos DIR

``OUT`` is an ``actmatch benchmark --methods am,gradcam`` run on ``DIR`` (its ``raw/`` maps). Each map is cut
at fixed areas (its top ``a`` pixels) and the cut is planted on three kinds of background, 8 each:

* ``photos``: the exam's held-out family (other photos, cover-resized; ``--exam-photos``);
* ``fit kinds``: the fit's own backgrounds (solid, uniform, gaussian, dead leaves, pink noise, cycled);
* ``rivals``: class-evidence images no photo went into: pink noise optimised by gradient ascent on the
  logit of a random class (``--rivals`` images, ``--rival-steps`` Adam steps, jittered by up to 8 px),
  those of the explained label left out.

Prints, per map and area, the share of backgrounds on which the label is kept; per area, `am` paired against
Grad-CAM on each kind (wins–ties–losses over images, the benchmark's paired test); and per area the rank
correlation (Spearman, over images and maps) between the photos' share and each surrogate's: how well a
background a fit could use predicts which cuts hold on photos. A screen for photos other than the evaluation
photos (e.g. 30 of ``imagenet-train``, the other 270 as exam photos).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from scipy.stats import spearmanr

from actmatch.commands.benchmark import load_images, load_photo_pool
from actmatch.evaluation.families import Photos, cover_resize
from actmatch.evaluation.statistics import paired_comparison
from actmatch.explainers.backgrounds import FIT_KINDS, cycled_backgrounds, pink_noise
from actmatch.explainers.classifier import FrozenClassifier, load_classifier

AREAS = (0.1, 0.2, 0.3, 0.4, 0.6)
KINDS = ("photos", "fit kinds", "rivals")


def rival_images(classifier: FrozenClassifier, n: int, steps: int, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, S, S) images in [0, 1] and their classes (n,): pink noise x = σ(z) with z optimised by Adam
    (lr 0.1) to raise the logit f_c(x) of a random class c, each step on a copy rolled by up to 8 px."""
    generator = torch.Generator().manual_seed(seed)
    size = classifier.input_size
    classes = torch.randint(classifier.num_classes, (n,), generator=generator)
    torch.manual_seed(seed)
    z = torch.logit(pink_noise(torch.zeros(n, 3, size, size)).clamp(0.02, 0.98)).requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=0.1)
    for _ in range(steps):
        dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=generator))
        logits = classifier(torch.sigmoid(z).roll((dy, dx), (2, 3)))
        loss = -logits.gather(1, classes[:, None]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return torch.sigmoid(z).detach(), classes


def kept_share(classifier: FrozenClassifier, x: torch.Tensor, cut: torch.Tensor, backgrounds: torch.Tensor, y: int) -> float:
    """Share of ``backgrounds`` (n, 3, H, W) on which cut ⊙ x + (1 − cut) ⊙ r is classified y."""
    with torch.no_grad():
        return (classifier(cut * x + (1 - cut) * backgrounds).argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an `actmatch benchmark --methods am,gradcam` output folder")
    parser.add_argument("--images", required=True, help="the run's --images")
    parser.add_argument("--exam-photos", required=True, help="the run's --exam-photos")
    parser.add_argument("--rivals", type=int, default=16)
    parser.add_argument("--rival-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classifier = load_classifier("efficientnet_lite0").eval()
    rivals, rival_classes = rival_images(classifier, args.rivals, args.rival_steps)
    with torch.no_grad():
        hit = (classifier(rivals).argmax(-1) == rival_classes).float().mean().item()
    print(f"{args.rivals} rival images: classified as their class {hit:.0%}")
    images = load_images([args.images], classifier, None)
    photos = Photos(load_photo_pool(args.exam_photos, images, classifier.input_size))
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    rows = []  # (method, area, photos, fit kinds, rivals)
    for item in images:
        name = Path(item.path).name
        x = item.image[None]
        size = tuple(x.shape[-2:])
        with torch.no_grad():
            y = int(classifier(x).argmax(-1))
        backgrounds = {
            "photos": torch.cat([photos.draw(x, generator) for _ in range(8)]),
            "fit kinds": cycled_backgrounds(x, 10, FIT_KINDS)[:8],
            "rivals": torch.stack([cover_resize(r, size) for r in rivals[rival_classes != y][:8]]),
        }
        for method in ("am", "gradcam"):
            saved = torch.load(args.out / "raw" / name / f"{method}.pt", weights_only=True)["map"].float()
            flat = saved.flatten()
            order = flat.argsort(descending=True)
            for area in AREAS:
                cut = torch.zeros_like(flat)
                cut[order[: int(area * flat.numel())]] = 1
                cut = cut.view(1, 1, *size)
                rows.append((method, area, *(kept_share(classifier, x, cut, b, y) for b in backgrounds.values())))
        print(name, flush=True)
    print(f"\n{len(images)} images; label kept on 8 backgrounds of each kind, mean over images")
    print(f"{'map':<8} {'area':>5} {'photos':>7} {'fit kinds':>10} {'rivals':>7}")
    for method in ("am", "gradcam"):
        for area in AREAS:
            sel = [r for r in rows if r[0] == method and r[1] == area]
            means = [statistics.mean(r[i] for r in sel) for i in (2, 3, 4)]
            print(f"{method:<8} {area:>5} {means[0]:>7.3f} {means[1]:>10.3f} {means[2]:>7.3f}")
    print("\nam against gradcam, paired over images: wins–ties–losses (p)")
    print(f"{'area':>5} " + "".join(f"{kind:>22}" for kind in KINDS))
    for area in AREAS:
        pairs = [[r for r in rows if r[0] == m and r[1] == area] for m in ("am", "gradcam")]
        cells = []
        for i, _ in enumerate(KINDS, start=2):
            c = paired_comparison([r[i] for r in pairs[0]], [r[i] for r in pairs[1]])
            cells.append(f"{c['wins']}–{c['ties']}–{c['losses']} ({c['p_value']:.2g})")
        print(f"{area:>5} " + "".join(f"{cell:>22}" for cell in cells))
    print("\nSpearman's rho with the photos' share, per area (over images and both maps)")
    for area in AREAS:
        sel = [r for r in rows if r[1] == area]
        rho = [spearmanr([r[2] for r in sel], [r[i] for r in sel])[0] for i in (3, 4)]
        print(f"area {area}: fit kinds {rho[0]:.3f}, rivals {rho[1]:.3f}")


if __name__ == "__main__":
    main()
