"""Circuit edges: how much channel i of one layer drives channel j of the next.

Two scorings, chosen per circuit (see docs/circuits.md for which applies where):

* :class:`WeightScoring` (``weight``), the paper's definition. Where the target layer's input
  is the source layer's output through **one** convolution or linear map W (plus per-channel
  operations only: BatchNorm, activations, dropout, pooling), the edge is

      s(i → j) = Σ_{u,v} |W[j, i, u, v]| · E_i,

  E_i the source channel's energy (mean |activation|). Grouped and depthwise convolutions get
  zero weight between channels of different groups; a chain of per-channel operations alone
  (e.g. global pooling before the head) is the identity map. Whether a pair of layers is joined
  this way is **detected at run time** by following the forward pass's tensors back from the
  target to the source; anything else (residual additions, several convolutions in a block,
  attention, functional ops) raises :class:`NotLinkableError`.
* :class:`GradientScoring` (``gradient``), valid for any architecture:

      s(i → j) = E_i · Σ_p |∂ ā_j / ∂ a_i(p)|,

  ā_j the target channel's mean activation and a_i(p) the source channel at position p, by
  autograd through whatever lies between the two layers. For a 1×1 convolution with nothing
  but the identity after it this equals the weight score.
* :class:`AutoScoring` (``auto``): weight where it applies, gradient elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from actmatch.explainers.circuits.nodes import Activations, Site
from actmatch.explainers.taps import to_feature_map

__all__ = [
    "NotLinkableError",
    "Ingress",
    "find_ingress",
    "ingress_matrix",
    "EdgeScoring",
    "WeightScoring",
    "GradientScoring",
    "AutoScoring",
    "SCORINGS",
    "make_scoring",
]


class NotLinkableError(ValueError):
    """Two layers are not joined by a single convolution or linear map (weight scoring)."""


# modules that act on each channel separately: they keep channel i at index i
_CHANNELWISE = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
)


def _channelwise(module: nn.Module) -> bool:
    if isinstance(module, _CHANNELWISE):
        return True
    cls = type(module)
    if cls.__module__.startswith("timm.layers.activations"):
        return True
    if cls.__name__ == "SelectAdaptivePool2d":  # timm global pooling (+ flatten)
        return getattr(module, "pool_type", "avg") in ("avg", "max", "fast", "avgmax")
    return False


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


class _CallRecorder:
    """Records every module call (start/end order, first input and output tensor objects).

    Hooks live only inside the ``with`` block; tensors are held so their ids stay unique.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[_Call] = []
        self._open: dict[int, list[_Call]] = {}
        self._clock = 0
        self._handles: list = []

    def __enter__(self) -> _CallRecorder:
        try:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._pre(name)))
                self._handles.append(module.register_forward_hook(self._post()))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, name: str):
        def hook(module: nn.Module, inputs) -> None:
            call = _Call(name, module, self._clock, input=_first_tensor(inputs))
            self._clock += 1
            self._open.setdefault(id(module), []).append(call)
            self.calls.append(call)

        return hook

    def _post(self):
        def hook(module: nn.Module, _inputs, output) -> None:
            call = self._open[id(module)].pop()
            call.end, call.output = self._clock, _first_tensor(output)
            self._clock += 1

        return hook

    def last_call(self, name: str) -> _Call:
        calls = [c for c in self.calls if c.name == name and c.end >= 0]
        if not calls:
            raise ValueError(f"the forward pass never reached {name!r}")
        return calls[-1]


@dataclass
class Ingress:
    """How a target layer is computed from a source layer, when by one linear map.

    Attributes:
        kind: ``conv``, ``linear`` or ``identity`` (per-channel operations only).
        module: name of the convolution / linear module ("" for identity).
        matrix: (C_target, C_source) Σ_kernel |W| (identity: the identity matrix).
    """

    kind: str
    module: str
    matrix: torch.Tensor


def ingress_matrix(module: nn.Module) -> torch.Tensor:
    """(C_out, C_in) Σ_{u,v} |W[j, i, u, v]| of a convolution (any groups) or |W| of a linear map."""
    if isinstance(module, nn.Linear):
        return module.weight.detach().abs().cpu()
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"ingress_matrix: {type(module).__name__} is neither a convolution nor nn.Linear")
    weight = module.weight.detach().abs().cpu()
    c_out, c_in_per_group = weight.shape[:2]
    groups = module.groups
    per_group = weight.flatten(2).sum(-1)  # (C_out, C_in / groups)
    dense = torch.zeros(c_out, c_in_per_group * groups)
    out_per_group = c_out // groups
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        cols = slice(g * c_in_per_group, (g + 1) * c_in_per_group)
        dense[rows, cols] = per_group[rows]
    return dense


def _site_tensor(recorder: _CallRecorder, site: Site) -> tuple[torch.Tensor, int]:
    call = recorder.last_call(site.module)
    tensor, position = (call.input, call.start) if site.kind == "input" else (call.output, call.end + 1)
    if tensor is None:
        raise ValueError(f"the forward pass gave {site.module!r} no tensor {site.kind}")
    return tensor, position


@torch.no_grad()
def find_ingress(classifier: nn.Module, image: torch.Tensor, source: Site, target: Site) -> Ingress:
    """Detect, by following one forward pass, whether ``target`` = per-channel ops ∘ W ∘ ``source``.

    Raises:
        NotLinkableError: the path from source to target holds something other than one
            convolution / linear map and per-channel operations; the message says to use
            ``gradient`` scoring.
    """
    model = getattr(classifier, "model", classifier)
    with _CallRecorder(model) as recorder:
        classifier(image)
    source_tensor, _ = _site_tensor(recorder, source)
    tensor, position = _site_tensor(recorder, target)

    def fail(reason: str) -> NotLinkableError:
        return NotLinkableError(
            f"weight scoring cannot link {source.name!r} -> {target.name!r}: {reason}. Weight scoring "
            f"needs the target's input to be the source's output through a single convolution or linear "
            f"map (plus per-channel ops such as BatchNorm, activations, pooling). Use scoring='gradient' "
            f"(--scoring gradient), which works for any architecture, or tap layers joined by one convolution."
        )

    linear: _Call | None = None
    path: list[str] = []
    while tensor is not source_tensor:
        candidates = sorted((c for c in recorder.calls if c.output is tensor and 0 <= c.end < position), key=lambda c: -c.end)
        step = None
        for call in candidates:
            if isinstance(call.module, (nn.Conv2d, nn.Linear)):
                if linear is not None:
                    raise fail(f"more than one linear map lies between them ({call.name} and {linear.name})")
                linear = step = call
                break
            if _channelwise(call.module):
                step = call
                break
        if step is None:
            made_by = candidates[0].name if candidates else "an operation outside any module (e.g. a residual addition)"
            raise fail(f"the path passes through {made_by}" + (f" after {path[-1]}" if path else ""))
        path.append(step.name)
        if step.input is None:
            raise fail(f"{step.name} has no tensor input")
        tensor, position = step.input, step.start
    sources = source_tensor.shape[1] if source_tensor.dim() >= 2 else 0
    if linear is None:
        matrix, kind, name = torch.eye(sources), "identity", ""
    else:
        matrix, name = ingress_matrix(linear.module), linear.name
        kind = "linear" if isinstance(linear.module, nn.Linear) else "conv"
    target_tensor, _ = _site_tensor(recorder, target)
    targets = target_tensor.shape[1] if target_tensor.dim() >= 2 else 0
    if tuple(matrix.shape) != (targets, sources):
        raise fail(f"the map {name or 'identity'} is {tuple(matrix.shape)} but the layers have {targets} x {sources} channels")
    return Ingress(kind, name, matrix)


class EdgeScoring:
    """Base class: scores edges between the kept channels of two successive layers.

    Override :meth:`influence`.
    """

    name = "base"

    def influence(
        self, classifier: nn.Module, image: torch.Tensor, source: Site, target: Site, targets: torch.Tensor
    ) -> torch.Tensor:
        """(len(targets), C_source) nonnegative influence of each source channel on each target channel."""
        raise NotImplementedError

    def score(
        self,
        classifier: nn.Module,
        image: torch.Tensor,
        source: Site,
        target: Site,
        activations: Activations,
        sources: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """(len(sources), len(targets)) edge scores influence[j, i] · E_i."""
        influence = self.influence(classifier, image, source, target, targets)  # (k_t, C_s)
        energy = activations.energy[source.name][sources]  # (k_s,)
        return influence[:, sources].T * energy[:, None]

    def used(self, classifier: nn.Module, image: torch.Tensor, source: Site, target: Site) -> str:
        """Name of the scoring that applies to this pair (``auto`` resolves it)."""
        return self.name


class WeightScoring(EdgeScoring):
    """Σ|W| × source energy, for layers joined by one convolution or linear map."""

    name = "weight"

    def __init__(self) -> None:
        self._cache: dict[tuple, Ingress | NotLinkableError] = {}

    def ingress(self, classifier: nn.Module, image: torch.Tensor, source: Site, target: Site) -> Ingress:
        """The (cached) :class:`Ingress` for a pair of layers of this model and input size."""
        key = (id(classifier), source, target, tuple(image.shape))
        if key not in self._cache:
            try:
                self._cache[key] = find_ingress(classifier, image, source, target)
            except NotLinkableError as err:
                self._cache[key] = err
        found = self._cache[key]
        if isinstance(found, NotLinkableError):
            raise NotLinkableError(str(found))
        return found

    def influence(self, classifier, image, source, target, targets):
        return self.ingress(classifier, image, source, target).matrix[targets]


class _StopForward(Exception):
    pass


class GradientScoring(EdgeScoring):
    """Source energy × Σ_p |∂ target channel mean / ∂ source activation|, by autograd; any architecture."""

    name = "gradient"

    def influence(self, classifier, image, source, target, targets):
        model = getattr(classifier, "model", classifier)
        modules = dict(model.named_modules())
        state: dict = {}

        def on_source(_module, _inputs, output):
            raw = output[0] if isinstance(output, (tuple, list)) else output
            leaf = raw.detach().requires_grad_(True)
            state["leaf"] = leaf
            if isinstance(output, (tuple, list)):
                return type(output)([leaf.clone(), *output[1:]])
            return leaf.clone()  # a non-leaf copy, so later in-place ops are allowed

        def on_target(value):
            if "leaf" not in state:
                raise ValueError(f"layer {target.name!r} runs before {source.name!r}; list the layers in forward order")
            state["target"] = to_feature_map(value, model)
            raise _StopForward

        handles = [modules[source.module].register_forward_hook(on_source)]
        try:
            if target.kind == "input":
                handles.append(modules[target.module].register_forward_pre_hook(lambda _m, inputs: on_target(inputs[0])))
            else:
                handles.append(modules[target.module].register_forward_hook(lambda _m, _i, output: on_target(output)))
            with torch.enable_grad(), contextlib.suppress(_StopForward):
                classifier(image)
        finally:
            for handle in handles:
                handle.remove()
        if "target" not in state:
            raise ValueError(f"the forward pass never reached {target.name!r} after {source.name!r}")
        leaf = state["leaf"]
        means = state["target"][0, targets].flatten(1).mean(1)  # (k_t,)
        if not means.requires_grad:  # target does not depend on the source at all
            return torch.zeros(len(targets), to_feature_map(leaf, model).shape[1])
        eye = torch.eye(len(targets), dtype=means.dtype, device=means.device)
        try:
            (grads,) = torch.autograd.grad(means, leaf, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        except RuntimeError:  # an op without a batching rule: one backward pass per target channel
            rows = [torch.autograd.grad(means[j], leaf, retain_graph=True, allow_unused=True)[0] for j in range(len(targets))]
            grads = None if rows[0] is None else torch.stack(rows)
        if grads is None:
            return torch.zeros(len(targets), to_feature_map(leaf, model).shape[1])
        per_target = torch.stack([to_feature_map(g, model)[0] for g in grads])  # (k_t, C_s, h, w)
        return per_target.abs().flatten(2).sum(-1).detach().cpu()


class AutoScoring(EdgeScoring):
    """Weight scoring where the layers are joined by one linear map, gradient scoring elsewhere."""

    name = "auto"

    def __init__(self) -> None:
        self.weight, self.gradient = WeightScoring(), GradientScoring()

    def used(self, classifier, image, source, target) -> str:
        try:
            self.weight.ingress(classifier, image, source, target)
            return self.weight.name
        except NotLinkableError:
            return self.gradient.name

    def influence(self, classifier, image, source, target, targets):
        chosen = self.weight if self.used(classifier, image, source, target) == "weight" else self.gradient
        return chosen.influence(classifier, image, source, target, targets)


SCORINGS: dict[str, type[EdgeScoring]] = {cls.name: cls for cls in (WeightScoring, GradientScoring, AutoScoring)}


def make_scoring(scoring: str | EdgeScoring) -> EdgeScoring:
    """An :class:`EdgeScoring` instance from a name in :data:`SCORINGS` (or the instance itself)."""
    if isinstance(scoring, EdgeScoring):
        return scoring
    if scoring not in SCORINGS:
        raise ValueError(f"unknown edge scoring {scoring!r}; choose one of {sorted(SCORINGS)}")
    return SCORINGS[scoring]()
