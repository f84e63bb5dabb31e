"""What should the class map explain: the logit, the log-probability or the margin? A screen of the untrained class map.

    .venv/bin/python experiments/evaluation/class_map_scores.py FOLDER [--areas 0.1 0.25 0.5]

For every photo of ``FOLDER`` (loaded as ``actmatch explain`` loads it) and each ``class_score`` of
:class:`~actmatch.explainers.feature_masknet.FeatureMaskNet` (``logit``: CAM / Grad-CAM of f_y;
``log_probability``: Grad-CAM of log p_y; ``margin``: Grad-CAM of f_y − f_r, r the runner-up class), the
class map of the predicted class, upsampled bilinearly to the
image, is cut at each area (the top fraction of its pixels) and classified with the mean fill, as the study
does. No network is trained or fitted: the map alone. Printed per score and area: the labels kept and the
median p(e)/p(x); then, per area, each other score against the logit, paired (photos where only one keeps
the label, exact sign test).

A screen for the training photos, never the evaluation photos. One masked forward per area, score and photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import expand_image_paths, read_for_model
from actmatch.explainers.feature_masknet import CLASS_SCORES, FeatureMaskNet
from actmatch.explainers.stages import cuts_of


@torch.no_grad()
def screen(folder: Path, areas: list[float]) -> dict[str, np.ndarray]:
    """Per score: (photos, areas, 2) array of [kept, p(e)/p(x)]."""
    explainer = build_explainer(None, None)
    explainer.eval()
    classifier = explainer.classifier
    nets = {s: FeatureMaskNet(classifier, stages=[-1], width=4, class_map=True, class_score=s) for s in CLASS_SCORES}
    model, fractions = classifier.model, torch.tensor(areas, dtype=torch.float32)
    rows: dict[str, list] = {s: [] for s in CLASS_SCORES}
    for path in expand_image_paths([folder]):
        x = read_for_model(path, classifier.input_size, classifier.fixed_input_size)[1][None]
        final = model.forward_features(classifier.normalize(x))
        logits = model.forward_head(final)
        probs, y = logits.softmax(-1)[0], int(logits.argmax())
        for score, net in nets.items():
            cam = F.interpolate(net.class_activation_map(final, logits), size=x.shape[-2:], mode="bilinear", align_corners=False)
            explanations = explainer.explanations(x.expand(len(areas), -1, -1, -1), cuts_of(cam, fractions))
            probs_e = classifier(explanations).softmax(-1)
            rows[score].append(np.stack([(probs_e.argmax(-1) == y).float().numpy(), (probs_e[:, y] / probs[y]).numpy()], -1))
        print(path.name, flush=True)
    return {s: np.stack(r) for s, r in rows.items()}


def paired_kept(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Photos where only ``a`` keeps the label, where only ``b`` does, and the exact sign test's p."""
    wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    return wins, losses, float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="training photos (never the evaluation photos)")
    parser.add_argument("--areas", type=float, nargs="+", default=[0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6])
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder of photos")
    if not all(0 < a <= 1 for a in args.areas):
        parser.error(f"--areas must be in (0, 1], got {args.areas}")
    rows = screen(args.folder, args.areas)
    n = len(next(iter(rows.values())))
    print(f"\n{n} photos; labels kept (median p(e)/p(x)) at each cut of the class map")
    print(f"{'class_score':<16}" + "".join(f"{a:>14g}" for a in args.areas))
    for score, r in rows.items():
        print(f"{score:<16}" + "".join(f"{k:>7.3f} ({q:.2f})" for k, q in zip(r[..., 0].mean(0), np.median(r[..., 1], 0))))
    for score in [s for s in rows if s != "logit"]:
        print(f"\n{score} against logit, paired: only it keeps – only logit keeps (sign test p)")
        for i, a in enumerate(args.areas):
            wins, losses, p = paired_kept(rows[score][:, i, 0], rows["logit"][:, i, 0])
            print(f"{a:<6g} {wins}–{losses} (p = {p:.2g})")


if __name__ == "__main__":
    main()
