"""A mask network that reads the classifier's own features (the real-time saliency design).

Dabkowski & Gal (2017) train their amortized masking model on the feature pyramid of a
pretrained classifier, with a small trainable decoder: the encoder already knows what the
object is, so the decoder only learns where it is. :class:`FeatureMaskNet` does the same with a
frozen classifier: mask logits = decoder(features of x), at the input's resolution. An
:class:`~actmatch.explainers.module.ActMatchExplainer` hands it the classifier it explains
(:meth:`FeatureMaskNet.read_classifier`), so the features and the class map are that classifier's,
and an amortized explanation takes the label f(x) from the pass that makes the mask
(:attr:`FeatureMaskNet.class_logits`). With ``class_map`` the decoder corrects the class activation map of the classifier's
own prediction (CAM, Zhou et al. 2016; for a global-pool + linear head it ranks the pixels as
Grad-CAM does), so training starts from Grad-CAM's ranking instead of from noise. It takes
images like :class:`~actmatch.explainers.unet.MaskUNet`, so it plugs into amortized training,
per-image fits and warm starts unchanged; only the decoder is trained.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from actmatch.explainers.classifier import FrozenClassifier, load_classifier

__all__ = ["CLASS_SCORES", "FeatureMaskNet"]

CLASS_SCORES = ("logit", "log_probability", "margin")  # what the class activation map explains


class FeatureMaskNet(nn.Module):
    """Mask logits from a frozen classifier's feature stages and a trainable decoder.

    The stages ``stages`` (timm ``feature_info`` indices) of ``backbone`` are each projected to
    ``width`` channels (1×1 convolution), upsampled to the finest chosen stage and summed; two
    3×3 convolution blocks and a 1×1 head give logits, upsampled bilinearly to the input.

    With ``class_map``, for the predicted class y = argmax f(x) and the final features A (C, h, w)
    that the head pools, the class activation map (:meth:`class_activation_map`; W_y · A + b_y for a
    pool + linear head, or (W_y − Σ_c p_c W_c) · A for ``class_score="log_probability"``),
    standardised per image (zero mean, unit spread over the h × w cells), is one more lateral input
    of the decoder and is added to the logits with a learned scale s (initially 1):

        logits = head(decoder(Σ lateral(stage features) + lateral(CAM))) + s · CAM.

    Args:
        backbone: the classifier whose features are read until :meth:`read_classifier` hands it the
            explained one: a timm name (its offline or hub weights, as
            :func:`~actmatch.explainers.classifier.load_classifier` loads them) or a loaded classifier.
        stages: feature stages to decode, timm ``feature_info`` indices; negative ones count from
            the last stage (the default, the last three: strides 8, 16 and 32 of most CNNs).
        width: decoder channels.
        init_keep: initial bias of the head (σ(init_keep) > 0.5 keeps every pixel at first).
        pretrained: load the backbone's weights (False: random, for tests).
        class_map: read and correct the class activation map of the predicted class (the
            classifier must end in a convolutional feature map, as timm's CNNs do).
        class_score: what the class map explains: ``"logit"`` f_y (CAM, Grad-CAM),
            ``"log_probability"`` log p_y = f_y − log Σ_c exp f_c, whose map also subtracts the
            evidence for the other classes (p-weighted): pixels that support y *against* its rivals,
            or ``"margin"`` f_y − f_r, r the runner-up class: pixels that tell y from its closest rival.
        read_size: the short side in pixels of the copy of the image the encoder reads (antialiased
            bilinear, the aspect ratio kept; None: the image as given). A smaller read costs less than a
            classifier forward (Lite0 at 112 px: about 0.4 × at 224 px, B = 1, 2 CPU threads), but its class
            map explains the copy's prediction, which may differ from the image's, and the classifier's
            logits on the image are not kept (:attr:`class_logits` stays None): an explanation classifies
            the image itself.
    """

    def __init__(
        self,
        backbone: str | FrozenClassifier = "efficientnet_lite0",
        stages: list[int] | tuple[int, ...] = (-3, -2, -1),
        width: int = 32,
        init_keep: float = 0.5,
        pretrained: bool = True,
        class_map: bool = False,
        class_score: str = "logit",
        read_size: int | None = None,
    ) -> None:
        super().__init__()
        if width < 1 or not stages:
            raise ValueError(f"FeatureMaskNet needs width >= 1 and at least one stage, got width={width}, stages={stages}")
        if class_score not in CLASS_SCORES:
            raise ValueError(f"FeatureMaskNet: class_score must be one of {CLASS_SCORES}, got {class_score!r}")
        if read_size is not None and read_size < 32:
            raise ValueError(
                f"FeatureMaskNet: read_size is the short side of the encoder's copy in pixels (>= 32) or None, got {read_size}"
            )
        encoder = backbone if isinstance(backbone, FrozenClassifier) else load_classifier(backbone, pretrained=pretrained)
        self.backbone, self.stages, self.width = encoder.name, tuple(int(s) for s in stages), width
        self.init_keep, self.pretrained, self.class_map = init_keep, pretrained, bool(class_map)
        self.class_score, self.read_size = class_score, read_size
        self.encoder = self._checked(encoder)
        self._pool_linear = _pool_linear_head(self.encoder)
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in self._channels(self.encoder)])
        self.class_lateral = nn.Conv2d(1, width, 1) if self.class_map else None
        self.class_scale = nn.Parameter(torch.ones(())) if self.class_map else None
        self.class_logits: torch.Tensor | None = None  # the encoder's logits on the last images (class_map only)
        groups = max(1, min(8, width // 4))
        self.decoder = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Conv2d(width, 1, 1)
        self.reset_parameters()
        # the encoder is the explained classifier, not the mask network's: its weights are neither
        # saved with the network nor taken from a saved state (a state without them loads as is)
        self._register_state_dict_hook(_without_encoder)
        self.register_load_state_dict_pre_hook(_with_own_encoder)

    def _checked(self, classifier: FrozenClassifier) -> FrozenClassifier:
        """``classifier``, frozen, after checking that it has the feature stages (and, with
        ``class_map``, timm's ``forward_head``) this network reads."""
        model = classifier.model
        info = getattr(model, "feature_info", None)
        if (
            info is None
            or not all(-len(info) <= s < len(info) for s in self.stages)
            or not hasattr(model, "forward_intermediates")
        ):
            raise ValueError(
                f"FeatureMaskNet reads timm feature stages {self.stages} (feature_info, forward_intermediates), which "
                f"{classifier.name} does not have; explain it with the default MaskUNet (no `unet:` in the config)"
            )
        if self.class_map and not callable(getattr(model, "forward_head", None)):
            raise ValueError(
                f"FeatureMaskNet(class_map=True) needs timm's forward_head, which {classifier.name} has not: set class_map: false"
            )
        classifier.requires_grad_(False)
        return classifier.eval()

    def _indices(self, classifier: FrozenClassifier) -> list[int]:
        """``stages`` as non-negative ``feature_info`` indices of ``classifier``."""
        count = len(cast(Any, classifier.model).feature_info)
        return [s % count for s in self.stages]

    def _channels(self, classifier: FrozenClassifier) -> list[int]:
        info = cast(Any, classifier.model).feature_info
        return [info[s]["num_chs"] for s in self._indices(classifier)]

    def read_classifier(self, classifier: FrozenClassifier) -> None:
        """Read ``classifier``'s features (shared, not copied) from now on: the explained classifier,
        so that the class map and the features are its own whatever ``backbone`` named. With another
        architecture than the current encoder's the lateral projections are rebuilt (freshly
        initialised; a trained network must be used with the classifier it was trained on)."""
        if classifier is self.encoder:
            return
        rebuilt = self._channels(self._checked(classifier)) != self._channels(self.encoder)
        self.encoder, self.backbone, self._pool_linear = classifier, classifier.name, _pool_linear_head(classifier)
        if rebuilt:
            device = self.head.weight.device
            self.lateral = nn.ModuleList([nn.Conv2d(c, self.width, 1) for c in self._channels(classifier)]).to(device)

    def reads(self, classifier: nn.Module) -> bool:
        """Whether this network's features are ``classifier``'s own (shared)."""
        return self.encoder is classifier

    def init_args(self) -> dict:
        """The constructor arguments that rebuild this architecture (saved with amortized checkpoints)."""
        return {
            "backbone": self.backbone,
            "stages": list(self.stages),
            "width": self.width,
            "init_keep": self.init_keep,
            "pretrained": self.pretrained,
            "class_map": self.class_map,
            "class_score": self.class_score,
            "read_size": self.read_size,
        }

    def reset_parameters(self) -> None:
        """Re-initialise the decoder (the encoder stays the classifier's); uses the global torch RNG."""
        extra = [self.class_lateral] if self.class_lateral is not None else []
        for module in [*self.lateral, *extra, *self.decoder, self.head]:
            reset = getattr(module, "reset_parameters", None)
            if reset is not None:
                reset()
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            assert self.head.bias is not None
            self.head.bias.fill_(self.init_keep)
            if self.class_scale is not None:
                self.class_scale.fill_(1.0)

    def train(self, mode: bool = True) -> FeatureMaskNet:
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm keeps its statistics
        return self

    def class_activation_map(self, final: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, h, w) class activation map of the predicted class y on the final features A,
        standardised per image (zero mean, unit spread); ``logits``: the head's output on A, if known.

        Grad-CAM before its ReLU, Σ_c α_c A_c with α_c the spatial mean of ∂s/∂A_c through the head
        only, for the score s = f_y (``class_score="logit"``), s = log p_y or s = f_y − f_r (r the
        runner-up). For a head that is global average pooling and one linear layer, α = W_y for the
        logit (CAM = W_y · A + b_y, Zhou et al. 2016, up to the constant), α = W_y − Σ_c p_c W_c for the
        log-probability and α = W_y − W_r for the margin, in closed form;
        for any other head (a 1×1 convolution or a norm after the pooling, as MobileNetV3's and
        ConvNeXt's), by autograd."""
        if final.dim() != 4:
            raise ValueError(
                f"FeatureMaskNet(class_map=True) reads a convolutional feature map, but {self.backbone} ends in "
                f"features of shape {tuple(final.shape)} (tokens): set class_map: false or use MaskUNet"
            )
        model = cast(Any, self.encoder.model)
        logits = model.forward_head(final) if logits is None else logits
        y = logits.argmax(-1)
        rivals = self._rival_weights(logits)
        if self._pool_linear:
            linear: nn.Linear = model.get_classifier()
            alpha, bias = linear.weight[y], linear.bias[y] if linear.bias is not None else None  # (B, C), (B,)
            if rivals is not None:
                alpha = alpha - rivals @ linear.weight
                bias = bias - rivals @ linear.bias if bias is not None else None
            cam = torch.einsum("bc,bchw->bhw", alpha, final)[:, None]
            if bias is not None:  # a constant, gone after standardisation up to rounding (kept: the same maps as before)
                cam = cam + bias.view(-1, 1, 1, 1)
        else:

            def score(features: torch.Tensor) -> torch.Tensor:
                out = model.forward_head(features)
                chosen = out.gather(1, y[:, None]).sum()
                return chosen if rivals is None else chosen - (rivals * out).sum()

            grad = torch.func.grad(score)(final.detach())  # a function transform: also under no_grad and vmap
            cam = (grad.mean((2, 3), keepdim=True) * final).sum(1, keepdim=True)
        flat = cam.flatten(1)
        return (cam - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).clamp_min(1e-6).view(-1, 1, 1, 1)

    def _rival_weights(self, logits: torch.Tensor) -> torch.Tensor | None:
        """(B, K) weights w of the classes the score subtracts, s = f_y − w · f (w held constant), or None for
        the logit: the runner-up's one-hot for the margin, p for log p_y (the same gradient:
        ∂ log p_y = ∂f_y − Σ_c p_c ∂f_c)."""
        if self.class_score == "log_probability":
            return logits.softmax(-1)
        if self.class_score == "margin":
            return F.one_hot(logits.topk(2, dim=-1).indices[:, 1], logits.shape[-1]).to(logits)
        return None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, shape (B, 1, H, W), for images (B, 3, H, W) in [0, 1]. With ``class_map`` (and no
        ``read_size`` other than the images' own) the encoder's class logits on ``images`` are kept as
        :attr:`class_logits` (detached)."""
        height, width = images.shape[-2:]
        model = cast(Any, self.encoder.model)
        read = self.read_copy(images)
        with torch.no_grad():
            out = model.forward_intermediates(
                self.encoder.normalize(read), indices=self._indices(self.encoder), intermediates_only=not self.class_map
            )
            features, cam = out, None
            if self.class_map:
                features, logits = out[1], model.forward_head(out[0])
                cam = self.class_activation_map(out[0], logits)
                self.class_logits = logits if read is images else None
        size = features[0].shape[-2:]
        inputs: list[tuple[nn.Module, torch.Tensor]] = list(zip(self.lateral, features))
        if cam is not None:
            assert self.class_lateral is not None
            inputs.append((self.class_lateral, cam))
        x = _resized(inputs[0][0](inputs[0][1]), size)
        for lateral, f in inputs[1:]:
            x = x + _resized(lateral(f), size)
        logits = F.interpolate(self.head(self.decoder(x)), size=(height, width), mode="bilinear", align_corners=False)
        if cam is not None:
            assert self.class_scale is not None
            logits = logits + self.class_scale * F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def read_copy(self, images: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: ``images`` themselves, or their antialiased bilinear copy whose short side
        is ``read_size`` (the aspect ratio kept, as the images were sized for the classifier)."""
        height, width = (int(side) for side in images.shape[-2:])  # ints also when traced (torch.jit.trace)
        if self.read_size is None or min(height, width) == self.read_size:
            return images
        scale = self.read_size / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _without_encoder(module: FeatureMaskNet, state: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: drop the encoder's entries."""
    for key in [k for k in state if k.startswith(prefix + "encoder.")]:
        del state[key]


def _with_own_encoder(module: FeatureMaskNet, state: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: where the encoder's entries are missing, the current encoder's
    (so saved networks load with the classifier they are given)."""
    for key, value in module.encoder.state_dict().items():
        state.setdefault(f"{prefix}encoder.{key}", value)


def _pool_linear_head(classifier: FrozenClassifier) -> bool:
    """Whether the timm model's head is global average pooling and one linear layer (checked on a
    random feature map: forward_head(A) = linear(mean_hw A))."""
    model = cast(Any, classifier.model)
    linear = getattr(model, "get_classifier", lambda: None)()
    if not isinstance(linear, nn.Linear) or not callable(getattr(model, "forward_head", None)):
        return False
    probe = torch.randn(2, linear.in_features, 3, 3, generator=torch.Generator().manual_seed(0)).to(linear.weight)
    try:
        with torch.no_grad():
            return bool(torch.allclose(model.forward_head(probe), linear(probe.mean((2, 3))), atol=1e-4, rtol=1e-4))
    except (RuntimeError, ValueError):  # the head does not take a (B, C, h, w) map of the linear layer's width
        return False


def _resized(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """x bilinearly resized to ``size`` (unchanged where it has that size)."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def reads_feature_maps(classifier: FrozenClassifier, stages: int = 4) -> bool:
    """Whether :class:`FeatureMaskNet` can read ``classifier``: timm's feature stages (at least
    ``stages``), ``forward_intermediates`` and ``forward_head``, and final features that are a
    convolutional map (B, C, h, w), checked with one pass on a blank image."""
    model = cast(Any, classifier.model)
    info = getattr(model, "feature_info", None)
    methods = ("forward_intermediates", "forward_head")
    if not info or len(info) < stages or not all(callable(getattr(model, f, None)) for f in methods):
        return False
    if getattr(model, "output_fmt", "NCHW") != "NCHW":
        return False
    blank = torch.zeros(1, 3, classifier.input_size, classifier.input_size, device=next(classifier.parameters()).device)
    try:
        with torch.no_grad():
            final, _ = model.forward_intermediates(classifier.normalize(blank), indices=[len(info) - 1])
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return False
    return isinstance(final, torch.Tensor) and final.dim() == 4


def default_mask_network(classifier: FrozenClassifier) -> nn.Module:
    """The built-in recipe's mask network: a decoder on ``classifier``'s own last four feature
    stages (strides 4 to 32 of most CNNs) that corrects its class activation map
    (``FeatureMaskNet(classifier, stages=[-4, -3, -2, -1], class_map=True)``, width 32) where the
    classifier ends in a convolutional feature map; elsewhere (transformers, models without timm's
    feature stages) a :class:`~actmatch.explainers.unet.MaskUNet` at 56 px with replicate padding."""
    if reads_feature_maps(classifier):
        return FeatureMaskNet(classifier, stages=(-4, -3, -2, -1), class_map=True)
    from actmatch.explainers.unet import MaskUNet

    return MaskUNet(working_size=56, padding_mode="replicate")
