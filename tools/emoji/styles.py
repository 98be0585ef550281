"""The emoji artwork styles: npm package, licence, train/shift split and how icons are keyed.

Licences are a careful reading, not legal advice (see ``shared/bundled-model-data.md``). Training
styles are permissive and the shipped weights derive from them only; shift styles are evaluation only,
rendered at evaluation time and never committed. Apple and Facebook artwork are excluded entirely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["EMOJI_STYLES", "SHIFT_STYLES", "TRAIN_STYLES", "StyleInfo"]


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
        # training: Google Noto Emoji; Twemoji ("(c) Twitter/X and contributors (jdecked fork)"); Fluent Flat
        StyleInfo("noto", "@iconify-json/noto", "Apache-2.0", "train", "codepoint"),
        StyleInfo("twemoji", "@iconify-json/twemoji", "CC-BY-4.0", "train", "codepoint"),
        StyleInfo("fluent-flat", "@iconify-json/fluent-emoji-flat", "MIT", "train", "codepoint"),
        # shift: blob-era Noto and EmojiOne 2 (matched by name; EmojiOne is CC-BY-4.0 per iconify but
        # CC-BY-SA-4.0 per Debian, so treated as share-alike), OpenMoji colour, OpenMoji black (the
        # colour SVG with every non-black paint removed: OpenMoji's own black set is exactly its line
        # layer), Fluent High Contrast (monochrome)
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
