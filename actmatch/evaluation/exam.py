"""The exam: every metric of many maps of one image, in as few classifier passes as possible.

:func:`score_maps` is the benchmark's per-image protocol. Each map (every method's relevance map
for the image) is judged the same way; the columns fall in three groups (:data:`COLUMN_GROUPS`):

* ``fill``: judged with the model's mean colour, the fill the activation-matching fit itself
  uses (label kept at the equal-area cut and at fixed areas, p(e)/p(x), the smallest sufficient
  area, deletion AUC, the Dabkowski–Gal score with the box kept on the mean colour);
* ``exam``: judged with what no fit sees: the exam's perturbation families
  (:class:`~actmatch.evaluation.families.Exam`: other photos, blur, ROAD imputation, and solid
  colours and noise from the exam's own seed stream), the insertion paths (which start from a
  blur of the image), the deletion path to that blur, the Dabkowski–Gal crop score, and perturbations of the region itself
  (3×3 dilation, one-pixel shifts, the mask file read back, the photo resized with another filter);
* ``construction``: true for ``am`` by construction (its mask is the equal-area cut).

The *region* of a map is the cut it claims suffices. A method that delivers a binary mask (``am``:
its equal-area cut is its mask, ``delivered``) claims that mask, whenever it keeps the label. A map
claims its top-k cut at its smallest sufficient area, or the equal-area cut when that keeps the
label and is smaller. Dilation, shifts, read-back and resampling perturb that region.
"""

from __future__ import annotations

import torch
from torch import nn

from actmatch.evaluation import metrics as M
from actmatch.evaluation.batching import Job, PassCounter, classify
from actmatch.evaluation.columns import COLUMN_GROUPS
from actmatch.evaluation.families import ExamDraws
from actmatch.evaluation.maskers import DeactivationMasker
from actmatch.explainers.backgrounds import gaussian_blur, make_fill
from actmatch.explainers.classifier import FrozenClassifier
from actmatch.explainers.masks import cut, keep_count, pixel_ranks

__all__ = ["score_maps", "region_scores", "judge_masks", "score_keys", "FIXED_AREAS", "COLUMN_GROUPS", "ROBUST_RATE"]

#: fixed cut areas of ``kept_at_<percent>``: the same area for every method, set by no method
FIXED_AREAS = (0.05, 0.10, 0.20)
#: a cut is robust when it keeps the label on at least this share of the exam's draws
ROBUST_RATE = 0.8


def _fixed_key(fraction: float) -> str:
    return f"kept_at_{round(100 * fraction):d}"


def score_keys(families: list[str], fixed_areas: tuple[float, ...] = FIXED_AREAS) -> list[str]:
    """The keys :func:`score_maps` returns, for an exam with the given family names."""
    return [
        "area", "kept_equal_area", "ratio_equal_area", "kept_equal_area_convad",
        *(_fixed_key(f) for f in fixed_areas), "ratio_at_10", "smallest_sufficient_area", "region_area",
        "ratio_region", "kept_dilated", "ratio_dilated", "kept_shift", "kept_readback", "kept_resampled",
        "dg_score", "dg_score_fill", "insertion_auc", "insertion_auc_rise", "deletion_auc", "deletion_auc_blur", "robustness",
        *(f"robust_{name}" for name in dict.fromkeys(families)), "robust_sufficient_area",
    ]  # fmt: skip


def _blend_job(image: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> Job:
    """Inputs m_j ⊙ x + (1 − m_j) ⊙ fill for masks (n, 1, H, W)."""
    return Job(len(masks), lambda lo, hi: masks[lo:hi] * image + (1 - masks[lo:hi]) * fill)


def _stack_job(inputs: torch.Tensor) -> Job:
    return Job(len(inputs), lambda lo, hi: inputs[lo:hi])


@torch.no_grad()
def region_scores(
    classifier: nn.Module,
    image: torch.Tensor,
    regions: torch.Tensor,
    y: int,
    p_x: torch.Tensor,
    fill: torch.Tensor,
    file_size: tuple[int, int] | None = None,
    resampled: torch.Tensor | None = None,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> dict[str, torch.Tensor]:
    """(n,) values per region (n, 1, H, W) of one image, every input with the mean ``fill``:
    ``kept`` / ``ratio`` (p(e)/p(x)) of the region itself; ``kept_dilated`` / ``ratio_dilated``
    after a 3×3 dilation; ``kept_shift``, the share of its 4 one-pixel shifts that keep the label;
    ``kept_readback`` (read back from a file at ``file_size``) and ``kept_resampled`` (on the
    photo resized with another filter), NaN where not given."""
    n = regions.shape[0]
    prob = lambda lg: lg.softmax(-1)[:, y]  # noqa: E731
    jobs = [
        _blend_job(image, regions, fill),
        _blend_job(image, M.dilate(regions), fill),
        _blend_job(image, M.shifted(regions), fill),
    ]
    if file_size is not None:
        jobs.append(_blend_job(image, M.read_back(regions, file_size), fill))
    if resampled is not None:
        jobs.append(_blend_job(resampled.to(image), regions, fill))
    out = classify(classifier, jobs, chunk, counter)
    nan = torch.full((n,), float("nan"), device=image.device)
    kept = lambda lg: (lg.argmax(-1) == y).float()  # noqa: E731
    return {
        "kept": kept(out[0]),
        "ratio": prob(out[0]) / p_x,
        "kept_dilated": kept(out[1]),
        "ratio_dilated": prob(out[1]) / p_x,
        "kept_shift": kept(out[2]).view(4, n).mean(0),
        "kept_readback": kept(out[3]) if file_size is not None else nan,
        "kept_resampled": kept(out[-1]) if resampled is not None else nan,
    }


@torch.no_grad()
def judge_masks(
    classifier: FrozenClassifier,
    image: torch.Tensor,
    masks: torch.Tensor,
    draws: ExamDraws,
    *,
    logits: torch.Tensor | None = None,
    file_size: tuple[int, int] | None = None,
    resampled: torch.Tensor | None = None,
    chunk: int = 32,
    counter: PassCounter | None = None,
) -> dict[str, torch.Tensor]:
    """The exam of binary masks (n, 1, H, W) of one image (1, 3, H, W), as the study reports it:
    :func:`region_scores` of each mask, plus ``robustness`` (the share of the exam's draws that
    keep the label) and ``robust_<family>``."""
    if logits is None:
        logits = classify(classifier, [Job(1, lambda lo, hi: image)], chunk, counter)[0]
    y = int(logits.argmax(-1))
    p_x = logits.softmax(-1)[0, y]
    fill = make_fill(image, "mean", classifier.data_config["mean"])
    scores = region_scores(classifier, image, masks, y, p_x, fill, file_size, resampled, chunk, counter)
    robust = M.robustness_by_family(classifier, image, masks, draws, y, chunk, counter)
    scores["robustness"] = robust.pop("all").to(image.device)
    scores.update({f"robust_{name}": value.to(image.device) for name, value in robust.items()})
    return scores


@torch.no_grad()
def score_maps(
    classifier: FrozenClassifier,
    image: torch.Tensor,
    maps: torch.Tensor,
    draws: ExamDraws,
    target: int | torch.Tensor | None = None,
    area: float = 0.2,
    *,
    logits: torch.Tensor | None = None,
    file_size: tuple[int, int] | None = None,
    resampled: torch.Tensor | None = None,
    steps: int = 50,
    tau: float = 0.5,
    grid: tuple[float, ...] = M.SUFFICIENCY_GRID,
    refine: int = 4,
    fixed_areas: tuple[float, ...] = FIXED_AREAS,
    rate: float = ROBUST_RATE,
    seed: int = 0,
    chunk: int = 32,
    counter: PassCounter | None = None,
    delivered: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every benchmark column of M maps of one image.

    * ``area`` |c| / (H·W) of the equal-area cut c = top ``area`` of the map; ``kept_equal_area``:
      argmax f(c ⊙ x + (1 − c) ⊙ μ) = y; ``ratio_equal_area``: p_f(e)(y) / p_f(x)(y);
      ``kept_equal_area_convad``: the cut judged by ConvAD (``tau``);
    * ``kept_at_<p>``: the top p % of the map keeps the label (``fixed_areas``); ``ratio_at_10``;
    * ``smallest_sufficient_area``: grid scan then ``refine`` bisections, mean fill;
      ``region_area`` / ``ratio_region``: the map's region (module docstring) and its p(e)/p(x);
    * ``kept_dilated`` / ``ratio_dilated``: the region grown by a 3×3 max filter;
      ``kept_shift``: the share of the 4 one-pixel shifts of the region that keep the label;
      ``kept_readback``: the region written at ``file_size`` and read back (:func:`~actmatch.evaluation.metrics.read_back`);
      ``kept_resampled``: the region on ``resampled`` (the photo resized with another filter);
      NaN without ``file_size`` / ``resampled``;
    * ``dg_score`` (crop) and ``dg_score_fill`` (box on the mean colour): the smallest
      Dabkowski–Gal score over the map's cuts at the grid's fractions and the equal-area cut;
    * ``insertion_auc`` / ``insertion_auc_rise`` (heavy / published RISE blur start),
      ``deletion_auc`` (to the mean colour) and ``deletion_auc_blur`` (to the heavy blur) over ``steps`` steps;
    * ``robustness``: the share of the exam's draws on which the equal-area cut keeps the label,
      and ``robust_<family>`` per family; ``robust_sufficient_area``: the smallest top-k fraction
      kept on at least ``rate`` of the draws (:func:`~actmatch.evaluation.metrics.robust_sufficient_area`).

    Args:
        classifier: the frozen classifier (images in [0, 1], with ``data_config["mean"]``).
        image: (1, 3, H, W).
        maps: (M, 1, H, W) relevance maps, higher = more relevant.
        draws: the exam's draws for this image (``exam.draws(image, key)``).
        target: the class y (default: the top-1 class of ``logits``).
        area: the fraction of pixels of the equal-area cut (every map gets the same).
        logits: (1, K) logits of ``image`` if already known (saves a pass).
        file_size: (height, width) of the photo, for the read-back column.
        resampled: (1, 3, H, W) the photo resized to the model's size with another filter.
        steps, tau, grid, refine, fixed_areas, rate, seed: as in the metric functions.
        chunk: inputs per forward.
        counter: records the images classified and the time spent in the classifier.
        delivered: (M,) bool, maps whose equal-area cut is the binary mask their method delivers
            (``am``'s m + s cut at the mask's area): their region is that mask when it keeps the label.

    Returns:
        :func:`score_keys` -> (M,) float tensors.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if delivered is not None and tuple(delivered.shape) != (maps.shape[0],):
        raise ValueError(f"delivered must be (M,) bool, one per map, got {tuple(delivered.shape)} for {maps.shape[0]} maps")
    if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"maps must be (M, 1, H, W) with the image's size, got {tuple(maps.shape)} for {tuple(image.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    m, (h, w), device = maps.shape[0], image.shape[-2:], image.device
    if logits is None:
        logits = classify(classifier, [Job(1, lambda lo, hi: image)], chunk, counter)[0]
    y = int(logits.argmax(-1)) if target is None else int(torch.as_tensor(target).reshape(-1)[0])
    p_x = logits.softmax(-1)[0, y]
    prob = lambda lg: lg.softmax(-1)[:, y]  # noqa: E731
    fill = make_fill(image, "mean", classifier.data_config["mean"])  # (1, 3, H, W)
    ranks = pixel_ranks(maps, seed)  # (M, H·W)
    cuts = cut(ranks, keep_count(area, h * w, m, device), (h, w))  # (M, 1, H, W)

    grid_values = M._grid(grid)
    scanned = sorted(set(grid_values) | set(M._grid(fixed_areas))) if fixed_areas else grid_values
    fractions = torch.tensor(scanned, device=device)  # (U,), the last is 1.0
    k_scan = keep_count(fractions[:-1], h * w, len(fractions) - 1, device)
    counts = M._step_counts(steps, h * w, device)[1:-1]  # interior steps only
    heavy, rise = gaussian_blur(image), M.rise_blur(image)

    def scan_cuts(i: int) -> torch.Tensor:  # (U − 1, 1, H, W): map i's cuts at ``scanned`` except 1.0
        return cut(ranks[i].expand(len(k_scan), -1), k_scan, (h, w))

    def dg_inputs(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crops and box-on-fill inputs of map i's cuts (its scan cuts and its equal-area cut), and the box areas."""
        masks = torch.cat([scan_cuts(i), cuts[i : i + 1]])
        boxes = M.bounding_boxes(masks)
        crops = torch.cat([M.crop_resize(image, box) for box in boxes])
        box_masks = torch.zeros_like(masks)
        for j, (top, left, bottom, right) in enumerate(boxes):
            box_masks[j, :, top:bottom, left:right] = 1
        return crops, box_masks * image + (1 - box_masks) * fill, M.mask_area(box_masks)

    # ---- phase A: everything that needs no earlier answer, in one packed pass
    dg = [dg_inputs(i) for i in range(m)]
    jobs = [_blend_job(image, cuts, fill), Job(1, lambda lo, hi: heavy), Job(1, lambda lo, hi: rise), Job(1, lambda lo, hi: fill)]
    per_map = 7
    for i in range(m):
        jobs += [
            _blend_job(image, scan_cuts(i), fill),
            M._curve_job(heavy, image, ranks[i], counts),
            M._curve_job(rise, image, ranks[i], counts),
            M._curve_job(image, fill, ranks[i], counts),
            M._curve_job(image, heavy, ranks[i], counts),
            _stack_job(dg[i][0]),
            _stack_job(dg[i][1]),
        ]
    out = classify(classifier, jobs, chunk, counter)
    cut_logits, p_heavy, p_rise, p_fill = out[0], prob(out[1]), prob(out[2]), prob(out[3])
    rows = out[4:]
    convad = classify(DeactivationMasker(classifier, tau),
                      [Job(m, lambda lo, hi: (image.expand(hi - lo, -1, -1, -1), cuts[lo:hi]))], chunk, counter)[0]  # fmt: skip
    robust = M.robustness_by_family(classifier, image, cuts, draws, y, chunk, counter)

    full = torch.ones(m, 1, dtype=torch.bool, device=device) & bool(logits.argmax(-1) == y)
    scan_logits = [rows[per_map * i] for i in range(m)]
    kept = torch.cat([torch.stack([lg.argmax(-1) == y for lg in scan_logits]).reshape(m, -1), full], 1)  # (M, U)
    ends = p_x.reshape(1)
    insertion = torch.stack([torch.cat([p_heavy, prob(rows[per_map * i + 1]), ends]) for i in range(m)])  # (M, S + 1)
    insertion_rise = torch.stack([torch.cat([p_rise, prob(rows[per_map * i + 2]), ends]) for i in range(m)])
    deletion = torch.stack([torch.cat([ends, prob(rows[per_map * i + 3]), p_fill]) for i in range(m)])
    deletion_blur = torch.stack([torch.cat([ends, prob(rows[per_map * i + 4]), p_heavy]) for i in range(m)])
    dg_crop = torch.stack([M.dg_score(dg[i][2], prob(rows[per_map * i + 5]).double().cpu()).min() for i in range(m)])
    dg_fill = torch.stack([M.dg_score(dg[i][2], prob(rows[per_map * i + 6]).double().cpu()).min() for i in range(m)])

    # ---- phase B: the smallest sufficient area (mean fill), then each map's region
    def is_kept(rows_: list[int], mids: list[float]) -> list[bool]:
        masks = cut(ranks[rows_], keep_count(mids, h * w, len(rows_), device), (h, w))
        return (classify(classifier, [_blend_job(image, masks, fill)], chunk, counter)[0].argmax(-1) == y).tolist()

    in_grid = [scanned.index(g) for g in grid_values]
    sufficient = torch.tensor(M._bisect(*M._bracket(kept[:, in_grid], fractions[in_grid]), refine, is_kept), device=device)
    cut_kept = cut_logits.argmax(-1) == y
    own = cut_kept & (delivered.to(device) if delivered is not None else torch.zeros_like(cut_kept))
    smaller = cut_kept & (M.mask_area(cuts) <= sufficient)
    region_fraction = torch.where(own | smaller, M.mask_area(cuts), sufficient)
    regions = torch.where((own | smaller).view(-1, 1, 1, 1), cuts,
                          cut(ranks, keep_count(region_fraction, h * w, m, device), (h, w)))  # fmt: skip

    # ---- phase C: the region perturbed (dilation, shifts, read-back, another resampling)
    perturbed = region_scores(classifier, image, regions, y, p_x, fill, file_size, resampled, chunk, counter)

    # ---- phase D: the robust-sufficient area on the exam's draws
    robust_area = M.robust_sufficient_area(classifier, image, maps, draws, y, rate, grid, refine, seed=seed, chunk=chunk,
                                           counter=counter)  # fmt: skip

    ten = scanned.index(0.1) if 0.1 in scanned else None
    scores = {
        "area": M.mask_area(cuts),
        "kept_equal_area": cut_kept.float(),
        "ratio_equal_area": prob(cut_logits) / p_x,
        "kept_equal_area_convad": (convad.argmax(-1) == y).float(),
        **{_fixed_key(f): kept[:, scanned.index(f)].float() for f in fixed_areas},
        "ratio_at_10": torch.stack([prob(lg)[ten] for lg in scan_logits]) / p_x
        if ten is not None
        else torch.full((m,), torch.nan),
        "smallest_sufficient_area": sufficient,
        "region_area": M.mask_area(regions),
        "ratio_region": perturbed["ratio"],
        **{key: perturbed[key] for key in ("kept_dilated", "ratio_dilated", "kept_shift", "kept_readback", "kept_resampled")},
        "dg_score": dg_crop.to(device).float(),
        "dg_score_fill": dg_fill.to(device).float(),
        "insertion_auc": M._auc(insertion),
        "insertion_auc_rise": M._auc(insertion_rise),
        "deletion_auc": M._auc(deletion),
        "deletion_auc_blur": M._auc(deletion_blur),
        "robustness": robust["all"].to(device),
        **{f"robust_{name}": value.to(device) for name, value in robust.items() if name != "all"},
        "robust_sufficient_area": robust_area,
    }
    return scores
