"""``fit_posterior``: the steps of a fit in order, under a lock on the cache folder."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.pairs import open_pairs
from ..options import MargLikMode
from ..posterior import Posterior
from .accumulate import ClassBatches, accumulate
from .features import CACHE_VERSION, FeatureCache, ShardEncoder, model_fingerprint
from .files import CacheLock
from .prior import form_posterior, set_prior_precision
from .protocol import FittableModel
from .reduce import all_reduce, process_group
from .report import FitError, FitReport


def fit_posterior(
    vlm: FittableModel,
    pairs: Any,
    *,
    num_candidates: int = 32768,
    batch_size: int = 64,
    shard_size: int | None = None,
    cache_dir: str | Path | None = None,
    pseudo_count: float = 1.0,
    prior_precision: float | tuple[float, float] | None = None,
    marglik: MargLikMode = "exact",
    progress: bool = True,
) -> tuple[Posterior, FitReport]:
    """Estimate the image- and text-side KFAC factors of ``vlm`` on ``pairs`` and form a posterior.

    Args:
        pairs: a path (captions file, folder, tar shards), a :class:`~bayesvlm_explain.data.pairs.PairSource`,
            or ``(image, caption)`` tuples.
        num_candidates: items per class batch, i.e. the size of the contrastive candidate set (the
            reference used 32,768). A short last class batch is dropped (see :mod:`.accumulate`).
        batch_size: pairs per encoder call.
        shard_size: items per feature shard (a divisor of ``num_candidates``; default
            ``min(num_candidates, 1024)``).
        cache_dir: where features and checkpoints live (default: a temporary folder, removed afterwards;
            no resume). Locked while the fit runs.
        pseudo_count: ``n`` of the posterior.
        prior_precision: fixed ``λ`` (one value, or (image, text)); ``None`` = marginal likelihood.
        marglik: ``"exact"`` (correct log-determinant) or ``"reference"`` (the authors' objective).
    Returns:
        the posterior (metadata holds the provenance) and a :class:`FitReport`.
    """
    if num_candidates < 2:
        raise FitError("num_candidates must be at least 2")
    shard_size = shard_size or min(num_candidates, 1024)
    if num_candidates % shard_size:
        raise FitError(f"shard_size {shard_size} must divide num_candidates {num_candidates}")
    with ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bayesvlm-fit-"))
        root = Path(cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        stack.enter_context(CacheLock(root, process_group()[0]))
        return _fit_in(vlm, pairs, root, num_candidates, batch_size, shard_size, pseudo_count, prior_precision,
                       marglik, progress)


def _fit_in(vlm: FittableModel, pairs: Any, root: Path, num_candidates: int, batch_size: int, shard_size: int,
            pseudo_count: float, prior_precision: float | tuple[float, float] | None, marglik: MargLikMode,
            progress: bool) -> tuple[Posterior, FitReport]:
    """The four steps of :func:`fit_posterior` on the (locked) cache folder ``root``."""
    start = time.perf_counter()
    rank, world = process_group()
    source = open_pairs(pairs)
    fingerprint = model_fingerprint(vlm)
    settings = {"version": CACHE_VERSION, "model": fingerprint, "num_candidates": num_candidates,
                "shard_size": shard_size, "source": source.description}
    cache = FeatureCache(root, settings, num_candidates // shard_size, rank, world)
    report = FitReport(pseudo_count=pseudo_count)
    report.num_items = cache.fill(source, ShardEncoder(vlm, batch_size), report, progress)  # 1. features
    if report.num_items == 0:
        raise FitError(f"no pairs in {source.description}")
    report.feature_time_s = time.perf_counter() - start
    plan = ClassBatches(report.num_items, num_candidates, shard_size)
    totals = accumulate(cache, plan, vlm.adapter, report, progress)  # 2. KFAC sums
    all_reduce(totals)  # 3. across processes
    report.kfac_time_s = time.perf_counter() - start - report.feature_time_s
    report.skipped = {str(k): v for k, v in sorted(totals.skipped.items()) if v}
    if totals.acc["image"].num_samples == 0:
        raise FitError(f"no usable pairs in {source.description} (skipped: {report.skipped})")
    report.num_pairs = totals.acc["image"].num_samples
    report.num_class_batches = totals.acc["image"].num_class_batches
    report.truncated_captions = totals.truncated
    posterior = form_posterior(totals.acc, pseudo_count)  # 4. posterior and λ
    curves = set_prior_precision(vlm, posterior, prior_precision, marglik)
    report.prior_precision = {s: getattr(posterior, s).prior_precision for s in ("image", "text")}
    report.wall_time_s = time.perf_counter() - start
    posterior.metadata.update({
        "model": vlm.name, "architecture": vlm.adapter.architecture, "model_fingerprint": fingerprint,
        "likelihood": vlm.adapter.likelihood, "logit_scale": vlm.adapter.logit_scale,
        "logit_bias": vlm.adapter.logit_bias, "data": source.description, "num_candidates": num_candidates,
        "marglik": marglik if curves else "fixed", "report": asdict(report), "marglik_curves": curves,
    })
    return posterior, report
