"""A study's masks against a baseline's top-k cut of the same size, on the same exam: is the mask's
robustness more than its area buys?

    .venv/bin/python experiments/evaluation/size_matched.py STUDY_DIR/RECIPE --exam-photos DIR [--method gradcam]

For every image folder of an ``actmatch study`` recipe folder: the file at the model's input (as
``actmatch explain`` reads it), the study's mask as classified (``mask_input.png``), and the
baseline's map (``actmatch.explainers.baselines``, e.g. Grad-CAM from pytorch-grad-cam) cut at exactly
the mask's pixel count (its top k). Both are judged by the study's exam (the same seed, photo pool
and draws per image: ``judge_masks``). Prints how many masks score as the study scored them (a check
of the setup), the medians and means of exam robustness (all draws, other photos) and the paired
test (``paired_comparison``: Wilcoxon signed-rank).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from actmatch.commands.benchmark import load_exam
from actmatch.commands.circuit import saved_mask
from actmatch.datamodules.images import read_for_model
from actmatch.evaluation.benchmark import BenchImage
from actmatch.evaluation.exam import judge_masks
from actmatch.evaluation.families import EXAM_SEED
from actmatch.evaluation.methods import METHODS
from actmatch.evaluation.statistics import paired_comparison
from actmatch.explainers.classifier import load_classifier
from actmatch.explainers.masks import top_fraction_mask
from actmatch.results import MODEL_MASK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_dir", help="an `actmatch study` recipe folder (OUT/CONFIG)")
    parser.add_argument("--exam-photos", required=True, help="the photo pool the study's exam used")
    parser.add_argument("--exam-seed", type=int, default=EXAM_SEED)
    parser.add_argument("--method", default="gradcam", help="a baseline of `actmatch benchmark` (default: gradcam)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folders = sorted(p.parent for p in Path(args.recipe_dir).glob("*/summary.json"))
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    classifier = load_classifier(summaries[0]["backbone"])
    paths = [Path(s["image"]) for s in summaries]
    exam = load_exam(args.exam_photos, [BenchImage(str(p), torch.empty(0)) for p in paths], classifier.input_size, args.exam_seed)
    method = METHODS[args.method](classifier)
    ours, theirs = {"robustness": [], "robust_photos": []}, {"robustness": [], "robust_photos": []}
    same = 0
    for folder, summary, path in zip(folders, summaries, paths):
        _, image = read_for_model(path, classifier.input_size, classifier.fixed_input_size)
        image = image[None]
        mask, source = saved_mask(folder, tuple(image.shape[-2:]))
        if not source.endswith(MODEL_MASK):
            raise SystemExit(f"{folder}: no {MODEL_MASK} at the model input {tuple(image.shape[-2:])} (got {source})")
        with torch.no_grad():
            logits = classifier(image)
        relevance = method.attribute(image, logits.argmax(-1))
        cut = top_fraction_mask(relevance, mask.mean().item())  # the same pixel count as the mask
        scores = judge_masks(classifier, image, torch.cat([mask, cut]), exam.draws(image, path.name), logits=logits)
        for key in ours:
            ours[key].append(float(scores[key][0]))
            theirs[key].append(float(scores[key][1]))
        same += abs(ours["robustness"][-1] - summary["robustness"]) < 1e-3  # the study's own score, reproduced
    print(
        f"{len(folders)} images ({same} of them score the mask as the study did), the study's masks against "
        f"{args.method}'s top-k at the same size:"
    )
    for key in ours:
        test = paired_comparison(ours[key], theirs[key])
        print(f"{key:<14} median {statistics.median(ours[key]):.3f} / {statistics.median(theirs[key]):.3f}  "
              f"mean {statistics.fmean(ours[key]):.3f} / {statistics.fmean(theirs[key]):.3f}  "
              f"mask better {test['wins']}, ties {test['ties']}, worse {test['losses']}, p {test['p_value']:.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
