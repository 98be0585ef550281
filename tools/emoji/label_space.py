"""Choosing and writing the zero-shot label space (read at run time by :mod:`bayesvlm_explain.data.labels`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from bayesvlm_explain.data.labels import PROMPT_TEMPLATE, label_space_resource

from .concepts import Concept

__all__ = ["select_benchmark_concepts", "write_label_space"]

_STOPWORDS = frozenset({"a", "an", "and", "the", "of", "with", "in", "on", "for", "to", "&"})


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


def write_label_space(concepts: Sequence[Concept], path: str | os.PathLike[str] | None = None,
                      note: str = "") -> Path:
    """Write the label space to JSON; by default over the committed package file (run from a checkout)."""
    target = Path(path) if path is not None else Path(str(label_space_resource()))
    payload = {
        "template": PROMPT_TEMPLATE,
        "note": note,
        "classes": [{"key": c.key, "emoji": c.emoji, "label": c.label, "subgroup": c.subgroup} for c in concepts],
    }
    target.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return target
