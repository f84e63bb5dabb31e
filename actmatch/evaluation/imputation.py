"""ROAD's noisy linear imputation, batched and matrix-free in torch.

Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022
(ROAD, RemOve And Debias), replace the removed pixels of an image by a *linear imputation*: each
removed pixel takes the weighted mean of its 8 neighbours, weight ``1/6`` for the 4 direct and
``1/12`` for the 4 diagonal ones, kept pixels staying fixed; Gaussian noise is then added to the
imputed pixels. The formulation follows the ROAD reference code
(https://github.com/tleemann/road_evaluation) as ported to Quantus
(``quantus.functions.perturb_func.noisy_linear_imputation``): a neighbour outside the image is
dropped and the remaining weights renormalise, i.e. removed pixel ``i`` with in-image neighbours
``N(i)`` satisfies

.. math::  s_i u_i = \\sum_{j \\in N(i)} w_{ij} u_j, \\qquad s_i = \\sum_{j \\in N(i)} w_{ij},

with ``u_j = x_j`` for kept neighbours. Per colour channel this is the Dirichlet problem
``L_uu v_u = -L_uk x_k`` of the weighted graph Laplacian ``L = diag(s) - W`` split into removed
(``u``) and kept (``k``) pixels; with ``A = L_uu`` and ``b = -L_uk x_k = (W x_k)_u``: ``A v = b``.

Quantus assembles ``A`` as a sparse matrix and calls ``scipy.sparse.linalg.spsolve`` once per image
and mask, a cost that grows with the removed area (up to about 0.5 s of CPU for a 224x224 image,
see ``experiments/evaluation/imputation_speed.py``). Here ``A`` is applied matrix-free (a depthwise
3x3 convolution with zero padding, so out-of-image neighbours drop out) and solved for every
(image, channel) at once by conjugate gradient, preconditioned by one geometric multigrid V-cycle
(Jacobi smoothing with the diagonal ``s``, bilinear prolongation ``P``, restriction ``P^T``, the
same stencil on each 2x coarser grid) and warm-started coarse to fine. A plain Jacobi
preconditioner needs hundreds of iterations once most of a 224x224 image is removed (``A`` then has
condition numbers near 1e5); the V-cycle brings that to about 10 for any mask.

``A`` is symmetric and weakly diagonally dominant, strictly in every row next to a kept pixel, hence
positive definite as soon as every 8-connected removed region touches a kept pixel, which on a
connected pixel grid holds whenever the mask keeps at least one pixel. A mask that keeps none
leaves no known value to spread (``A`` is singular) and is rejected.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["linear_imputation", "noisy_linear_imputation"]

# ROAD's neighbour weights (they sum to 1 for an interior pixel)
_W_DIRECT = 1 / 6
_W_DIAGONAL = 1 / 12
# multigrid: coarsen while the grid's shorter side is at least twice this
_COARSEST_SIDE = 2
# Jacobi sweeps before and after each coarse correction, and on the coarsest grid (all symmetric)
_SMOOTHING_SWEEPS = 1
_COARSEST_SWEEPS = 8
# coarse-to-fine warm start: halvings of the image for the first guess, and the coarse solves' tol
_WARM_START_LEVELS = 3
_WARM_START_MIN_SIDE = 16
_WARM_START_TOL = 1e-2
# the V-cycle's precision (the conjugate-gradient iterates are float64, see _pcg)
_PRECONDITIONER_DTYPE = torch.float32


def linear_imputation(images: torch.Tensor, masks: torch.Tensor, *, tol: float = 1e-5, max_iter: int = 2000) -> torch.Tensor:
    """Fill the removed pixels of each image with ROAD's linear imputation (Rong et al. 2022).

    Each removed pixel ``i`` becomes the weighted mean of its in-image 8 neighbours ``N(i)``,

    .. math::  u_i = \\frac{\\sum_{j \\in N(i)} w_{ij} u_j}{\\sum_{j \\in N(i)} w_{ij}}, \\qquad
               w_{ij} = \\tfrac16 \\text{ (direct)}, \\ \\tfrac1{12} \\text{ (diagonal)},

    with kept pixels fixed (``u_j = x_j``): the linear system ``A v = b`` of the ROAD reference code
    and Quantus (module docstring), solved per image and channel by multigrid-preconditioned
    conjugate gradient, batched over images and channels, warm-started from the solution of the
    same problem on a 1/8, then 1/4, then 1/2 size copy.

    Args:
        images: ``(N, C, H, W)`` floating-point images. To impute ``M`` masks of one image, pass
            ``image.expand(M, -1, -1, -1)``.
        masks: ``(N, 1, H, W)`` with values in ``{0, 1}`` (bool, integer or floating point):
            ``1`` = kept pixel (known value), ``0`` = removed pixel (imputed). Every mask must keep
            at least one pixel.
        tol: a system stops once its relative residual in the max norm,
            ``max_i |b - A v|_i / max_i |b_i|``, is at most ``tol``. The max norm, rather than the
            2-norm, keeps the per-pixel error near ``tol`` times the value range however many pixels
            border the removed ones: at ``1e-5`` the result came within ``7e-5`` times the
            image's largest value of Quantus' exact sparse solve, over the tests' masks and 80
            random ones (sizes 2 to 224, 1 to 99.9 % removed).
        max_iter: conjugate-gradient iterations at most (one V-cycle each); a ``RuntimeWarning``
            names the systems that have not reached ``tol`` by then (typically < 15 are needed).

    Returns:
        ``(N, C, H, W)``, dtype and device of ``images``: kept pixels unchanged bit for bit, removed
        pixels the solution of the ROAD system. No noise; computed without autograd. float16 and
        bfloat16 inputs are solved in float32.

    Raises:
        ValueError: wrong shape or dtype, a mask value other than 0 and 1, or a mask keeping no pixel.
    """
    known = _validated_known(images, masks)  # (N, 1, H, W) bool
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    if bool(known.all()):
        return images.detach().clone()
    work_dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.no_grad():
        x = images.detach().to(work_dtype)
        filled, unconverged = _solve_coarse_to_fine(x, known, tol, max_iter, _WARM_START_LEVELS)
    if bool(unconverged.any()):
        warnings.warn(
            f"linear_imputation: {int(unconverged.sum())} of {unconverged.numel()} (image, channel) systems, "
            f"e.g. {unconverged.nonzero().tolist()[:4]}, did not reach tol={tol} in max_iter={max_iter} "
            "iterations",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.where(known, images.detach(), filled.to(images.dtype))  # (N, C, H, W)


def noisy_linear_imputation(
    images: torch.Tensor,
    masks: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    **kw,
) -> torch.Tensor:
    """ROAD's noisy linear imputation: :func:`linear_imputation` plus Gaussian noise on removed pixels.

    .. math::  \\tilde x = m \\odot x + (1 - m) \\odot (v + \\sigma \\varepsilon), \\qquad
               \\varepsilon \\sim \\mathcal N(0, I),

    with ``v`` the linear imputation, ``m`` the mask (1 = kept) and ``sigma = noise`` (Rong et al.
    2022; Quantus' ``noisy_linear_imputation`` does the same with NumPy's global random state).

    Args:
        images: ``(N, C, H, W)`` floating-point images.
        masks: ``(N, 1, H, W)`` in ``{0, 1}``, ``1`` = kept pixel.
        noise: standard deviation ``sigma >= 0`` of the noise on removed pixels.
        generator: source of ``epsilon``, on the images' device; ``None`` = torch's global one.
        **kw: ``tol`` and ``max_iter`` of :func:`linear_imputation`.

    Returns:
        ``(N, C, H, W)``: kept pixels unchanged bit for bit, removed pixels imputed plus noise.
    """
    if not noise >= 0:
        raise ValueError(f"noise must be a standard deviation >= 0, got {noise}")
    filled = linear_imputation(images, masks, **kw)  # (N, C, H, W); validates masks
    if noise == 0:
        return filled
    eps = torch.randn(filled.shape, generator=generator, dtype=filled.dtype, device=filled.device)
    known = masks.to(filled.device) != 0  # (N, 1, H, W)
    return torch.where(known, filled, filled + noise * eps)


# ----------------------------------------------------------------------------- input checks


def _validated_known(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Check shapes, dtypes and values; return the kept pixels, ``(N, 1, H, W)`` bool on the images' device."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor of shape (N, C, H, W), got {_describe(images)}")
    n, _, h, w = images.shape
    expected = f"(N, 1, H, W) = ({n}, 1, {h}, {w})"
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (n, 1, h, w):
        raise ValueError(
            f"masks must have shape {expected} to match images of shape {tuple(images.shape)}, got {_describe(masks)}"
        )
    if masks.dtype.is_complex:
        raise ValueError(f"masks of shape {expected} must be bool, integer or floating point, got {masks.dtype}")
    masks = masks.to(images.device)
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(
            f"masks of shape {expected} must hold only 0 (removed) and 1 (kept); binarise soft masks first, e.g. masks > 0.5"
        )
    known = masks != 0
    empty = (~known.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"masks {empty[:10]} of shape {expected} keep no pixel: linear imputation spreads "
            "the kept pixels' values and its system is singular without any; keep at least one "
            "pixel per mask, or fill fully removed images another way (e.g. a constant baseline)"
        )
    return known


def _describe(value: object) -> str:
    """Shape and dtype of a tensor, or the type of anything else, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


# ----------------------------------------------------------------------------- the operator


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """``(W u)_i = sum_{j in N(i)} w_ij u_j``, a depthwise 3x3 convolution with zero padding.

    ``u`` (N, C, H, W) -> (N, C, H, W); the zero padding drops the neighbours outside the image. On
    a GPU this is ``conv2d(groups=C)`` (:func:`_neighbour_sum_conv`); elsewhere the separable form,
    several times faster on a CPU::

        W = [1, 2, 1]^T [1, 2, 1] / 12 - delta / 3

    i.e. ``1/12`` on the diagonal, ``2/12 = 1/6`` on the direct neighbours and ``4/12 - 1/3 = 0`` at
    the centre.
    """
    if u.is_cuda:
        return _neighbour_sum_conv(u)
    h, w = u.shape[-2:]
    p = F.pad(u, (1, 1, 1, 1))  # (N, C, H + 2, W + 2)
    rows = p[..., :, 0:w] + p[..., :, 2 : w + 2]  # (N, C, H + 2, W): [1, 2, 1] along each row
    rows.add_(p[..., :, 1 : w + 1], alpha=2.0)
    both = rows[..., 0:h, :] + rows[..., 2 : h + 2, :]  # (N, C, H, W): then along each column
    both.add_(rows[..., 1 : h + 1, :], alpha=2.0)
    return both.mul_(_W_DIAGONAL).add_(u, alpha=-4 * _W_DIAGONAL)


def _neighbour_sum_conv(u: torch.Tensor) -> torch.Tensor:
    """:func:`_neighbour_sum` as ``conv2d(groups=C)`` with the kernel
    ``[[1/12, 1/6, 1/12], [1/6, 0, 1/6], [1/12, 1/6, 1/12]]``."""
    c = u.shape[1]
    d, g = _W_DIAGONAL, _W_DIRECT
    kernel = torch.tensor([[d, g, d], [g, 0.0, g], [d, g, d]], dtype=u.dtype, device=u.device)
    return F.conv2d(u, kernel.expand(c, 1, 3, 3).contiguous(), padding=1, groups=c)


class _Grid(NamedTuple):
    """One level of the multigrid hierarchy (shapes for a grid of ``h x w`` pixels)."""

    removed: torch.Tensor  # (N, 1, h, w) in {0, 1}, working dtype: the unknowns
    diag: torch.Tensor  # (1, 1, h, w): s_i, the sum of the in-image neighbour weights
    smoother: torch.Tensor  # (N, 1, h, w): removed_i / s_i, the Jacobi step
    has_unknowns: bool


def _grid(removed: torch.Tensor) -> _Grid:
    """The level for the unknowns ``removed`` (N, 1, h, w), 0/1 in the working dtype."""
    h, w = removed.shape[-2:]
    diag = _neighbour_sum(torch.ones(1, 1, h, w, dtype=removed.dtype, device=removed.device))
    return _Grid(removed, diag, removed / diag, bool(removed.any()))


def _apply_a(grid: _Grid, p: torch.Tensor) -> torch.Tensor:
    """``A p = (s p - W p)`` on the unknowns, for ``p`` (N, C, h, w) that is zero elsewhere."""
    return torch.addcmul(_neighbour_sum(p).neg_(), grid.diag, p).mul_(grid.removed)


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-system inner products: (N, C, h, w) x (N, C, h, w) -> (N, C)."""
    return (a * b).sum((2, 3))


def _batch_max(a: torch.Tensor) -> torch.Tensor:
    """Per-system max norm: (N, C, h, w) -> (N, C)."""
    return a.abs().amax((2, 3))


# ----------------------------------------------------------------------------- multigrid


def _hierarchy(removed: torch.Tensor) -> list[_Grid]:
    """Grids from fine to coarse: a coarse pixel is unknown iff all its (up to 2x2) fine pixels are.

    Keeping a coarse pixel as soon as one fine pixel is kept never lets a coarse level lose the last
    kept pixel, and makes the coarse operator no softer than the fine one (no over-correction).
    """
    grids = [_grid(removed)]
    while min(grids[-1].removed.shape[-2:]) >= 2 * _COARSEST_SIDE and grids[-1].has_unknowns:
        fine = grids[-1].removed
        grids.append(_grid(1 - F.max_pool2d(1 - fine, 2, ceil_mode=True)))
    return grids


def _prolong(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``P``: bilinear upsampling (N, C, h, w) -> (N, C, *size) (pixel centres, edges clamped)."""
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def _restrict(fine: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``R = P^T``, the exact adjoint of :func:`_prolong`: (N, C, H, W) -> (N, C, *size)."""
    n, c, h, w = fine.shape
    return torch.ops.aten.upsample_bilinear2d_backward(fine, [h, w], [n, c, *size], False, None, None)


def _jacobi(grid: _Grid, e: torch.Tensor, r: torch.Tensor, sweeps: int) -> torch.Tensor:
    """``sweeps`` Jacobi steps ``e <- e + D^{-1} (r - A e)`` on the unknowns of ``grid``."""
    for _ in range(sweeps):
        e = torch.addcmul(e, grid.smoother, r - _apply_a(grid, e))
    return e


def _v_cycle(grids: list[_Grid], r: torch.Tensor, level: int = 0) -> torch.Tensor:
    """One V-cycle from zero, ``e ~ A^{-1} r`` (the preconditioner ``B``; (N, C, h, w) -> same).

    Pre-smoothing, coarse correction ``P B_c P^T`` and post-smoothing are arranged symmetrically, so
    ``B`` is symmetric; it is positive definite because Jacobi with the diagonal ``s`` contracts in
    the ``A``-norm (the eigenvalues of ``D^{-1} A`` lie in ``(0, 2)``) and ``B_c`` is.
    """
    grid = grids[level]
    e = grid.smoother * r
    last = level + 1 == len(grids) or not grids[level + 1].has_unknowns
    if last:
        return _jacobi(grid, e, r, _COARSEST_SWEEPS - 1)
    e = _jacobi(grid, e, r, _SMOOTHING_SWEEPS - 1)
    coarse = grids[level + 1]
    size = (coarse.removed.shape[-2], coarse.removed.shape[-1])
    r_coarse = _restrict(r - _apply_a(grid, e), size) * coarse.removed
    e = e + _prolong(_v_cycle(grids, r_coarse, level + 1), (grid.removed.shape[-2], grid.removed.shape[-1])) * grid.removed
    return _jacobi(grid, e, r, _SMOOTHING_SWEEPS)


# ----------------------------------------------------------------------------- solver


def _solve_coarse_to_fine(
    x: torch.Tensor, known: torch.Tensor, tol: float, max_iter: int, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve a 2x smaller copy first (recursively) and upsample it as the initial guess.

    ``x`` (N, C, H, W), ``known`` (N, 1, H, W) bool -> the filled images (N, C, H, W) and which
    systems missed ``tol`` (N, C) bool. The smaller
    copy keeps a pixel if any of its 2x2 pixels is kept, with their mean as its value, so it keeps
    at least one pixel whenever the full-size mask does.
    """
    h, w = x.shape[-2:]
    guess = None
    if levels > 0 and min(h, w) >= 2 * _WARM_START_MIN_SIDE:
        small_x, small_known = _downsample(x, known)
        small, _ = _solve_coarse_to_fine(small_x, small_known, max(tol, _WARM_START_TOL), max_iter, levels - 1)
        guess = _prolong(small, (h, w))  # (N, C, H, W)
    return _pcg(x, known, guess, tol, max_iter)


def _downsample(x: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 means of the kept pixels (N, C, ceil(H/2), ceil(W/2)) and whether each block keeps any
    (N, 1, ceil(H/2), ceil(W/2)) bool."""
    m = known.to(x.dtype)
    mass = F.avg_pool2d(m, 2, ceil_mode=True)  # the pooling divisor cancels in the ratio below
    total = F.avg_pool2d(x * m, 2, ceil_mode=True)
    small_known = mass > 0
    return torch.where(small_known, total / torch.where(small_known, mass, 1.0), 0.0), small_known


def _pcg(
    x: torch.Tensor, known: torch.Tensor, guess: torch.Tensor | None, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conjugate gradient on ``A v = b`` preconditioned by :func:`_v_cycle`, all systems at once.

    ``b = (W (m x))_u`` (the kept neighbours' weighted values); each system stops at
    ``max|b - A v| <= tol max|b|`` and is then frozen (step 0) while the others go on; a system with
    ``b = 0`` has the solution ``0``. The iterates and residuals are kept in float64 (float32 alone
    loses about 1e-3 on large removed regions, where ``A`` has condition numbers near 1e5), the
    V-cycle runs in float32; the Polak-Ribiere ``beta = <r', z' - z> / <r, z>`` keeps conjugate
    gradient robust to that slightly inexact preconditioner.
    Shapes: ``x`` (N, C, H, W), ``known`` (N, 1, H, W), ``guess`` (N, C, H, W) or None. Returns the
    filled images (N, C, H, W) and the systems still above ``tol`` after ``max_iter`` (N, C) bool.
    """
    dtype = _iterate_dtype(x)
    removed = (~known).to(dtype)  # (N, 1, H, W)
    fine, grids = _grid(removed), _hierarchy(removed.to(_PRECONDITIONER_DTYPE))
    b = _neighbour_sum(torch.where(known, x.to(dtype), 0.0)) * removed  # (N, C, H, W)
    threshold = tol * _batch_max(b)  # (N, C)
    v = torch.zeros_like(b) if guess is None else guess.to(dtype) * removed * (threshold > 0)[..., None, None]
    r = b - _apply_a(fine, v)
    active = _batch_max(r) > threshold
    z = _precondition(grids, r)
    p, rz = z, _batch_dot(r, z)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ap = _apply_a(fine, p)
        pap = _batch_dot(p, ap)
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0)[..., None, None]
        v = v + alpha * p
        r = r - alpha * ap
        active = active & (_batch_max(r) > threshold)
        z_next = _precondition(grids, r)
        rz_next = _batch_dot(r, z_next)
        beta = torch.where(rz > 0, (rz_next - _batch_dot(r, z)) / torch.where(rz > 0, rz, 1.0), 0.0)
        p, z, rz = z_next + beta.clamp_min(0.0)[..., None, None] * p, z_next, rz_next
    return torch.where(known, x, v.to(x.dtype)), active


def _iterate_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the conjugate-gradient iterates, except on devices without it (Apple MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _precondition(grids: list[_Grid], r: torch.Tensor) -> torch.Tensor:
    """``z = B r``: one V-cycle in ``_PRECONDITIONER_DTYPE``, returned in the dtype of ``r``."""
    return _v_cycle(grids, r.to(_PRECONDITIONER_DTYPE)).to(r.dtype)
