"""The rendered-image cache: every concept in every style as ``<cache>/render/<size>/<style>/<key>.png``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artwork import icon_name, render
from .concepts import Concept, build_caption, load_concepts
from .sources import fetch_sources, resolve_cache
from .styles import EMOJI_STYLES, TRAIN_STYLES

__all__ = ["DatasetBuild", "EmojiRecord", "build_dataset"]


@dataclass(frozen=True)
class EmojiRecord:
    """One rendered image: ``path`` (PNG in the cache), canonical ``caption``, ``label``, ``style``, ``key``."""

    path: str
    caption: str
    label: str
    style: str
    key: str


@dataclass
class DatasetBuild:
    """Result of :func:`build_dataset`: the records and, per style, how many concepts it lacked."""

    records: list[EmojiRecord]
    skipped: dict[str, int] = field(default_factory=dict)
    rendered: int = 0
    manifest: Path | None = None


def build_dataset(
    styles: Sequence[str] = TRAIN_STYLES,
    size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    concepts: Sequence[Concept] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    write_manifest: bool = True,
) -> DatasetBuild:
    """Render every concept in every style into ``<cache>/render/<size>/<style>/<key>.png``.

    Existing PNGs are reused unless ``overwrite``. Concepts a style lacks are skipped and counted.
    With ``write_manifest``, a JSON manifest of the records goes to ``<cache>/render/<size>/manifest-<styles>.json``.
    """
    root = resolve_cache(cache_dir)
    concepts = list(concepts) if concepts is not None else load_concepts(cache_dir)
    modules = fetch_sources(cache_dir)
    out_root = root / "render" / str(size)
    records: list[EmojiRecord] = []
    skipped: dict[str, int] = {}
    rendered = 0
    jobs = [(s, c) for s in styles for c in concepts]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"render {size}px", unit="img", mininterval=5.0)
    for style, concept in jobs:
        if icon_name(concept, EMOJI_STYLES[style], modules) is None:
            skipped[style] = skipped.get(style, 0) + 1
            continue
        path = out_root / style / f"{concept.key}.png"
        if overwrite or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            render(concept, style, size, cache_dir).save(path)
            rendered += 1
        records.append(EmojiRecord(str(path), build_caption(concept), concept.label, style, concept.key))
    manifest = None
    if write_manifest:
        manifest = out_root / f"manifest-{'+'.join(styles)}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(
            json.dumps({"size": size, "skipped": skipped, "records": [asdict(r) for r in records]}, indent=0)
        )
    return DatasetBuild(records=records, skipped=skipped, rendered=rendered, manifest=manifest)
