"""Latency of an amortized explanation against one classifier forward pass, B = 1, in one run.

    .venv/bin/python experiments/evaluation/amortized_latency.py CKPT [--backbone efficientnet_lite0]
        [--rounds 60] [--threads N] [--device cpu] [--scan N [--border-free F]]

The checkpoint's U-Net (``actmatch fit``) on scikit-image's espresso photo at the classifier's
input size (224 px for Lite0). Each round times, in a fresh random order:

* ``forward``: one classifier pass f(x);
* ``mask+forward``: the U-Net's mask m(x) and the classifier on e = m ⊙ x + (1 − m) ⊙ fill,
  the quantity the amortized explainer adds to a classification;
* ``explain``: ``ActMatchExplainer.explain`` in amortized mode (the label f(x), m(x), f(e)),
  what ``actmatch explain --amortized`` spends per image before writing files. A network that
  reads the explained classifier (FeatureMaskNet with the class map) gives f(x) from the pass
  that makes m(x), so only f(e) is a second pass;
* ``explain − forward`` (derived per round): what an explanation adds to classifying the image.

With ``--freeze`` the first two are also timed as frozen TorchScript (``torch.jit.trace``, ``torch.jit.freeze``,
``torch.jit.optimize_for_inference``: batch norms folded into the convolutions, no Python between layers), each
against the frozen forward: whether the ratio is the eager interpreter's overhead. The trace fixes the cut's
threshold at the espresso photo's, so the frozen pass times that photo and explains no other.

With ``--scan N`` the ``explain`` rows also cut the ranking at N areas and keep the smallest cut
the recipe's criterion accepts (``actmatch explain --amortized --scan N``), and with
``--border-free F`` a band-free cut of at most F times its area.

Prints the median milliseconds of each, and the median of the per-round ratios to ``forward``
with a 95 % bootstrap interval over rounds (rounds pair the timings, so the ratio is measured
under the same machine load).
"""

from __future__ import annotations

import argparse

import skimage.data
import torch
import torch.nn.functional as F

from actmatch.commands.explain import build_explainer, use_amortized_refinement, use_checkpoint
from actmatch.commands.parsers.explain import add_scan_argument, check_scan_argument
from actmatch.evaluation.timing import interleaved_seconds, ratio_table
from actmatch.explainers.backgrounds import make_fill
from actmatch.explainers.unet import binarize
from actmatch.memory import keep_freed_memory


def espresso(size: int) -> torch.Tensor:
    """The espresso photo as a (1, 3, size, size) batch in [0, 1]."""
    image = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


class MaskAndForward(torch.nn.Module):
    """f(m(x) ⊙ x + (1 − m(x)) ⊙ fill): the mask network's hard mask, then the classifier on the explanation."""

    def __init__(self, unet: torch.nn.Module, classifier: torch.nn.Module, fill: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.classifier, self.fill = unet, classifier, fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (self.unet(x) > 0).to(x)  # binarize's forward
        return self.classifier(mask * x + (1 - mask) * self.fill)


def frozen_pass(module: torch.nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` traced on ``x``, frozen and optimised for inference; refused unless it gives module(x) to 1e-4."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the cut's threshold becomes a constant: x's
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module.eval(), x, check_trace=False)))
    if not torch.allclose(frozen(x), module(x), atol=1e-4):
        raise SystemExit("--freeze: the frozen pass does not give the eager pass's output on the photo")
    return frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an `actmatch fit` checkpoint")
    parser.add_argument("--backbone", default=None, help="timm model name (default: efficientnet_lite0, offline)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--freeze", action="store_true", help="also time frozen TorchScript passes, each against a frozen forward"
    )
    add_scan_argument(parser)  # as `actmatch explain --amortized`
    parser.set_defaults(amortized=True)
    args = parser.parse_args()
    check_scan_argument(parser, args)
    keep_freed_memory()  # as the actmatch CLI does
    if args.threads:
        torch.set_num_threads(args.threads)
    explainer = build_explainer(None, args.backbone)
    use_checkpoint(explainer, args.checkpoint, amortized=True)  # its network, one pass
    use_amortized_refinement(explainer, args.scan, args.border_free, args.grow, args.bisect)
    explainer.to(args.device).eval()
    classifier, unet = explainer.classifier, explainer.unet.eval()
    x = espresso(classifier.input_size).to(args.device)
    mean = classifier.data_config["mean"]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def forward() -> None:
        classifier(x)

    def mask_and_forward() -> None:
        mask, _ = binarize(unet(x))
        classifier(mask * x + (1 - mask) * make_fill(x, explainer.fill, mean))

    def explain() -> None:
        explainer.explain(x)

    tasks = {"forward": forward, "mask+forward": mask_and_forward, "explain": explain}
    base = dict.fromkeys(tasks, "forward")  # each row's ratio is to this row, round by round
    with torch.inference_mode():
        if args.freeze:
            fill = make_fill(x, explainer.fill, mean)
            frozen = {
                "forward (frozen)": frozen_pass(classifier, x),
                "mask+forward (frozen)": frozen_pass(MaskAndForward(unet, classifier, fill), x),
            }
            tasks.update({name: (lambda f=f: f(x)) for name, f in frozen.items()})
            base.update(dict.fromkeys(frozen, "forward (frozen)"))
        times = interleaved_seconds(tasks, args.rounds, sync=sync)
    threads = torch.get_num_threads()
    setting = f"{classifier.name}, B = 1, {x.shape[-1]} px, {args.rounds} rounds, {threads} threads"
    print(f"{args.checkpoint} ({explainer.recipe}): {setting}")
    times["explain − forward"] = [t - f for t, f in zip(times["explain"], times["forward"])]
    base["explain − forward"] = "forward"
    print("\n".join(ratio_table(times, base)))


if __name__ == "__main__":
    main()
