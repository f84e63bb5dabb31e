"""Perturbation families of the exam: what replaces the pixels a mask removes.

A *family* is a named way to fill the removed pixels of an explanation,
e = m ⊙ x + (1 − m) ⊙ r. The exam (:class:`Exam`) plants every map's regions on a fixed number
of draws from several families, all drawn from its own seed stream (a ``torch.Generator``
seeded by the exam's seed and the image's name), never from the global RNG a fit uses.

Families are of two kinds:

* **held out** (``held_out = True``): no fit may use them. ``photos`` (other real photos, from a
  pool disjoint from the explained images), ``blur`` (a heavy Gaussian blur of the image itself)
  and ``road`` (ROAD's noisy linear imputation, Rong et al. 2022: the removed pixels are
  interpolated from the kept ones, plus noise). A recipe whose fit, selection or pruning uses one
  of these is refused by the benchmark (:func:`held_out_leaks`).
* **seeded** (``held_out = False``): ``solid`` colours and ``noise`` (uniform or Gaussian
  pixels), the same distributions a fit may draw from, but from a seed stream disjoint from every
  fit's (the exam's seed must differ from the fit's seed).

Fit-side names map onto these families (``actmatch.explainers.backgrounds.FAMILY_OF_KIND``):
a fit's ``shuffle`` backgrounds are other photos, its ``blur`` fill or backgrounds are ``blur``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from actmatch.evaluation.imputation import linear_imputation
from actmatch.evaluation.seeds import EXAM_SEED
from actmatch.explainers.backgrounds import gaussian_blur

__all__ = [
    "Family",
    "SolidColour",
    "Noise",
    "Blur",
    "Photos",
    "RoadImputation",
    "Exam",
    "ExamDraws",
    "default_exam",
    "cover_resize",
    "held_out_leaks",
    "EXAM_SEED",
]


class Family:
    """Base class: a named source of values for the removed pixels.

    Override :meth:`draw`: one draw for one image, as a background (1, 3, H, W) or, for a family
    whose values depend on the mask (ROAD), a callable ``masks (n, 1, H, W) -> (n, 3, H, W)``.
    """

    name: str = ""
    held_out: bool = True
    #: a draw costs more than the classifier pass (its values need work per mask): checked last
    deferred: bool = False

    def draw(self, image: torch.Tensor, generator: torch.Generator):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SolidColour(Family):
    """r = one colour c ~ U[0, 1]³ over the whole image."""

    name, held_out = "solid", False

    def draw(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        colour = torch.rand(3, generator=generator).to(image)
        return colour.view(1, 3, 1, 1).expand_as(image).clone()


class Noise(Family):
    """r_ij ~ U[0, 1] (``uniform``) or clip(N(0.5, 0.25²), 0, 1) (``gaussian``), i.i.d. per pixel."""

    name, held_out = "noise", False
    KINDS = ("uniform", "gaussian")

    def __init__(self, kind: str = "uniform") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"Noise: kind is one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def draw(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = tuple(image.shape)
        if self.kind == "uniform":
            return torch.rand(shape, generator=generator).to(image)
        return (0.5 + 0.25 * torch.randn(shape, generator=generator)).clamp(0, 1).to(image)

    def __repr__(self) -> str:
        return f"Noise({self.kind!r})"


class Blur(Family):
    """r = G_σ * x, a Gaussian blur of the image itself, σ = ``sigma`` × its short side.

    The fit's ``blur`` fill uses σ = 1/20 of the short side; the exam's default draws are
    heavier (1/10 and 1/5), so the blurred copy alone rarely keeps the label.
    """

    name, held_out = "blur", True

    def __init__(self, sigma: float = 0.1) -> None:
        if not 0 < sigma < 1:
            raise ValueError(f"Blur: sigma is a fraction of the short side in (0, 1), got {sigma}")
        self.sigma = sigma

    def draw(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return gaussian_blur(image, max(1.0, self.sigma * min(image.shape[-2:])))

    def __repr__(self) -> str:
        return f"Blur({self.sigma})"


def cover_resize(photo: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) photo scaled (bilinear, antialiased) to cover ``size`` and centre-cropped to it."""
    h, w = photo.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    scaled = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    out = F.interpolate(photo[None].float(), size=scaled, mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return out[:, top : top + size[0], left : left + size[1]].clamp(0, 1)


class Photos(Family):
    """r = a photo drawn uniformly from ``pool`` (a list of (3, h, w) tensors in [0, 1]), scaled to
    cover the image and centre-cropped. The pool must not contain the explained images."""

    name, held_out = "photos", True

    def __init__(self, pool: list[torch.Tensor]) -> None:
        if not pool:
            raise ValueError("Photos: the pool is empty; pass a folder of background photos (e.g. --exam-photos DIR)")
        self.pool = pool
        self._sized: dict[tuple[int, int], dict[int, torch.Tensor]] = {}

    def draw(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        index = int(torch.randint(len(self.pool), (1,), generator=generator))
        size = (image.shape[-2], image.shape[-1])
        cache = self._sized.setdefault(size, {})
        if index not in cache:
            cache[index] = cover_resize(self.pool[index], size)
        return cache[index][None].to(image)

    def __repr__(self) -> str:
        return f"Photos({len(self.pool)} photos)"


class RoadImputation(Family):
    """ROAD's noisy linear imputation (Rong et al. 2022): each removed pixel is the weighted mean
    of its 8 neighbours (1/6 direct, 1/12 diagonal; kept pixels fixed), plus N(0, ``noise``²).

    One draw is a noise field ε (3, H, W); the values for masks m are LI(x, m) + noise · ε on the
    removed pixels (:func:`~actmatch.evaluation.imputation.linear_imputation`), so two draws of
    one mask share one solve.
    """

    name, held_out, deferred = "road", True, True

    def __init__(self, noise: float = 0.01) -> None:
        if noise < 0:
            raise ValueError(f"RoadImputation: noise must be >= 0, got {noise}")
        self.noise = noise

    def draw(self, image: torch.Tensor, generator: torch.Generator):
        epsilon = torch.randn(tuple(image.shape), generator=generator).to(image)
        return _RoadDraw(self.noise * epsilon)

    def __repr__(self) -> str:
        return f"RoadImputation({self.noise})"


@dataclass
class _RoadDraw:
    noise: torch.Tensor  # (1, 3, H, W) noise · ε


def held_out_leaks(used: dict[str, str], exam: Exam) -> list[str]:
    """The held-out families of ``exam`` that a recipe uses (``used``: family -> where), as
    ``"family (where)"`` strings; empty when the recipe never touches them."""
    held = {family.name for family, _ in exam.families if family.held_out}
    return [f"{name} ({where})" for name, where in sorted(used.items()) if name in held]


class ExamDraws:
    """The exam's draws for one image: ``len(self)`` ways to fill the removed pixels.

    :meth:`planted` builds m ⊙ x + (1 − m) ⊙ r_j for masks × draws. ROAD draws need the linear
    imputation of each mask (:meth:`imputations`, one solve per mask shared by every ROAD draw);
    a mask that keeps no pixel has nothing to interpolate from and gets the image's mean colour.
    """

    def __init__(self, image: torch.Tensor, draws: list, names: list[str]) -> None:
        self.image, self.draws, self.names = image, draws, names

    def __len__(self) -> int:
        return len(self.draws)

    def needs_imputation(self, which: list[int]) -> bool:
        """Whether any of the draws ``which`` is a ROAD draw."""
        return any(isinstance(self.draws[j], _RoadDraw) for j in which)

    def imputations(self, masks: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) the linear imputation of the image for each mask (n, 1, H, W)."""
        n = masks.shape[0]
        out = self.image.mean((-2, -1), keepdim=True).expand(n, -1, *self.image.shape[-2:]).clone()
        some = masks.flatten(1).amax(1) > 0
        if some.any():
            out[some] = linear_imputation(self.image.expand(int(some.sum()), -1, -1, -1), masks[some])
        return out

    def planted(self, masks: torch.Tensor, which: list[int] | None = None, imputed: torch.Tensor | None = None) -> torch.Tensor:
        """(n · len(which), 3, H, W), mask-major: row i·len(which) + j is mask i on draw which[j].
        ``imputed``: the masks' :meth:`imputations`, if already computed."""
        which = list(range(len(self.draws))) if which is None else list(which)
        if imputed is None and self.needs_imputation(which):
            imputed = self.imputations(masks)
        out = []
        for j in which:
            draw = self.draws[j]
            if isinstance(draw, _RoadDraw):
                assert imputed is not None  # needs_imputation(which) is True: a ROAD draw is among them
                out.append(masks * self.image + (1 - masks) * (imputed + draw.noise))
            else:
                out.append(masks * self.image + (1 - masks) * draw)
        return torch.stack(out, 1).flatten(0, 1)  # (n, J, 3, H, W) -> (n·J, 3, H, W)


class Exam:
    """Which families grade the maps, how many draws of each per image, and the seed stream.

    The draws are interleaved round-robin over the families (photos, blur, solid, noise, photos,
    ...), so the first few draws already cover most families: a staged check that stops early has
    seen them. Families that cost more than a classifier pass per draw (``deferred``: ROAD, whose
    draws need a linear solve per mask) come last, so a cut already out never needs them.

    Args:
        families: (family, draws per image) pairs.
        seed: the exam's seed; image i's draws come from a generator seeded with
            (seed, CRC-32 of the image's key), the same whatever the order of the images.
    """

    def __init__(self, families: list[tuple[Family, int]], seed: int = EXAM_SEED) -> None:
        if not families or any(count < 1 for _, count in families):
            raise ValueError(f"Exam: give at least one family with >= 1 draw, got {families}")
        self.families, self.seed = list(families), int(seed)

    @property
    def size(self) -> int:
        """Draws per image."""
        return sum(count for _, count in self.families)

    @property
    def photo_count(self) -> int:
        """Photos in the pool of the exam's photo family (0 without one)."""
        return sum(len(family.pool) for family, _ in self.families if isinstance(family, Photos))

    @property
    def names(self) -> list[str]:
        """The family name of each draw, in the exam's order."""
        return [family.name for family in self.schedule()]

    def schedule(self) -> list[Family]:
        """The families of the draws in order: round-robin until each has its count, the
        ``deferred`` families after the others."""
        order = []
        for deferred in (False, True):
            group = [(family, count) for family, count in self.families if family.deferred == deferred]
            left = [count for _, count in group]
            while any(left):
                for i, (family, _) in enumerate(group):
                    if left[i]:
                        order.append(family)
                        left[i] -= 1
        return order

    def generator(self, key: str) -> torch.Generator:
        """The exam's generator for one image, from its seed and the image's key."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))

    def draws(self, image: torch.Tensor, key: str) -> ExamDraws:
        """The exam's draws for ``image`` (1, 3, H, W), keyed by its name (e.g. the file's name)."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"Exam.draws takes one image (1, 3, H, W), got {tuple(image.shape)}")
        generator = self.generator(key)
        schedule = self.schedule()
        return ExamDraws(image, [family.draw(image, generator) for family in schedule], [f.name for f in schedule])

    def describe(self) -> str:
        """e.g. ``16 draws: photos ×4, blur ×2, road ×2, solid ×4, noise ×4 (seed 1000)``."""
        parts = ", ".join(f"{name} ×{count}" for name, count in self._by_name().items())
        return f"{self.size} draws: {parts} (seed {self.seed})"

    def _by_name(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for family, count in self.families:
            counts[family.name] = counts.get(family.name, 0) + count
        return counts


def default_exam(photos: list[torch.Tensor] | None, seed: int = EXAM_SEED) -> Exam:
    """The benchmark's exam, 16 draws per image: 4 photos, 2 blurs (σ = 1/10, 1/5 of the short side),
    2 ROAD imputations, 4 solid colours, 2 uniform and 2 Gaussian noises. Without photos, their 4
    draws go to the other held-out families (2 more blurs, 2 more ROAD)."""
    families: list[tuple[Family, int]] = []
    if photos:
        families.append((Photos(photos), 4))
        families += [(Blur(0.1), 1), (Blur(0.2), 1), (RoadImputation(), 2)]
    else:
        families += [(Blur(0.1), 2), (Blur(0.2), 2), (RoadImputation(), 4)]
    families += [(SolidColour(), 4), (Noise("uniform"), 2), (Noise("gaussian"), 2)]
    return Exam(families, seed)
