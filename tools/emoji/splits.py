"""Disjoint train / calibration / test splits of the rendered emoji, fixed before training.

The unit is the **render**, one concept in one artwork style, with id ``"<style>/<key>"``. Each zero-shot
class of the bundled model is one concept, drawn in the three training styles, so a split by concept
would take every image of a class out of training; instead, for every class one of its three renders is
held out (the model trains on the other two) and the held-out renders are divided between calibration
and test. Every held-out render is therefore an image the model never saw (a different drawing of a
concept it saw in two other styles); calibration and test hold different classes. Concepts outside the
label space keep all their renders in training. The assignment is a seeded permutation of the classes:
position ``j`` holds out style ``j % 3`` and goes to calibration when ``j`` is even, so each style is
held out equally often in both splits.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from .styles import TRAIN_STYLES

__all__ = ["SPLIT_NAMES", "SplitError", "held_out_renders", "render_id", "split_records"]

SPLIT_NAMES: tuple[str, ...] = ("train", "calibration", "test")


class SplitError(ValueError):
    """A split that would leak held-out renders into training (the message names the renders)."""


def render_id(style: str, key: str) -> str:
    """The id of one render, e.g. ``"noto/1f600"``."""
    return f"{style}/{key}"


def held_out_renders(class_keys: Sequence[str], styles: Sequence[str] = TRAIN_STYLES,
                     seed: int = 0) -> dict[str, list[str]]:
    """``{"calibration": [...], "test": [...]}``: the render ids held out of training, one per class."""
    if len(set(class_keys)) != len(class_keys):
        raise SplitError("class keys must be unique")
    if not styles:
        raise SplitError("no styles to hold out")
    order = list(class_keys)
    random.Random(seed).shuffle(order)
    out: dict[str, list[str]] = {"calibration": [], "test": []}
    for j, key in enumerate(order):
        out["calibration" if j % 2 == 0 else "test"].append(render_id(styles[j % len(styles)], key))
    return {name: sorted(ids) for name, ids in out.items()}


def split_records(records: Iterable, class_keys: Sequence[str], styles: Sequence[str] = TRAIN_STYLES,
                  seed: int = 0) -> dict[str, list]:
    """Partition records (anything with ``.style`` and ``.key``) into ``train`` / ``calibration`` / ``test``.

    Held-out renders (:func:`held_out_renders`) go to their split; every other record is training data.
    Raises :class:`SplitError` if a held-out render is missing from ``records`` (it would be silently
    untested) or appears twice.
    """
    held = held_out_renders(class_keys, styles, seed)
    where = {rid: name for name, ids in held.items() for rid in ids}
    out: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    seen: set[str] = set()
    for r in records:
        rid = render_id(r.style, r.key)
        if rid in where:
            if rid in seen:
                raise SplitError(f"held-out render {rid} appears twice in the records")
            seen.add(rid)
        out[where.get(rid, "train")].append(r)
    missing = sorted(set(where) - seen)
    if missing:
        raise SplitError(f"held-out renders missing from the records: {missing[:5]} ({len(missing)} in all)")
    return out
