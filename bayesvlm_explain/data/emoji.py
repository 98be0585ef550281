"""Emoji image-text data for the project's bundled offline CLIP-style model.

The artwork comes from pinned npm packages (``emoji_sources/package.json`` + ``package-lock.json``),
fetched with ``npm ci`` into a cache directory at build time; nothing rendered is ever committed.
Captions come from ``emojibase-data`` (CLDR short name + CLDR keywords, emojibase group/subgroup).

Styles and licences (a careful reading, not legal advice; see ``shared/bundled-model-data.md``):

* Training styles (permissive; the shipped weights are derived from these only):

  - ``noto``         Google Noto Emoji, Apache-2.0 (``@iconify-json/noto``)
  - ``twemoji``      Twemoji, CC-BY-4.0, "Twemoji, (c) Twitter/X and contributors (jdecked fork), CC-BY 4.0"
                     (``@iconify-json/twemoji``)
  - ``fluent-flat``  Microsoft Fluent Emoji Flat, MIT (``@iconify-json/fluent-emoji-flat``)

* Shift styles, evaluation only (never trained on, never committed, rendered at evaluation time):

  - ``noto-v1``         the older "blob era" Noto, Apache-2.0 (matched by name, not codepoint)
  - ``emojione``        EmojiOne 2, CC-BY-4.0 per iconify but CC-BY-SA-4.0 per Debian: treated as
                        share-alike, evaluation only (matched by name)
  - ``openmoji``        OpenMoji colour, CC-BY-SA-4.0: evaluation only
  - ``openmoji-black``  OpenMoji black line art, derived here from the colour SVG by painting every
                        non-black fill/stroke ``none`` (OpenMoji's own black set is exactly its line layer)
  - ``fluent-hc``       Microsoft Fluent Emoji High Contrast (monochrome), MIT

* Captions: ``emojibase-data`` (MIT) with CLDR annotations (Unicode-3.0).
* Apple and Facebook artwork are excluded entirely (not licensed for this use), even at build time.

Rendering: iconify SVG bodies are rendered with ``resvg-py`` at ``max(2 * size, 128)`` px, cropped to the
alpha bounding box (OpenMoji fills only about 60 % of its box), padded to a square with a small margin,
resized to ``size`` px (Lanczos) and flattened onto white, giving RGB ``size x size`` images.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

__all__ = [
    "BENCHMARK_FILE",
    "EMOJI_STYLES",
    "PROMPT_TEMPLATE",
    "SHIFT_STYLES",
    "SOURCES_DIR",
    "TRAIN_STYLES",
    "BenchmarkClasses",
    "Concept",
    "DatasetBuild",
    "EmojiRecord",
    "MissingArtwork",
    "StyleInfo",
    "available_keys",
    "benchmark_classes",
    "build_caption",
    "build_dataset",
    "caption_variants",
    "crop_to_alpha_bbox",
    "default_cache_dir",
    "fetch_sources",
    "flatten_on_white",
    "load_concepts",
    "normalise_hexcode",
    "render",
    "sample_caption",
    "select_benchmark_concepts",
    "to_line_art",
    "write_benchmark_file",
]

SOURCES_DIR: Path = Path(__file__).resolve().parent / "emoji_sources"
"""Directory holding the pinned ``package.json`` and ``package-lock.json``."""

BENCHMARK_FILE: Path = Path(__file__).resolve().parent / "emoji_benchmark.json"
"""Committed label space of the zero-shot benchmark (written by ``write_benchmark_file``)."""

PROMPT_TEMPLATE: str = "an emoji of {label}"
"""Zero-shot prompt template; also the most frequent training caption."""


@dataclass(frozen=True)
class StyleInfo:
    """One artwork style.

    Attributes:
        name: Short style id used in paths and records.
        package: npm package holding the iconify JSON set.
        licence: SPDX id of the artwork licence.
        split: ``"train"`` (permissive, used for the shipped weights) or ``"shift"`` (evaluation only).
        keyed_by: ``"codepoint"`` (the set has ``chars.json``) or ``"name"`` (matched by CLDR-derived names).
        line_art: Render only the black line layer (non-black paint removed).
    """

    name: str
    package: str
    licence: str
    split: Literal["train", "shift"]
    keyed_by: Literal["codepoint", "name"]
    line_art: bool = False


EMOJI_STYLES: dict[str, StyleInfo] = {
    s.name: s
    for s in (
        StyleInfo("noto", "@iconify-json/noto", "Apache-2.0", "train", "codepoint"),
        StyleInfo("twemoji", "@iconify-json/twemoji", "CC-BY-4.0", "train", "codepoint"),
        StyleInfo("fluent-flat", "@iconify-json/fluent-emoji-flat", "MIT", "train", "codepoint"),
        StyleInfo("noto-v1", "@iconify-json/noto-v1", "Apache-2.0", "shift", "name"),
        StyleInfo("emojione", "@iconify-json/emojione", "CC-BY-4.0 (treated as CC-BY-SA-4.0)", "shift", "name"),
        StyleInfo("openmoji", "@iconify-json/openmoji", "CC-BY-SA-4.0", "shift", "codepoint"),
        StyleInfo("openmoji-black", "@iconify-json/openmoji", "CC-BY-SA-4.0", "shift", "codepoint", True),
        StyleInfo("fluent-hc", "@iconify-json/fluent-emoji-high-contrast", "MIT", "shift", "codepoint"),
    )
}
"""All styles, training styles first, shift styles ordered roughly from mild to severe."""

TRAIN_STYLES: tuple[str, ...] = tuple(n for n, s in EMOJI_STYLES.items() if s.split == "train")
SHIFT_STYLES: tuple[str, ...] = tuple(n for n, s in EMOJI_STYLES.items() if s.split == "shift")

_EXCLUDED_GROUPS = frozenset({"component"})
_STOPWORDS = frozenset({"a", "an", "and", "the", "of", "with", "in", "on", "for", "to", "&"})


class MissingArtwork(KeyError):
    """Raised by :func:`render` when a style has no artwork for a concept."""


# --------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """Cache root: ``$BAYESVLM_CACHE/emoji`` if set, else ``~/.cache/bayesvlm_explain/emoji``."""
    root = os.environ.get("BAYESVLM_CACHE")
    if root:
        return Path(root).expanduser() / "emoji"
    return Path.home() / ".cache" / "bayesvlm_explain" / "emoji"


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((SOURCES_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def fetch_sources(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Install the pinned npm packages into ``<cache>/npm`` with ``npm ci``; return its ``node_modules``.

    Idempotent: skipped when the installed tree was made from the same lockfile (a digest stamp).
    Needs ``npm`` and access to the npm registry (about 17 MB of tarballs, a few seconds).
    """
    npm_dir = _resolve_cache(cache_dir) / "npm"
    modules = npm_dir / "node_modules"
    stamp = npm_dir / ".lock-digest"
    digest = _lock_digest()
    if not force and modules.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to fetch the emoji artwork (apt-get install npm)")
    npm_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SOURCES_DIR / name, npm_dir / name)
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=npm_dir,
        check=True,
    )
    stamp.write_text(digest + "\n")
    _load_icon_set.cache_clear()
    return modules


def _modules(cache_dir: str | os.PathLike[str] | None) -> Path:
    return fetch_sources(cache_dir)


# ------------------------------------------------------------------------------------------ concepts


@dataclass(frozen=True)
class Concept:
    """One base emoji (no skin-tone variant) with its CLDR caption material.

    Attributes:
        key: Normalised codepoint key, lower-case hex joined by ``-`` without ``fe0f`` (e.g. ``"1f436"``).
        emoji: The emoji character(s).
        label: CLDR short name, e.g. ``"dog face"``.
        tags: CLDR keywords, e.g. ``("animal", "dog", "pet")``.
        group: emojibase group message, e.g. ``"animals & nature"``.
        subgroup: emojibase subgroup key, e.g. ``"animal-mammal"``.
        order: emojibase sort order.
    """

    key: str
    emoji: str
    label: str
    tags: tuple[str, ...]
    group: str
    subgroup: str
    order: int


def normalise_hexcode(hexcode: str) -> str:
    """``"2764-FE0F"`` -> ``"2764"``: lower-case, ``-``-joined, variation selector 16 dropped."""
    parts = [p for p in re.split(r"[-_\s]+", hexcode.strip().lower()) if p and p != "fe0f"]
    return "-".join(parts)


def slugify(text: str) -> str:
    """``"one o’clock"`` -> ``"one-o-clock"`` (iconify-style icon name)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_concepts(cache_dir: str | os.PathLike[str] | None = None, locale: str = "en") -> list[Concept]:
    """Base emoji concepts from ``emojibase-data`` (components and regional indicators excluded).

    Returns concepts in emojibase order. Fetches the sources if needed.
    """
    base = _modules(cache_dir) / "emojibase-data"
    data = json.loads((base / locale / "data.json").read_text(encoding="utf-8"))
    messages = json.loads((base / locale / "messages.json").read_text(encoding="utf-8"))
    groups = {g["order"]: g["message"] for g in messages["groups"]}
    group_keys = {g["order"]: g["key"] for g in messages["groups"]}
    subgroups = {s["order"]: s["key"] for s in messages["subgroups"]}
    out: list[Concept] = []
    for entry in data:
        g = entry.get("group")
        if g is None or group_keys.get(g) in _EXCLUDED_GROUPS:
            continue
        out.append(
            Concept(
                key=normalise_hexcode(entry["hexcode"]),
                emoji=entry["emoji"],
                label=entry["label"],
                tags=tuple(entry.get("tags") or ()),
                group=groups[g],
                subgroup=subgroups.get(entry.get("subgroup", -1), "other"),
                order=int(entry.get("order", 0)),
            )
        )
    out.sort(key=lambda c: c.order)
    return out


# ------------------------------------------------------------------------------------------ captions


def build_caption(concept: Concept, template: str = PROMPT_TEMPLATE) -> str:
    """Fill ``template`` (fields ``label``, ``tags``, ``group``, ``subgroup``) for ``concept``."""
    return template.format(
        label=concept.label,
        tags=", ".join(concept.tags),
        group=concept.group,
        subgroup=concept.subgroup.replace("-", " "),
    )


def caption_variants(concept: Concept) -> list[str]:
    """Deterministic caption variants: prompt, bare label, label + all tags, label + subgroup."""
    return [
        build_caption(concept),
        concept.label,
        build_caption(concept, "{label}, {tags}") if concept.tags else concept.label,
        build_caption(concept, "an emoji of {label}, {subgroup}"),
    ]


def sample_caption(concept: Concept, rng: random.Random, p_prompt: float = 0.5, max_tags: int = 3) -> str:
    """Random training caption.

    With probability ``p_prompt`` the zero-shot prompt ``"an emoji of {label}"``; otherwise the label
    followed by up to ``max_tags`` shuffled CLDR tags, optionally prefixed by "an emoji of" or followed
    by the subgroup words.
    """
    if rng.random() < p_prompt:
        return build_caption(concept)
    tags = [t for t in concept.tags if t.lower() != concept.label.lower()]
    rng.shuffle(tags)
    parts = [concept.label, *tags[: rng.randint(0, max_tags)]]
    if rng.random() < 0.25:
        parts.append(concept.subgroup.replace("-", " "))
    text = ", ".join(parts)
    return f"an emoji of {text}" if rng.random() < 0.3 else text


# ------------------------------------------------------------------------------------------- artwork


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


def _icon_name(concept: Concept, style: StyleInfo, modules: Path) -> str | None:
    """The icon name of ``concept`` in ``style``, or None when the style lacks it."""
    iset = _load_icon_set(str(modules), style.package)
    if style.keyed_by == "codepoint":
        return iset.chars.get(concept.key)
    # name-keyed sets: try the names other (codepoint-keyed) sets use for this codepoint, then the CLDR slug
    names = iset.names()
    candidates: list[str] = []
    for other in EMOJI_STYLES.values():
        if other.keyed_by == "codepoint":
            n = _load_icon_set(str(modules), other.package).chars.get(concept.key)
            if n:
                candidates.append(n)
    candidates.append(slugify(concept.label))
    for cand in candidates:
        if cand in names:
            return cand
    return None


def available_keys(
    style: str, concepts: Iterable[Concept], cache_dir: str | os.PathLike[str] | None = None
) -> set[str]:
    """Keys of the ``concepts`` for which ``style`` has artwork."""
    modules = _modules(cache_dir)
    info = EMOJI_STYLES[style]
    return {c.key for c in concepts if _icon_name(c, info, modules) is not None}


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

    modules = _modules(cache_dir)
    info = EMOJI_STYLES[style]
    name = _icon_name(concept, info, modules)
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


# ------------------------------------------------------------------------------------------- dataset


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
    root = _resolve_cache(cache_dir)
    concepts = list(concepts) if concepts is not None else load_concepts(cache_dir)
    modules = _modules(cache_dir)
    out_root = root / "render" / str(size)
    records: list[EmojiRecord] = []
    skipped: dict[str, int] = {}
    rendered = 0
    jobs = [(s, c) for s in styles for c in concepts]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"render {size}px", unit="img", mininterval=5.0)
    for style, concept in jobs:
        info = EMOJI_STYLES[style]
        if _icon_name(concept, info, modules) is None:
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


# ----------------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class BenchmarkClasses:
    """Zero-shot label space: ``keys[i]`` / ``labels[i]`` is class ``i``; prompts via ``template``."""

    keys: tuple[str, ...]
    labels: tuple[str, ...]
    subgroups: tuple[str, ...]
    template: str = PROMPT_TEMPLATE

    def prompts(self) -> list[str]:
        """One prompt per class, e.g. ``"an emoji of dog face"``."""
        return [self.template.format(label=label) for label in self.labels]

    def __len__(self) -> int:
        return len(self.keys)


def _content_words(label: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", label.lower()) if w and w not in _STOPWORDS}


def select_benchmark_concepts(
    concepts: Sequence[Concept],
    required: dict[str, set[str]],
    per_subgroup: int = 1,
    exclude_subgroups: Iterable[str] = ("country-flag", "subdivision-flag", "keycap", "alphanum"),
) -> list[Concept]:
    """Pick a visually distinct label space: up to ``per_subgroup`` concepts per emojibase subgroup.

    A concept is eligible when every style in ``required`` (style -> available keys) has it, its label
    has no ``:`` (no "flag: X", "keycap: 1") and no gendered role word (man/woman/men/women: the
    neutral form is kept instead). Within a subgroup, candidates are taken in emojibase order and a
    candidate sharing a content word with an already chosen one ("red heart" / "orange heart") is skipped.
    """
    gendered = {"man", "woman", "men", "women"}
    excluded = set(exclude_subgroups)
    chosen: dict[str, list[Concept]] = {}
    for c in concepts:
        if c.subgroup in excluded or ":" in c.label or gendered & _content_words(c.label):
            continue
        if not all(c.key in keys for keys in required.values()):
            continue
        picked = chosen.setdefault(c.subgroup, [])
        if len(picked) >= per_subgroup:
            continue
        if any(_content_words(c.label) & _content_words(p.label) for p in picked):
            continue
        picked.append(c)
    out = [c for group in chosen.values() for c in group]
    labels = [c.label for c in out]
    assert len(set(labels)) == len(labels), "duplicate benchmark labels"
    return sorted(out, key=lambda c: c.order)


def write_benchmark_file(concepts: Sequence[Concept], path: Path = BENCHMARK_FILE, note: str = "") -> Path:
    """Write the label space to JSON (committed, so the benchmark works without the cache)."""
    payload = {
        "template": PROMPT_TEMPLATE,
        "note": note,
        "classes": [{"key": c.key, "emoji": c.emoji, "label": c.label, "subgroup": c.subgroup} for c in concepts],
    }
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def benchmark_classes(path: Path = BENCHMARK_FILE) -> BenchmarkClasses:
    """The committed zero-shot label space (no network, no cache needed)."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    classes = payload["classes"]
    return BenchmarkClasses(
        keys=tuple(c["key"] for c in classes),
        labels=tuple(c["label"] for c in classes),
        subgroups=tuple(c["subgroup"] for c in classes),
        template=payload.get("template", PROMPT_TEMPLATE),
    )
