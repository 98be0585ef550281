"""Emoji concepts from ``emojibase-data`` (CLDR short name + keywords, group/subgroup) and their captions."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass

from bayesvlm_explain.data.labels import PROMPT_TEMPLATE

from .sources import fetch_sources

__all__ = [
    "Concept",
    "build_caption",
    "caption_variants",
    "load_concepts",
    "normalise_hexcode",
    "sample_caption",
    "slugify",
]

_EXCLUDED_GROUPS = frozenset({"component"})


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
    base = fetch_sources(cache_dir) / "emojibase-data"
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
