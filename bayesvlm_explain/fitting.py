"""Fit the Kronecker posterior of a model on image-text pairs: streaming, resumable, multi-process.

Pipeline (method.md §2):

1. **Features**, once, in shards: the source's items are cut into shards of ``shard_size`` consecutive
   items (skipped items included, so shard boundaries never move); each shard's activations and
   embeddings of both towers go to ``<cache>/features/shard_XXXXXX.safetensors``. A finished shard is
   never recomputed, so an interrupted run resumes where it stopped.
2. **KFAC factors**: ``num_candidates // shard_size`` consecutive shards form one *class batch*; within
   it each image is scored against all its captions (InfoNCE or sigmoid) and vice versa, and the sums
   ``Σ ããᵀ`` and ``Σ H`` (fast O(BCD + BD² + CD²) form, :mod:`.estimation`) are accumulated in float64
   and checkpointed after every class batch. Memory is O(num_candidates·(p + D) + D²), whatever the
   number of pairs.
3. **Several processes** (``torchrun``, any backend; tested with gloo on the CPU): class batch ``j`` belongs
   to rank ``j mod world_size``; each rank computes only its own shards, and the sums are all-reduced,
   so any number of processes gives the same factors as one.
4. **Prior precision** by the marginal likelihood with the correct log-determinant (:mod:`.marglik`),
   or fixed values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data.pairs import PairSource, RawPair, open_pairs
from .encoding import autocast, token_counts
from .estimation import KFACAccumulator
from .inputs import InputError, load_image
from .marglik import factor_eigenvalues, optimize_prior_precision
from .posterior import KronPosterior, Posterior

CACHE_VERSION = 1


class FitError(ValueError):
    """Fitting cannot proceed (empty data, a cache made for another model, ...)."""


@dataclass
class FitReport:
    """What a fit did: counts, skips by reason, timings (s) and the chosen hyperparameters."""

    num_pairs: int = 0
    num_items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated_captions: int = 0
    num_class_batches: int = 0
    shards_computed: int = 0
    shards_reused: int = 0
    feature_time_s: float = 0.0
    kfac_time_s: float = 0.0
    wall_time_s: float = 0.0
    prior_precision: dict[str, float] = field(default_factory=dict)
    pseudo_count: float = 1.0


def model_fingerprint(vlm: Any) -> str:
    """A hash of all model parameters and buffers plus the projection layout (identifies caches)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(vlm.adapter.architecture.encode())
    for name, t in sorted(vlm.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _atomic_save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"json": json.dumps(meta)})
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["json"])


class _ShardWriter:
    """Decodes, encodes and stores the items of one shard."""

    def __init__(self, vlm: Any, batch_size: int):
        self.vlm, self.batch_size = vlm, batch_size

    def _decode(self, item: RawPair, skipped: Counter) -> tuple[torch.Tensor, str] | None:
        if item.problem:
            skipped[item.problem] += 1
            return None
        caption = item.caption
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError:
                skipped["bad_caption_encoding"] += 1
                return None
        if not isinstance(caption, str) or not caption.strip():
            skipped["empty_caption"] += 1
            return None
        try:
            image = self.vlm.preprocess(load_image(item.image))
        except InputError:
            skipped["bad_image"] += 1
            return None
        return image, caption.strip()

    def encode(self, items: list[RawPair]) -> tuple[dict[str, torch.Tensor], Counter, int]:
        skipped: Counter = Counter()
        decoded = [d for d in (self._decode(it, skipped) for it in items) if d is not None]
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("img_act", "img_emb", "txt_act", "txt_emb")}
        truncated = 0
        ctx = self.vlm.context_length
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            images = torch.stack([d[0] for d in chunk]).to(self.vlm.device)
            captions = [d[1] for d in chunk]
            truncated += sum(n > ctx for n in token_counts(self.vlm.tokenizer, captions))
            tokens = self.vlm.tokenizer(captions).to(self.vlm.device)
            with torch.inference_mode(), autocast(self.vlm.device):
                fi = self.vlm.adapter.image.features(images)
                ft = self.vlm.adapter.text.features(tokens)
            for key, t in (("img_act", fi.activations), ("img_emb", fi.embeddings),
                           ("txt_act", ft.activations), ("txt_emb", ft.embeddings)):
                feats[key].append(t.to("cpu", torch.float32))
        dims = {"img_act": self.vlm.adapter.image.weight.shape[1], "txt_act": self.vlm.adapter.text.weight.shape[1],
                "img_emb": self.vlm.adapter.image.dim_out, "txt_emb": self.vlm.adapter.text.dim_out}
        out = {k: torch.cat(v) if v else torch.zeros(0, dims[k]) for k, v in feats.items()}
        return out, skipped, truncated


def fit_posterior(
    vlm: Any,
    pairs: Any,
    *,
    num_candidates: int = 32768,
    batch_size: int = 64,
    shard_size: int | None = None,
    cache_dir: str | Path | None = None,
    pseudo_count: float = 1.0,
    prior_precision: float | tuple[float, float] | None = None,
    marglik: str = "exact",
    progress: bool = True,
) -> tuple[Posterior, FitReport]:
    """Estimate the image- and text-side KFAC factors of ``vlm`` on ``pairs`` and form a posterior.

    Args:
        pairs: a path (captions file, folder, tar shards), a :class:`PairSource`, or ``(image, caption)`` tuples.
        num_candidates: pairs per class batch, i.e. the size of the contrastive candidate set (the
            reference used 32,768).
        batch_size: pairs per encoder call.
        shard_size: items per feature shard (a divisor of ``num_candidates``; default
            ``min(num_candidates, 1024)``).
        cache_dir: where features and checkpoints live (default: a temporary folder, no resume).
        pseudo_count: ``n`` of the posterior.
        prior_precision: fixed ``λ`` (one value, or (image, text)); ``None`` = marginal likelihood.
        marglik: ``"exact"`` (correct log-determinant) or ``"reference"`` (the authors' objective).
    Returns:
        the posterior (metadata holds the provenance) and a :class:`FitReport`.
    """
    start_all = time.perf_counter()
    if num_candidates < 2:
        raise FitError("num_candidates must be at least 2")
    shard_size = shard_size or min(num_candidates, 1024)
    if num_candidates % shard_size:
        raise FitError(f"shard_size {shard_size} must divide num_candidates {num_candidates}")
    per_batch = num_candidates // shard_size
    rank, world = _dist()
    source: PairSource = open_pairs(pairs)
    if cache_dir is None:
        import tempfile

        cache_dir = tempfile.mkdtemp(prefix="bayesvlm-fit-")
    cache = Path(cache_dir)
    (cache / "features").mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(vlm)
    settings = {"version": CACHE_VERSION, "model": fingerprint, "num_candidates": num_candidates,
                "shard_size": shard_size, "source": source.description}
    manifest = cache / "cache.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("model") != fingerprint:
            raise FitError(f"the feature cache in {cache} was made for another model; use a new --cache folder")
        if old != settings:
            raise FitError(f"the cache in {cache} was made with other settings {old}; use a new --cache folder")
    elif rank == 0:
        manifest.write_text(json.dumps(settings, indent=2))
    report = FitReport(pseudo_count=pseudo_count)

    # 1. features, shard by shard (only this rank's class batches)
    t0 = time.perf_counter()
    writer = _ShardWriter(vlm, batch_size)
    pending: list[RawPair] = []
    shard = 0
    num_items = 0
    bar = tqdm(desc=f"features (rank {rank})", unit="pair", disable=not progress)

    def shard_path(index: int) -> Path:
        return cache / "features" / f"shard_{index:06d}.safetensors"

    def finish(index: int, items: list[RawPair]) -> None:
        if (index // per_batch) % world != rank:
            return
        if shard_path(index).is_file():
            report.shards_reused += 1
            return
        tensors, skipped, truncated = writer.encode(items)
        _atomic_save(tensors, {"items": len(items), "skipped": dict(skipped), "truncated": truncated},
                     shard_path(index))
        report.shards_computed += 1

    for item in source:
        index = num_items // shard_size
        num_items += 1
        if index != shard:
            finish(shard, pending)
            pending, shard = [], index
        if (index // per_batch) % world == rank and not shard_path(index).is_file():
            pending.append(item)
        bar.update(1)
    if num_items:
        finish(shard, pending)
    bar.close()
    if num_items == 0:
        raise FitError(f"no pairs in {source.description}")
    report.num_items = num_items
    report.feature_time_s = time.perf_counter() - t0

    # 2. KFAC factors by class batch, checkpointed
    t1 = time.perf_counter()
    num_shards = math.ceil(num_items / shard_size)
    num_batches = math.ceil(num_shards / per_batch)
    acc = {side: KFACAccumulator(proj.weight.shape[1], proj.dim_out, bias=proj.bias is not None,
                                 likelihood=vlm.adapter.likelihood)
           for side, proj in (("image", vlm.adapter.image), ("text", vlm.adapter.text))}
    counts: Counter = Counter()
    truncated = 0
    state_path = cache / f"kfac_rank{rank}_of{world}.safetensors"
    done_batches: list[int] = []
    if state_path.is_file():
        meta = _read_meta(state_path)
        tensors = load_file(str(state_path))
        for side in acc:
            acc[side].load_state_dict({**{k: tensors[f"{side}.{k}"] for k in KFACAccumulator.SUM_KEYS},
                                       **meta["acc"][side]})
        done_batches, counts, truncated = meta["done"], Counter(meta["skipped"]), meta["truncated"]
    tau, bias = vlm.adapter.logit_scale, vlm.adapter.logit_bias if vlm.adapter.likelihood == "sigmoid" else None
    for j in tqdm(range(rank, num_batches, world), desc="KFAC class batches", disable=not progress):
        if j in done_batches:
            continue
        parts, skipped_j, trunc_j = [], Counter(), 0
        for s in range(j * per_batch, min((j + 1) * per_batch, num_shards)):
            path = shard_path(s)
            parts.append(load_file(str(path)))
            m = _read_meta(path)
            skipped_j.update(m["skipped"])
            trunc_j += m["truncated"]
        feats = {k: torch.cat([p[k] for p in parts]).double() for k in parts[0]}
        if feats["img_act"].shape[0] >= 2:
            acc["image"].update(feats["img_act"], feats["img_emb"], feats["txt_emb"], tau, bias)
            acc["text"].update(feats["txt_act"], feats["txt_emb"], feats["img_emb"], tau, bias)
        else:
            skipped_j["class_batch_too_small"] += feats["img_act"].shape[0]
        counts.update(skipped_j)
        truncated += trunc_j
        done_batches.append(j)
        tensors = {f"{side}.{k}": torch.as_tensor(v) for side, a in acc.items()
                   for k, v in a.state_dict().items() if k in KFACAccumulator.SUM_KEYS}
        meta = {"done": done_batches, "skipped": dict(counts), "truncated": truncated,
                "acc": {side: {k: v for k, v in a.state_dict().items() if k not in KFACAccumulator.SUM_KEYS}
                        for side, a in acc.items()}}
        _atomic_save(tensors, meta, state_path)

    # 3. combine ranks
    if world > 1:
        import torch.distributed as dist

        reasons = sorted({"bad_image", "missing_file", "bad_caption_encoding", "empty_caption", "bad_row",
                          "missing_image", "missing_caption", "class_batch_too_small", *counts})
        extra = torch.tensor([counts.get(r, 0) for r in reasons] + [truncated], dtype=torch.float64)
        for a in acc.values():
            for key in ("A_sum", "B_sum"):
                dist.all_reduce(getattr(a, key))
            n = torch.tensor([a.num_samples, a.num_class_batches], dtype=torch.float64)
            dist.all_reduce(n)
            a.num_samples, a.num_class_batches = int(n[0]), int(n[1])
        dist.all_reduce(extra)
        counts = Counter({r: int(v) for r, v in zip(reasons, extra[:-1].tolist(), strict=True) if v})
        truncated = int(extra[-1])
    report.kfac_time_s = time.perf_counter() - t1
    if acc["image"].num_samples == 0:
        raise FitError(f"no usable pairs in {source.description} (skipped: {dict(counts)})")
    report.num_pairs = acc["image"].num_samples
    report.num_class_batches = acc["image"].num_class_batches
    report.skipped = dict(counts)
    report.truncated_captions = truncated

    # 4. posterior and prior precision
    sides = {}
    for side, a in acc.items():
        A, B, n_rows = a.factors()
        sides[side] = KronPosterior(A, B, pseudo_count=pseudo_count, num_pairs=n_rows)
    posterior = Posterior(sides["image"], sides["text"])
    curves = {}
    if prior_precision is None:
        curves = optimize_posterior_prior(vlm, posterior, mode=marglik)
    else:
        lams = (prior_precision, prior_precision) if isinstance(prior_precision, int | float) else prior_precision
        posterior.image.prior_precision, posterior.text.prior_precision = map(float, lams)
    report.prior_precision = {s: getattr(posterior, s).prior_precision for s in ("image", "text")}
    report.wall_time_s = time.perf_counter() - start_all
    posterior.metadata.update({
        "model": vlm.name, "architecture": vlm.adapter.architecture, "model_fingerprint": fingerprint,
        "likelihood": vlm.adapter.likelihood, "logit_scale": tau, "logit_bias": vlm.adapter.logit_bias,
        "data": source.description, "num_candidates": num_candidates, "marglik": marglik if curves else "fixed",
        "report": asdict(report), "marglik_curves": curves,
    })
    return posterior, report


def optimize_posterior_prior(vlm: Any, posterior: Posterior, *, mode: str = "exact",
                             pseudo_count: float | None = None) -> dict[str, list[list[float]]]:
    """Set each side's ``λ`` to the marginal-likelihood maximiser (method.md §2.5); return the curves.

    ``‖θ*‖²`` is the squared norm of the MAP projection (bias included); ``mode="reference"`` reproduces
    the authors' objective with its wrong log-determinant, for comparison.
    """
    curves = {}
    for side, proj in (("image", vlm.adapter.image), ("text", vlm.adapter.text)):
        post = getattr(posterior, side)
        if pseudo_count is not None:
            post.pseudo_count = pseudo_count
        theta_sq = float(proj.weight_with_bias().detach().double().square().sum())
        lam, curve = optimize_prior_precision(factor_eigenvalues(post.A), factor_eigenvalues(post.B),
                                              post.pseudo_count, theta_sq, mode=mode)
        post.prior_precision = lam
        curves[side] = curve.tolist()
    return curves
