"""Python objects from every rank: the collective the DDP-aware callbacks share."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["gather_objects"]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable) in rank order; ``[obj]`` outside ``torch.distributed``.

    A collective under DDP: every rank must call it, the same number of times.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
