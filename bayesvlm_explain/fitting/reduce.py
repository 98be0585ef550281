"""Step 3 of a fit: combine the ranks' sums (any ``torch.distributed`` backend; gloo tested on the CPU).

Class batch ``j`` belongs to rank ``j mod world_size``; the KFAC sums, counts and skips are additive, so
a sum all-reduce gives every rank the totals of one process over all batches.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..data.pairs import Skip
from .accumulate import Totals


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(totals: Totals) -> None:
    """Replace ``totals`` by its sum over all ranks (no-op for one process)."""
    if process_group()[1] == 1:
        return
    import torch.distributed as dist

    reasons = list(Skip)
    extra = torch.tensor([totals.skipped.get(r, 0) for r in reasons] + [totals.truncated], dtype=torch.float64)
    for a in totals.acc.values():
        for key in ("A_sum", "B_sum"):
            dist.all_reduce(getattr(a, key))
        n = torch.tensor([a.num_samples, a.num_class_batches], dtype=torch.float64)
        dist.all_reduce(n)
        a.num_samples, a.num_class_batches = int(n[0]), int(n[1])
    dist.all_reduce(extra)
    totals.skipped = Counter({r: int(v) for r, v in zip(reasons, extra[:-1].tolist(), strict=True) if v})
    totals.truncated = int(extra[-1])
