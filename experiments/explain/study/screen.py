"""Quick screen of fit configs: the per-image fit only, area and label at the model's input size.

    .venv/bin/python experiments/explain/study/screen.py IMAGE_DIR N CONFIG.yaml [CONFIG.yaml ...]

Prints one line per config: label kept, median and mean area (an image whose label is lost counts
as area 1), median p(e)/p(x), median seconds, then every image's area. The same fit as
`actmatch study` (``fit_images``, fit seed 0, 2 threads), without the robustness evaluation and
without mapping the mask to the file's size, so it ranks ideas faster; `actmatch study` measures rows.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

from actmatch.commands.explain import build_explainer
from actmatch.datamodules.images import expand_image_paths, load_image


def main(folder: str, count: int, configs: list[str]) -> None:
    torch.set_num_threads(2)
    paths = expand_image_paths([folder])[:count]
    for config in configs:
        explainer = build_explainer(config, None, None, None)
        areas, kept, seconds, ratios = [], 0, [], []
        for path in paths:
            image, _ = load_image(path, explainer.classifier.input_size)
            start = time.perf_counter()
            result = explainer.fit_images(image[None], seed=0)
            seconds.append(time.perf_counter() - start)
            ok = bool(result.label_kept[0])
            areas.append(float(result.masks.mean()) if ok else 1.0)
            kept += ok
            ratios.append(float(result.confidence_explanation[0] / result.confidence_original[0]))
        print(
            f"{Path(config).stem:24s} kept {kept}/{len(paths)} median {statistics.median(areas):.3f} "
            f"mean {statistics.mean(areas):.3f} pe/px {statistics.median(ratios):.2f} "
            f"sec {statistics.median(seconds):.1f} |",
            " ".join(f"{a:.3f}" for a in areas),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
