"""keep_freed_memory: activation buffers above glibc's largest dynamic mmap threshold (32 MiB) are
reused from the heap instead of mapped, and zeroed by the kernel, at every pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# a 32-channel 256 x 256 activation of 4 images is 33.5 MB (8 192 pages of 4 KiB)
PROBE = """
import resource, torch
from actmatch.memory import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))
x = torch.rand(4, 3, 256, 256)
with torch.no_grad():
    for _ in range(2):
        net(x)  # warm-up: the heap grows to hold one pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str) -> tuple[str, int]:
    env = {**os.environ, "ACTMATCH_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activation_buffers_are_reused_instead_of_faulted_in_again():
    applied, kept = _faults("1")
    skipped, default = _faults("0")
    assert (applied, skipped) == ("True", "False")
    # glibc's default maps each 33.5 MB buffer afresh: at least one buffer's 8 192 pages per pass
    assert default >= 5 * 8192
    # kept: the heap is reused; at most one late growth by a buffer (seen once on a loaded machine)
    assert kept <= 8192 + 512
