"""Backward elimination of a kept mask: drop the cells the label does not need.

A fit returns a mask whose explanation keeps the label. Some of its pixels are not needed: the
mask is a top set of the U-Net's ranking, cut at one area. :func:`prune_cells` visits the
squares of a grid (``cell`` × ``cell`` pixels) that hold mask pixels, from the least to the
most probable under the U-Net (the mean probability of the cell's mask pixels), and drops each
one whose removal keeps the label:

    for c in cells(m) by increasing mean soft(c):   if kept(m \\ c): m ← m \\ c

(backward selection, as Sufficient Input Subsets, Carter et al. 2019, with the U-Net's ranking
as the order). The result is the same as testing one removal at a time; the tests are batched
speculatively: ``n`` cumulative removals m \\ c_1, m \\ {c_1, c_2}, ... in one forward pass; the
first that loses the label marks its cell as needed, and the removals after it are tested again.
Only forward passes, no gradient; the kept test is the recipe's criterion
(:class:`~actmatch.explainers.stages.Prune` passes its check for one image:
:meth:`~actmatch.explainers.criteria.Check.accepted_prefix`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["prune_cells"]


def _cell_view(mask: torch.Tensor, cell: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(G, cell·cell) view of the (H, W) mask zero-padded to multiples of ``cell``, and the shape."""
    h, w = mask.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = F.pad(mask, (0, gw * cell - w, 0, gh * cell - h))
    return rearrange(padded, "(gh a) (gw b) -> (gh gw) (a b)", a=cell, b=cell), (h, w, gh, gw)


def _as_mask(cells: torch.Tensor, shape: tuple[int, int, int, int], cell: int) -> torch.Tensor:
    """(n, 1, H, W) masks from (n, G, cell·cell) cell views."""
    h, w, gh, gw = shape
    full = rearrange(cells, "n (gh gw) (a b) -> n 1 (gh a) (gw b)", gh=gh, gw=gw, a=cell, b=cell)
    return full[..., :h, :w]


@torch.no_grad()
def prune_cells(
    kept, mask: torch.Tensor, soft: torch.Tensor, cell: int, batch: int = 8, border_first: bool = False
) -> tuple[torch.Tensor, int]:
    """The mask with every cell dropped whose removal keeps the label (one greedy pass).

    Args:
        kept: ``kept(masks (n, 1, H, W)) -> (n,) bool``, the test of a mask (it builds the
            explanations, e.g. m ⊙ x + (1 − m) ⊙ fill). Only read up to its first False (the
            first removal that loses the label), so it may skip testing the masks after it.
        mask: (1, 1, H, W) binary, kept.
        soft: (1, 1, H, W) the U-Net's probabilities: cells with lower values are tried first.
        cell: side of a grid cell in pixels.
        batch: the most removals tested in one forward pass (the count adapts: doubled after a
            pass where every removal kept the label, halved after one that lost it).
        border_first: visit the cells on the image's border before the others (each group by
            increasing probability): a frame is removed while the object can still carry the label.

    Returns the pruned mask (1, 1, H, W) and the number of masks tested.
    """
    if cell < 1 or batch < 1:
        raise ValueError(f"prune_cells: need cell >= 1 and batch >= 1, got cell={cell}, batch={batch}")
    current, shape = _cell_view(mask[0, 0].float(), cell)  # (G, c²)
    soft_cells, _ = _cell_view(soft[0, 0].float(), cell)
    count = current.sum(1)
    mean_soft = (soft_cells * current).sum(1) / count.clamp_min(1)
    occupied = (count > 0).nonzero().flatten()
    key = mean_soft
    if border_first:
        _, _, gh, gw = shape
        rows, cols = torch.arange(gh).repeat_interleave(gw), torch.arange(gw).repeat(gh)
        on_border = (rows == 0) | (rows == gh - 1) | (cols == 0) | (cols == gw - 1)
        key = mean_soft - 2.0 * on_border.to(mean_soft)  # soft is in [0, 1]: border cells sort first
    order = occupied[key[occupied].argsort(stable=True)].tolist()
    remaining, position, size, classified = len(order), 0, min(2, batch), 0
    while position < len(order) and remaining > 1:
        chunk = order[position : position + min(size, remaining - 1)]  # never empty the mask
        candidates = current.expand(len(chunk), -1, -1).clone()  # (n, G, c²)
        for j, index in enumerate(chunk):
            candidates[j:, index] = 0
        ok = kept(_as_mask(candidates, shape, cell).to(mask.dtype)).cpu()
        classified += len(chunk)
        lost = int((~ok).float().argmax()) if not ok.all() else len(chunk)  # the first removal that loses the label
        if lost:
            current = candidates[lost - 1]
            remaining -= lost
        position += lost + (lost < len(chunk))  # a cell whose removal loses the label stays
        size = min(batch, size * 2) if lost == len(chunk) else max(1, size // 2)
    return _as_mask(current[None], shape, cell).to(mask.dtype), classified
