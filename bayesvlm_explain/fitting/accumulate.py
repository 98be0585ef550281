"""Step 2 of a fit: KFAC sums over class batches (method.md §2.2–2.3), checkpointed after each batch.

``num_candidates // shard_size`` consecutive shards form one *class batch*; within it each image is
scored against all its captions (InfoNCE or sigmoid) and vice versa, and ``Σ ããᵀ`` and ``Σ H`` are
accumulated in float64 (:class:`~bayesvlm_explain.estimation.KFACAccumulator`) from the float32 feature
cache. Precision of ``Σ H`` (:data:`FIT_MOMENT_DTYPE`, docs/fitting.md): the logits ``τ X̂ Ŷᵀ`` and the
probabilities stay float64 (the default ``compute_dtype``), because float32 logits carry
τ·(float32 round-off) into B: up to 6.5e-6 relative measured in the saturated regime, above the 1e-6
bound that docs/numerics.md sets. The two probability-weighted GEMMs (``moment_dtype``) run in float32:
their non-negative weights carry no such factor (≤ 2e-7 relative measured, saturated or not) and they
are two of the three O(BCD) products.

**The last class batch, when short of ``num_candidates`` items, is dropped** (its usable pairs are
counted as ``partial_class_batch``): its softmax would run over fewer candidates, which puts its
curvature on another scale than every other batch's (for a model that ranks its own caption first,
fewer candidates mean a larger probability on it and a smaller ``p(1 − p)``), and no rescaling makes it
the curvature of a full batch. The exception is a data set that forms a single class batch: all its
pairs then share one candidate set, nothing is mixed, and it is kept.

The checkpoint ``kfac_rank<r>_of<w>.safetensors`` records, per finished class batch, a key made of its
shards' checksums; it is reused only when every key still matches (otherwise, or when it fails its own
checksum, it is discarded and the sums are recomputed from the cached features).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.pairs import Skip
from ..estimation import KFACAccumulator
from .features import FeatureCache
from .files import CorruptFileError, load_checked, save_checked
from .report import FitReport

log = logging.getLogger(__name__)

FIT_MOMENT_DTYPE = torch.float32
"""``moment_dtype`` of the fit's output factors (module notes); the logits stay float64."""


@dataclass(frozen=True)
class ClassBatches:
    """How ``num_items`` items fall into shards and class batches of ``num_candidates`` items."""

    num_items: int
    num_candidates: int
    shard_size: int

    @property
    def per_batch(self) -> int:
        return self.num_candidates // self.shard_size

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_items / self.shard_size)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_items / self.num_candidates)

    def shards(self, j: int) -> range:
        return range(j * self.per_batch, min((j + 1) * self.per_batch, self.num_shards))

    def dropped(self, j: int) -> bool:
        """Whether batch ``j`` is the short last batch of several (see the module notes)."""
        return self.num_batches > 1 and j == self.num_batches - 1 and self.num_items % self.num_candidates != 0


@dataclass
class Totals:
    """This rank's KFAC sums per side, skips by reason and truncated captions (additive across ranks)."""

    acc: dict[str, KFACAccumulator]
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0

    @classmethod
    def empty(cls, adapter: Any) -> Totals:
        return cls({side: KFACAccumulator(proj.weight.shape[1], proj.dim_out, bias=proj.bias is not None,
                                          likelihood=adapter.likelihood, moment_dtype=FIT_MOMENT_DTYPE)
                    for side, proj in (("image", adapter.image), ("text", adapter.text))})

    def add_batch(self, feats: dict[str, torch.Tensor], metas: list[dict[str, Any]], adapter: Any,
                  dropped: bool) -> None:
        """Add one class batch of features ``{key: [n, ·]}`` with its shards' metadata."""
        for meta in metas:
            self.skipped.update(meta["skipped"])
            self.truncated += meta["truncated"]
        n = feats["img_act"].shape[0]
        if dropped:
            self.skipped[Skip.PARTIAL_CLASS_BATCH] += n
        elif n < 2:
            self.skipped[Skip.CLASS_BATCH_TOO_SMALL] += n
        else:
            tau = adapter.logit_scale
            bias = adapter.logit_bias if adapter.likelihood == "sigmoid" else None
            self.acc["image"].update(feats["img_act"], feats["img_emb"], feats["txt_emb"], tau, bias)
            self.acc["text"].update(feats["txt_act"], feats["txt_emb"], feats["img_emb"], tau, bias)


def _batch_key(cache: FeatureCache, shards: range) -> str:
    return hashlib.blake2b("".join(cache.checksums[s] for s in shards).encode(), digest_size=16).hexdigest()


def _save_checkpoint(cache: FeatureCache, totals: Totals, done: dict[int, str]) -> None:
    tensors = {f"{side}.{k}": torch.as_tensor(v) for side, a in totals.acc.items()
               for k, v in a.state_dict().items() if k in KFACAccumulator.SUM_KEYS}
    meta = {"done": {str(j): key for j, key in done.items()}, "truncated": totals.truncated,
            "skipped": {str(k): v for k, v in totals.skipped.items()},
            "acc": {side: {k: v for k, v in a.state_dict().items() if k not in KFACAccumulator.SUM_KEYS}
                    for side, a in totals.acc.items()}}
    save_checked(tensors, meta, _checkpoint_path(cache))


def _checkpoint_path(cache: FeatureCache) -> Path:
    return cache.root / f"kfac_rank{cache.rank}_of{cache.world}.safetensors"


def _resume(cache: FeatureCache, adapter: Any, keys: dict[int, str],
            report: FitReport) -> tuple[Totals, dict[int, str]]:
    """The checkpoint's sums and finished batches if it is intact and matches ``keys``; else empty ones."""
    path, totals = _checkpoint_path(cache), Totals.empty(adapter)
    if not path.is_file():
        return totals, {}
    try:
        tensors, meta, _ = load_checked(path)
        done = {int(j): key for j, key in meta["done"].items()}
        if any(keys.get(j) != key for j, key in done.items()):
            raise CorruptFileError(f"{path} was made from other features (the data or a shard changed)")
        for side, a in totals.acc.items():
            a.load_state_dict({**{k: tensors[f"{side}.{k}"] for k in KFACAccumulator.SUM_KEYS}, **meta["acc"][side]})
        totals.skipped, totals.truncated = Counter(meta["skipped"]), int(meta["truncated"])
    except (CorruptFileError, KeyError, ValueError, TypeError, AttributeError) as err:
        problem = str(err) if str(path) in str(err) else f"{path} does not fit this accumulator ({err!r})"
        log.warning("discarding the KFAC checkpoint: %s", problem)
        report.recomputed.append(problem)
        return Totals.empty(adapter), {}
    return totals, done


def accumulate(cache: FeatureCache, plan: ClassBatches, adapter: Any, report: FitReport, progress: bool) -> Totals:
    """This rank's sums over its class batches ``j ≡ rank (mod world)``, resuming from the checkpoint."""
    mine = range(cache.rank, plan.num_batches, cache.world)
    keys = {j: _batch_key(cache, plan.shards(j)) for j in mine}
    totals, done = _resume(cache, adapter, keys, report)
    for j in tqdm(mine, desc="KFAC class batches", disable=not progress):
        if j in done:
            continue
        feats, metas = cache.load(plan.shards(j))
        totals.add_batch(feats, metas, adapter, plan.dropped(j))
        done[j] = keys[j]
        _save_checkpoint(cache, totals, done)
    return totals
