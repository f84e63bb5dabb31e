"""actmatch: explain frozen image classifiers with minimal binary masks (activation matching).

The Python API for any ``nn.Module`` classifier (see :mod:`actmatch.api`)::

    import actmatch
    result = actmatch.explain(model, images, mean=..., std=..., steps=100)
    masks = actmatch.ActivationMatchingExplainer(model, mean=..., std=...).attribute(images)

The API is imported on first use, so ``import actmatch`` (and the CLI) stays light.
"""

from __future__ import annotations

__all__ = ["explain", "ActivationMatchingExplainer"]


def __getattr__(name: str):
    if name in __all__:
        from actmatch import api

        return getattr(api, name)
    raise AttributeError(f"module 'actmatch' has no attribute {name!r}")
