"""Bit-exact CPU training: run a block with torch's deterministic algorithms switched on.

Without it, gradient accumulation into repeated rows (an item embedding looked up many times in a batch) is
parallelised with atomic adds, so two runs with the same seed differ in the last bits after one epoch and drift
apart (ml-100k SASRec: test NDCG@10 .0749 vs .0753). The deterministic kernels cost no measurable time here, but
the debugging aid that comes with them does: by default torch then fills every new tensor with NaN, which cost 46 ms
per [12800, 1682] logits tensor and 10 % of a SASRec epoch on ml-100k. It finds kernels that read memory they never
wrote; ours do not, and the bit-exact tests compare two runs, so it is switched off inside the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic() -> Iterator[None]:
    """Switch torch's deterministic algorithms on for the block, then restore the caller's setting."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill
