"""Step 1 of a fit: the feature cache (method.md §2.3), computed once, in shards, resumable.

The source's items are cut into shards of ``shard_size`` consecutive items (skipped items included, so
shard boundaries never move); each shard's activations and embeddings of both towers go to
``<cache>/features/shard_XXXXXX.safetensors`` with the digest of the items it was made from
(:func:`~bayesvlm_explain.data.pairs.items_digest`). A shard is reused only when it passes its checksum
and its items are the same as now; otherwise it is recomputed and the report names it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.pairs import PairSource, RawPair, Skip, items_digest
from ..encoding import autocast
from ..inputs import InputError, load_image
from .files import CorruptFileError, load_checked, save_checked
from .protocol import FittableModel
from .report import FitError, FitReport

CACHE_VERSION = 2
FEATURE_KEYS = ("img_act", "img_emb", "txt_act", "txt_emb")
log = logging.getLogger(__name__)


def model_fingerprint(vlm: FittableModel) -> str:
    """A hash of all model parameters and buffers plus the projection layout (identifies caches)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(vlm.adapter.architecture.encode())
    for name, t in sorted(vlm.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ShardEncoder:
    """Decodes, validates and encodes the items of one shard with the model's adapters."""

    def __init__(self, vlm: FittableModel, batch_size: int):
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
                skipped[Skip.BAD_CAPTION_ENCODING] += 1
                return None
        if not isinstance(caption, str) or not caption.strip():
            skipped[Skip.EMPTY_CAPTION] += 1
            return None
        try:
            image = self.vlm.preprocess(load_image(item.image))
        except InputError:  # decompression bombs included
            skipped[Skip.BAD_IMAGE] += 1
            return None
        return image, caption.strip()

    def encode(self, items: list[RawPair]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Features of the usable items ``{key: [n, p or D]}`` (float32) and the shard's metadata
        (item count, skips by reason, captions truncated to the context length)."""
        skipped: Counter = Counter()
        decoded = [d for d in (self._decode(it, skipped) for it in items) if d is not None]
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in FEATURE_KEYS}
        truncated = 0
        vlm = self.vlm
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            images = torch.stack([d[0] for d in chunk]).to(vlm.device)
            captions = [d[1] for d in chunk]
            truncated += sum(n > vlm.context_length for n in vlm.adapter.token_counts(vlm.tokenizer, captions))
            tokens = vlm.tokenizer(captions).to(vlm.device)
            with torch.inference_mode(), autocast(vlm.device):
                fi = vlm.adapter.image.features(images)
                ft = vlm.adapter.text.features(tokens)
            for key, t in zip(FEATURE_KEYS, (fi.activations, fi.embeddings, ft.activations, ft.embeddings),
                              strict=True):
                feats[key].append(t.to("cpu", torch.float32))
        dims = {"img_act": vlm.adapter.image.weight.shape[1], "txt_act": vlm.adapter.text.weight.shape[1],
                "img_emb": vlm.adapter.image.dim_out, "txt_emb": vlm.adapter.text.dim_out}
        out = {k: torch.cat(v) if v else torch.zeros(0, dims[k]) for k, v in feats.items()}
        meta = {"items": len(items), "skipped": {str(k): v for k, v in skipped.items()}, "truncated": truncated}
        return out, meta


class FeatureCache:
    """The shards of one fit (model, data layout) in ``<root>/features``, for this process rank.

    Args:
        root: the cache folder.  settings: what the cache was made for (model fingerprint, class batch
            and shard sizes, source description); a cache made for other settings is refused.
        per_batch: shards per class batch.  rank, world: this process and the number of processes;
            class batch ``j`` belongs to rank ``j mod world``.
    """

    def __init__(self, root: Path, settings: dict[str, Any], per_batch: int, rank: int, world: int):
        self.root, self.settings = root, settings
        self.shard_size, self.per_batch, self.rank, self.world = settings["shard_size"], per_batch, rank, world
        self.checksums: dict[int, str] = {}  # shard index -> checksum, for this rank's shards
        (root / "features").mkdir(parents=True, exist_ok=True)
        self._check_manifest()

    def _check_manifest(self) -> None:
        manifest = self.root / "cache.json"
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError) as err:
                raise FitError(f"{manifest} is unreadable ({err}); delete it or use a new cache folder") from err
            if not isinstance(old, dict) or old.get("model") != self.settings["model"]:
                raise FitError(f"the feature cache in {self.root} was made for another model; use a new cache folder")
            if old != self.settings:
                raise FitError(f"the cache in {self.root} was made with other settings {old}; use a new cache folder")
        elif self.rank == 0:
            tmp = manifest.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.settings, indent=2))
            tmp.replace(manifest)

    def shard_path(self, index: int) -> Path:
        return self.root / "features" / f"shard_{index:06d}.safetensors"

    def owns(self, shard: int) -> bool:
        return (shard // self.per_batch) % self.world == self.rank

    def fill(self, source: PairSource, encoder: ShardEncoder, report: FitReport, progress: bool) -> int:
        """Make sure this rank's shards exist and match the data; return the number of items."""
        pending: list[RawPair] = []
        shard = num_items = 0
        with tqdm(desc=f"features (rank {self.rank})", unit="pair", disable=not progress) as bar:
            for item in source:
                index = num_items // self.shard_size
                num_items += 1
                if index != shard:
                    self._finish(shard, pending, encoder, report)
                    pending, shard = [], index
                if self.owns(index):
                    pending.append(item)
                bar.update(1)
        if num_items:
            self._finish(shard, pending, encoder, report)
        return num_items

    def _finish(self, index: int, items: list[RawPair], encoder: ShardEncoder, report: FitReport) -> None:
        if not self.owns(index):
            return
        path, digest = self.shard_path(index), items_digest(items)
        if path.is_file():
            problem = self._stale(index, digest)
            if problem is None:
                report.shards_reused += 1
                return
            log.warning("recomputing a feature shard: %s", problem)
            report.recomputed.append(problem)
        tensors, meta = encoder.encode(items)
        self.checksums[index] = save_checked(tensors, {**meta, "data": digest}, path)
        report.shards_computed += 1

    def _stale(self, index: int, digest: str) -> str | None:
        """Why shard ``index`` cannot be reused for items with ``digest``, naming it (None: it can)."""
        path = self.shard_path(index)
        try:
            _, meta, checksum = load_checked(path)
        except CorruptFileError as err:
            return str(err)
        if meta.get("data") != digest:
            return f"{path} was made from other data (captions, images or their order changed)"
        self.checksums[index] = checksum
        return None

    def load(self, shards: range) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """The concatenated features [n, ·] and the metadata of the given shards.

        The features stay float32, as cached: the KFAC sums take them as they are and lose nothing
        (``Σ ããᵀ`` is a float64 GEMM, exact for float32 products; the output factor computes in float64
        whatever its inputs' dtype, docs/numerics.md), and a class batch takes half the memory.
        """
        parts, metas = [], []
        for s in shards:
            tensors, meta, checksum = load_checked(self.shard_path(s))
            if checksum != self.checksums.get(s):
                raise FitError(f"{self.shard_path(s)} changed while the fit ran (another process writes here?)")
            parts.append(tensors)
            metas.append(meta)
        return {k: torch.cat([p[k] for p in parts]) for k in FEATURE_KEYS}, metas
