"""What a smaller read of the image costs and loses: a screen for ``FeatureMaskNet(read_size=...)``.

    .venv/bin/python experiments/evaluation/read_sizes.py FOLDER [--sizes 224 160 128 112 96] [--area 0.55]
        [--rounds 40]

For the amortized latency goal (mask + masked forward ≤ 1.5 × one classifier forward): a decoder that reads
the classifier's features on a smaller copy of the image pays a smaller pass. Per read size r:

* ``× forward``: the median over ``--rounds`` rounds (random order within each) of the time of one
  ``FeatureMaskNet(read_size=r, class_map=True)`` pass (resize, read, class map and a width-4 decoder) on a
  random image, B = 1, over the time of one classifier forward at the input size;
* ``same label``: the share of the photos of ``FOLDER`` whose copy at r px the classifier labels as it
  labels the image (the class map explains the copy's prediction);
* ``kept``, ``p(e)/p(x)``: the class map of the copy alone (the network's ranking before any training),
  cut at ``--area`` and judged with the explainer's fill on the image at the input size: the share of
  labels kept and the median confidence ratio.

A screen for the training photos, never the evaluation photos.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import expand_image_paths, read_for_model
from actmatch.evaluation.timing import interleaved_seconds
from actmatch.explainers.feature_masknet import FeatureMaskNet
from actmatch.explainers.stages import cuts_of


def class_map_networks(classifier, sizes: list[int]) -> dict[int, FeatureMaskNet]:
    """Per size, a FeatureMaskNet reading ``classifier`` at that size whose logits rank as its class map
    (the decoder's head silenced)."""
    nets = {}
    for size in sizes:
        net = FeatureMaskNet(classifier, stages=[-1], width=4, class_map=True, read_size=size).eval()
        with torch.no_grad():
            net.head.weight.zero_()
        nets[size] = net
    return nets


@torch.no_grad()
def timings(classifier, nets: dict[int, FeatureMaskNet], rounds: int) -> dict[int, float]:
    """Per size, the median of the per-round ratio (network pass / classifier forward), B = 1."""
    size = classifier.input_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))  # the cost does not depend on the content
    tasks = {"forward": lambda: classifier(x), **{size: (lambda net=net: net(x)) for size, net in nets.items()}}
    times = interleaved_seconds(tasks, rounds)
    return {size: statistics.median(t / f for t, f in zip(times[size], times["forward"])) for size in nets}


@torch.no_grad()
def labels_kept(explainer, nets: dict[int, FeatureMaskNet], folder: Path, area: float) -> dict[int, dict[str, float]]:
    """Per size: the share of photos whose copy is labelled as the image, and the class map's cut at ``area``:
    the share of labels kept and the median p(e)/p(x)."""
    classifier, fraction = explainer.classifier, torch.tensor([area])
    counts = {size: {"same": 0, "kept": 0, "ratios": []} for size in nets}
    paths = expand_image_paths([folder])
    for path in paths:
        x = read_for_model(path, classifier.input_size, classifier.fixed_input_size)[1][None]  # as `actmatch explain`
        probs = classifier(x).softmax(-1)[0]
        y = int(probs.argmax())
        for size, net in nets.items():
            scores = net(x)
            copy = net.read_copy(x)
            same = int(classifier(copy).argmax()) == y
            probs_e = classifier(explainer.explanations(x, cuts_of(scores, fraction))).softmax(-1)[0]
            counts[size]["same"] += same
            counts[size]["kept"] += int(probs_e.argmax()) == y
            counts[size]["ratios"].append(float(probs_e[y] / probs[y]))
    n = len(paths)
    return {
        size: {"same": c["same"] / n, "kept": c["kept"] / n, "ratio": statistics.median(c["ratios"])}
        for size, c in counts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="training photos (never the evaluation photos)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128, 112, 96])
    parser.add_argument("--area", type=float, default=0.55)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    explainer = build_explainer(None, None).eval()
    classifier = explainer.classifier
    nets = class_map_networks(classifier, args.sizes)
    ratios = timings(classifier, nets, args.rounds)
    kept = labels_kept(explainer, nets, args.folder, args.area)
    threads = torch.get_num_threads()
    print(f"{classifier.name}, B = 1, {threads} threads, {args.rounds} rounds; class map cut at {args.area}, {args.folder}")
    print(f"{'read px':>8} {'× forward':>10} {'same label':>11} {'kept':>6} {'p(e)/p(x)':>10}")
    for size in args.sizes:
        k = kept[size]
        print(f"{size:>8} {ratios[size]:>10.2f} {k['same']:>11.3f} {k['kept']:>6.3f} {k['ratio']:>10.3f}")


if __name__ == "__main__":
    main()
