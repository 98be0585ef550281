"""The emoji artwork pipeline behind the bundled model (build time only; needs ``npm`` and ``resvg-py``).

* :mod:`.styles`: the artwork styles, their licences and the train/shift split;
* :mod:`.sources`: ``npm ci`` of the pinned packages (``npm/``) into the cache;
* :mod:`.concepts`: emoji concepts from ``emojibase-data`` and their captions;
* :mod:`.artwork`: rendering iconify SVG bodies with resvg;
* :mod:`.renders`: the rendered-image cache and its records;
* :mod:`.label_space`: choosing and writing the committed zero-shot label space;
* :mod:`.splits`: the disjoint train / calibration / test renders, fixed before training.

Captions: ``emojibase-data`` (MIT) with CLDR annotations (Unicode-3.0). Nothing rendered is committed.
"""

from .artwork import (
    MissingArtwork,
    available_keys,
    crop_to_alpha_bbox,
    flatten_on_white,
    icon_name,
    name_claims,
    name_collisions,
    render,
    svg_document,
    to_line_art,
)
from .concepts import (
    Concept,
    build_caption,
    caption_variants,
    load_concepts,
    normalise_hexcode,
    sample_caption,
    slugify,
)
from .label_space import select_benchmark_concepts, write_label_space
from .renders import DatasetBuild, EmojiRecord, build_dataset
from .sources import SOURCES_DIR, default_cache_dir, fetch_sources
from .splits import SPLIT_NAMES, SplitError, held_out_renders, render_id, split_records
from .styles import EMOJI_STYLES, SHIFT_STYLES, TRAIN_STYLES, StyleInfo

__all__ = [
    "EMOJI_STYLES",
    "SHIFT_STYLES",
    "SOURCES_DIR",
    "SPLIT_NAMES",
    "TRAIN_STYLES",
    "Concept",
    "DatasetBuild",
    "EmojiRecord",
    "MissingArtwork",
    "SplitError",
    "StyleInfo",
    "available_keys",
    "build_caption",
    "build_dataset",
    "caption_variants",
    "crop_to_alpha_bbox",
    "default_cache_dir",
    "fetch_sources",
    "flatten_on_white",
    "held_out_renders",
    "icon_name",
    "load_concepts",
    "name_claims",
    "name_collisions",
    "normalise_hexcode",
    "render",
    "render_id",
    "sample_caption",
    "select_benchmark_concepts",
    "slugify",
    "split_records",
    "svg_document",
    "to_line_art",
    "write_label_space",
]
