"""Rendering emoji artwork from iconify JSON sets with ``resvg-py``.

An icon body is wrapped into an SVG of ``max(2 * size, 128)`` px, rendered, cropped to the alpha
bounding box (OpenMoji fills only about 60 % of its box), padded to a square with a small margin,
resized to ``size`` px (Lanczos) and flattened onto white: RGB ``size x size`` images.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .concepts import Concept, normalise_hexcode, slugify
from .sources import fetch_sources
from .styles import EMOJI_STYLES, StyleInfo

__all__ = [
    "MissingArtwork",
    "available_keys",
    "crop_to_alpha_bbox",
    "flatten_on_white",
    "icon_name",
    "name_claims",
    "name_collisions",
    "render",
    "svg_document",
    "to_line_art",
]


class MissingArtwork(KeyError):
    """Raised by :func:`render` when a style has no artwork for a concept."""


@dataclass
class _IconSet:
    """An iconify JSON set: icon bodies, aliases, default box and the codepoint -> name map."""

    icons: dict[str, dict]
    aliases: dict[str, dict]
    width: float
    height: float
    chars: dict[str, str]

    def names(self) -> set[str]:
        return set(self.icons) | set(self.aliases)

    def resolve(self, name: str) -> tuple[str, float, float, float, float]:
        """Icon name -> (SVG body, left, top, width, height) in the icon's own units."""
        transforms: list[dict] = []
        seen = 0
        while name in self.aliases and name not in self.icons:
            alias = self.aliases[name]
            transforms.append(alias)
            name = alias["parent"]
            seen += 1
            if seen > 8:
                raise KeyError(f"alias loop at {name}")
        icon = self.icons[name]
        body = icon["body"]
        left = float(icon.get("left", 0.0))
        top = float(icon.get("top", 0.0))
        width = float(icon.get("width", self.width))
        height = float(icon.get("height", self.height))
        for t in reversed(transforms):
            tf = []
            if t.get("hFlip"):
                tf.append(f"translate({2 * left + width} 0) scale(-1 1)")
            if t.get("vFlip"):
                tf.append(f"translate(0 {2 * top + height}) scale(1 -1)")
            if t.get("rotate"):
                cx, cy = left + width / 2, top + height / 2
                tf.append(f"rotate({90 * int(t['rotate'])} {cx} {cy})")
            if tf:
                body = f'<g transform="{" ".join(tf)}">{body}</g>'
        return body, left, top, width, height


@functools.lru_cache(maxsize=16)
def _load_icon_set(modules: str, package: str) -> _IconSet:
    """The set of ``package`` under ``modules`` (cached: an installed tree is fixed by its lockfile)."""
    pkg = Path(modules) / package
    data = json.loads((pkg / "icons.json").read_text(encoding="utf-8"))
    chars_path = pkg / "chars.json"
    raw_chars = json.loads(chars_path.read_text(encoding="utf-8")) if chars_path.is_file() else {}
    chars = {normalise_hexcode(k): v for k, v in raw_chars.items()}
    return _IconSet(
        icons=data["icons"],
        aliases=data.get("aliases", {}),
        width=float(data.get("width", 16)),
        height=float(data.get("height", 16)),
        chars=chars,
    )


def _codepoint_names(key: str, modules: Path) -> list[str]:
    """The names the codepoint-keyed sets give to ``key`` (in :data:`EMOJI_STYLES` order, repeats kept)."""
    names = []
    for other in EMOJI_STYLES.values():
        if other.keyed_by == "codepoint":
            n = _load_icon_set(str(modules), other.package).chars.get(key)
            if n:
                names.append(n)
    return names


def name_claims(concepts: Iterable[Concept], modules: Path) -> dict[str, frozenset[str]]:
    """Icon name -> keys of the concepts that name could mean: its CLDR slug or a codepoint-keyed set's name.

    A name claimed by more than one concept (``"keycap"`` for ``keycap: *`` and ``keycap: #``; a set's
    ``"turkey"`` for the flag of Turkey and the bird) cannot be matched by name without guessing.
    """
    claims: dict[str, set[str]] = {}
    for c in concepts:
        for n in [*_codepoint_names(c.key, modules), slugify(c.label)]:
            claims.setdefault(n, set()).add(c.key)
    return {n: frozenset(keys) for n, keys in claims.items()}


@functools.lru_cache(maxsize=4)
def _default_claims(modules: str) -> dict[str, frozenset[str]]:
    """:func:`name_claims` of every emojibase concept installed under ``modules`` (cached per tree)."""
    from .concepts import load_concepts

    return name_claims(load_concepts(Path(modules).parent.parent), Path(modules))


def icon_name(concept: Concept, style: StyleInfo, modules: Path,
              claims: dict[str, frozenset[str]] | None = None) -> str | None:
    """The icon name of ``concept`` in ``style`` (sets installed under ``modules``), or None when lacking.

    Name-keyed sets are matched by the names the codepoint-keyed sets use for this codepoint, then by the
    CLDR slug; a name that ``claims`` (default: :func:`name_claims` of all emojibase concepts) gives to
    another concept too is never used, so an ambiguous name leaves the concept without artwork in that
    set rather than drawn as something else.
    """
    iset = _load_icon_set(str(modules), style.package)
    if style.keyed_by == "codepoint":
        return iset.chars.get(concept.key)
    claims = _default_claims(str(modules)) if claims is None else claims
    names = iset.names()
    for cand in [*_codepoint_names(concept.key, modules), slugify(concept.label)]:
        if cand in names and claims.get(cand, frozenset({concept.key})) == {concept.key}:
            return cand
    return None


def name_collisions(concepts: Iterable[Concept], style: StyleInfo, modules: Path,
                    claims: dict[str, frozenset[str]] | None = None) -> dict[str, list[str]]:
    """Icons of ``style`` that :func:`icon_name` gives to more than one concept: ``{icon: [keys]}``.

    Empty for a sound mapping (codepoint-keyed sets are one-to-one by construction); the build checks it.
    """
    used: dict[str, list[str]] = {}
    for c in concepts:
        n = icon_name(c, style, modules, claims)
        if n is not None:
            used.setdefault(n, []).append(c.key)
    return {n: keys for n, keys in used.items() if len(keys) > 1}


def available_keys(
    style: str, concepts: Iterable[Concept], cache_dir: str | os.PathLike[str] | None = None
) -> set[str]:
    """Keys of the ``concepts`` for which ``style`` has artwork."""
    modules = fetch_sources(cache_dir)
    info = EMOJI_STYLES[style]
    return {c.key for c in concepts if icon_name(c, info, modules) is not None}


_BLACK = frozenset({"#000", "#000000", "black", "none", "currentcolor", "transparent"})
_PAINT_ATTR = re.compile(r'\b(fill|stroke)="([^"]*)"')
_PAINT_STYLE = re.compile(r"\b(fill|stroke)\s*:\s*([^;\"]+)")


def to_line_art(body: str) -> str:
    """Keep only the black paint of an SVG body: every other fill/stroke colour (or gradient) -> ``none``.

    Elements without a ``fill`` keep SVG's default black, which is how OpenMoji draws its line layer.
    """

    def keep(value: str) -> bool:
        return value.strip().lower() in _BLACK

    body = _PAINT_ATTR.sub(lambda m: m.group(0) if keep(m.group(2)) else f'{m.group(1)}="none"', body)
    return _PAINT_STYLE.sub(lambda m: m.group(0) if keep(m.group(2)) else f"{m.group(1)}:none", body)


def svg_document(body: str, box: tuple[float, float, float, float], px: int) -> str:
    """Wrap an iconify body into a standalone ``px x px`` SVG; ``box`` is (left, top, width, height)."""
    left, top, width, height = box
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}" width="{px}" height="{px}" color="#000">{body}</svg>'
    )


def crop_to_alpha_bbox(img: Image.Image, threshold: int = 8, margin: float = 0.06) -> Image.Image:
    """Crop an RGBA image to the bounding box of alpha > ``threshold`` and pad it to a centred square.

    ``margin`` is the transparent border on each side as a fraction of the output side. A fully
    transparent image is returned unchanged (as RGBA).
    """
    img = img.convert("RGBA")
    alpha = img.getchannel("A").point(lambda a: 255 if a > threshold else 0)
    bbox = alpha.getbbox()
    if bbox is None:
        return img
    content = img.crop(bbox)
    w, h = content.size
    side = max(1, round(max(w, h) / (1.0 - 2.0 * margin)))
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    canvas.paste(content, ((side - w) // 2, (side - h) // 2))
    return canvas


def flatten_on_white(img: Image.Image) -> Image.Image:
    """Alpha-composite an RGBA image onto white; returns RGB."""
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img).convert("RGB")


def render(
    concept: Concept,
    style: str,
    size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Image.Image:
    """Render ``concept`` in ``style`` as an RGB ``size x size`` image on white (not cached).

    Raises :class:`MissingArtwork` when the style lacks the concept.
    """
    import resvg_py

    modules = fetch_sources(cache_dir)
    info = EMOJI_STYLES[style]
    name = icon_name(concept, info, modules)
    if name is None:
        raise MissingArtwork(f"{style} has no artwork for {concept.key} ({concept.label})")
    body, *box = _load_icon_set(str(modules), info.package).resolve(name)
    if info.line_art:
        body = to_line_art(body)
    px = max(2 * size, 128)
    png = resvg_py.svg_to_bytes(svg_string=svg_document(body, tuple(box), px))
    img = Image.open(io.BytesIO(bytes(png)))
    img = crop_to_alpha_bbox(img)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    return flatten_on_white(img)
