"""Image-text pair sources for fitting a posterior, read lazily and never decoded here.

* a captions file (``.csv``/``.tsv`` with a header, or ``.jsonl``) whose rows name an image path (column
  ``path``, ``image``, ``file`` or ``filename``, relative to the file's folder) and a caption (``caption``
  or ``text``); a folder holding ``captions.csv``/``captions.jsonl`` works too;
* WebDataset tar shards (a ``.tar`` path, a glob, or a brace pattern such as ``shards-{000..009}.tar``)
  with an image entry (jpg/jpeg/png/webp) and a caption entry (txt, or json with a ``caption``/``text``
  field) per sample, read in order with the ``webdataset`` library;
* a Hugging Face ``datasets.Dataset`` (optional extra ``[datasets]``), e.g. from local files, or the spec
  ``hf-imagefolder:DIR`` (``load_dataset("imagefolder", data_dir=DIR)`` with a ``metadata.csv``/``.jsonl``
  giving each ``file_name`` a ``text``);
* any iterable of ``(image, caption)`` tuples (PIL images, paths or bytes).

Each item is a :class:`RawPair` with the undecoded image and caption and, where the row itself is
unusable, the reason (a :class:`Skip`); the fitting loop decodes, validates and counts skips.
:func:`items_digest` identifies a run of items (for the fit's feature cache).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_COLUMNS = ("caption", "text")
PATH_COLUMNS = ("path", "image", "file", "filename")


class Skip(str, Enum):
    """Every reason a fit leaves an item out (the keys of ``FitReport.skipped``), defined once.

    A ``str`` enum that prints as its value (``enum.StrEnum`` behaviour, which needs Python 3.11).
    """

    def __str__(self) -> str:
        return self.value

    BAD_ROW = "bad_row"  # a row that names no image or is not valid JSON / CSV
    MISSING_FILE = "missing_file"  # the row's image file does not exist
    MISSING_IMAGE = "missing_image"  # a sample without an image entry
    MISSING_CAPTION = "missing_caption"  # a sample without a caption entry
    BAD_IMAGE = "bad_image"  # undecodable, too large (decompression bomb) or not an image
    NOT_AN_IMAGE = "not_an_image"  # a file in an image folder whose suffix is no image format's
    BAD_CAPTION_ENCODING = "bad_caption_encoding"  # caption bytes that are not UTF-8
    EMPTY_CAPTION = "empty_caption"  # blank caption
    CLASS_BATCH_TOO_SMALL = "class_batch_too_small"  # fewer than 2 usable pairs in a class batch
    PARTIAL_CLASS_BATCH = "partial_class_batch"  # the last class batch, short of num_candidates items


@dataclass
class RawPair:
    """One undecoded pair: ``image`` is a path, bytes or a PIL image; ``caption`` a str or raw bytes."""

    key: str
    image: Any
    caption: str | bytes | None
    problem: Skip | None = None  # a reason to skip without decoding


def items_digest(items: Sequence[RawPair]) -> str:
    """A hash of a run of items, in order: keys, captions, problems and each image's identity.

    Image identity: a file's resolved path, size and modification time (ns), not its content (cheap
    for large data; a file rewritten with the same size and mtime goes unnoticed); bytes and PIL images
    by content.
    """
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        for part in (_text_bytes(item.key), _text_bytes(item.caption), str(item.problem).encode(),
                     _image_identity(item.image)):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def _text_bytes(text: Any) -> bytes:
    if isinstance(text, bytes | bytearray):
        return bytes(text)
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else repr(text).encode()


def _image_identity(image: Any) -> bytes:
    if isinstance(image, bytes | bytearray):
        return b"bytes:" + hashlib.blake2b(image, digest_size=16).digest()
    if isinstance(image, Image.Image):
        return f"pil:{image.mode}:{image.size}:".encode() + hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    if isinstance(image, str | Path):
        try:
            st = Path(image).stat()
            return f"file:{Path(image).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
        except OSError:
            return f"file:{image}:absent".encode()
    return f"{type(image).__name__}:{image!r}".encode()


class PairSource(ABC):
    """An ordered, re-iterable sequence of :class:`RawPair`; ``description`` goes into provenance."""

    description: str = "pairs"

    @abstractmethod
    def __iter__(self) -> Iterator[RawPair]:
        """The pairs, in a fixed order (resuming and sharding rely on it)."""


class CaptionFile(PairSource):
    """Rows of a CSV/TSV (with header) or JSONL file naming an image path and a caption."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("captions.csv", "captions.jsonl", "captions.tsv") if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"{path} has no captions.csv / captions.jsonl / captions.tsv")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        self.path = path
        self.description = f"captions file {path}"

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        with open(self.path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8", errors="surrogateescape")  # bad bytes survive to be counted per row
        if self.path.suffix.lower() == ".jsonl":
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield i, row if isinstance(row, dict) else None
        else:
            delim = "\t" if self.path.suffix.lower() == ".tsv" else ","
            yield from enumerate(csv.DictReader(io.StringIO(text), delimiter=delim))

    def __iter__(self) -> Iterator[RawPair]:
        base = self.path.parent
        for i, row in self._rows():
            if row is None:
                yield RawPair(f"row{i}", None, None, Skip.BAD_ROW)
                continue
            rel = next((row[k] for k in PATH_COLUMNS if row.get(k)), None)
            caption = next((row[k] for k in CAPTION_COLUMNS if k in row), None)
            if rel is None:
                yield RawPair(f"row{i}", None, caption, Skip.BAD_ROW)
                continue
            img = (base / str(rel)).resolve()
            if isinstance(caption, str):
                caption = caption.encode("utf-8", errors="surrogateescape")  # decoded (strictly) later
            yield RawPair(str(rel), img, caption, None if img.is_file() else Skip.MISSING_FILE)


class WebDatasetShards(PairSource):
    """WebDataset tar shards, samples in shard order (no shuffling)."""

    def __init__(self, urls: str | list[str]):
        self.urls = urls
        self.description = f"webdataset {urls}"

    def _expanded(self) -> list[str]:
        import braceexpand

        pats = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        out: list[str] = []
        for pat in pats:
            for p in braceexpand.braceexpand(pat):
                out.extend(sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p])
        missing = [p for p in out if not Path(p).is_file()]
        if not out or missing:
            raise FileNotFoundError(f"no such tar shard(s): {missing or pats}")
        return out

    def __iter__(self) -> Iterator[RawPair]:
        try:
            import webdataset as wds
        except ImportError as err:
            raise ImportError('reading WebDataset shards needs webdataset: pip install "bayesvlm-explain[shards]"'
                              ) from err

        dataset = wds.WebDataset(self._expanded(), shardshuffle=False, empty_check=False)
        for sample in dataset:
            key = str(sample.get("__key__", ""))
            image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            caption: Any = sample.get("txt")
            if caption is None and "json" in sample:
                try:
                    meta = json.loads(sample["json"])
                    caption = next((meta[k] for k in CAPTION_COLUMNS if k in meta), None)
                except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
                    caption = None
            problem = Skip.MISSING_IMAGE if image is None else (Skip.MISSING_CAPTION if caption is None else None)
            yield RawPair(key, image, caption, problem)


class HFDatasetPairs(PairSource):
    """Rows of a Hugging Face ``datasets.Dataset``; images are decoded by us, so bad ones are counted."""

    def __init__(self, dataset: Any, image_column: str = "image", caption_column: str = "text",
                 description: str | None = None):
        from datasets import Image as ImageFeature

        for col in (image_column, caption_column):
            if col not in dataset.column_names:
                raise ValueError(f"the dataset has no column {col!r} (columns: {dataset.column_names})")
        if isinstance(dataset.features[image_column], ImageFeature):
            dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column
        self.description = description or f"datasets.Dataset with {len(dataset)} rows"

    def __iter__(self) -> Iterator[RawPair]:
        for i, row in enumerate(self.dataset):
            image = row[self.image_column]
            if isinstance(image, dict):  # undecoded Image feature: {"bytes": ..., "path": ...}
                image = image.get("bytes") or image.get("path")
            yield RawPair(str(i), image, row[self.caption_column], None if image is not None else Skip.MISSING_IMAGE)

    @classmethod
    def from_imagefolder(cls, directory: str | Path) -> HFDatasetPairs:
        from datasets import load_dataset

        dataset = load_dataset("imagefolder", data_dir=str(directory), split="train")
        return cls(dataset, description=f"hf imagefolder {directory}")


class InMemoryPairs(PairSource):
    """An in-memory list of ``(image, caption)`` tuples."""

    def __init__(self, pairs: Iterable[tuple[Any, str]]):
        self.pairs = list(pairs)
        self.description = f"{len(self.pairs)} in-memory pairs"

    def __iter__(self) -> Iterator[RawPair]:
        for i, item in enumerate(self.pairs):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                yield RawPair(str(i), None, None, Skip.BAD_ROW)
            else:
                yield RawPair(str(i), item[0], item[1])


def open_pairs(source: Any) -> PairSource:
    """A :class:`PairSource` from a path / pattern (captions file, folder, tar shards) or an iterable."""
    if isinstance(source, PairSource):
        return source
    if type(source).__module__.startswith("datasets") and hasattr(source, "column_names"):
        return HFDatasetPairs(source)
    if isinstance(source, str) and source.startswith("hf-imagefolder:"):
        return HFDatasetPairs.from_imagefolder(source.split(":", 1)[1])
    if isinstance(source, str | Path):
        s = str(source)
        if s.endswith(".tar") or ".tar" in s and any(ch in s for ch in "*?[{"):
            return WebDatasetShards(s)
        return CaptionFile(source)
    if isinstance(source, Iterable):
        return InMemoryPairs(source)
    raise TypeError(f"cannot read image-text pairs from a {type(source).__name__}")
