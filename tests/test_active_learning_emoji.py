"""Split hygiene of the emoji active-learning data: no test or validation drawing (nor an augmentation of one)
is ever in the pool or the support set."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tools import emoji
from tools.emoji_active_learning import TARGET_STYLES, pool_records, target_domain_split


@dataclass(frozen=True)
class Rec:
    style: str
    key: str


def _records(n_classes: int = 12) -> list[Rec]:
    # class i is drawn in the first 1 + i % 3 target styles: 1, 2 or 3 drawings
    return [Rec(s, f"k{i:02d}") for i in range(n_classes) for s in TARGET_STYLES[:1 + i % 3]]


def test_every_drawing_goes_to_exactly_one_split_and_test_comes_first():
    recs = _records()
    split = target_domain_split(recs, seed=3)
    ids = {name: [emoji.render_id(r.style, r.key) for r in part] for name, part in split.items()}
    assert sorted(sum(ids.values(), [])) == sorted(emoji.render_id(r.style, r.key) for r in recs)
    for a, b in (("test", "val"), ("test", "pool"), ("val", "pool")):
        assert not set(ids[a]) & set(ids[b])
    keys = sorted({r.key for r in recs})
    assert sorted(r.key for r in split["test"]) == keys  # one test drawing per class
    assert sorted(r.key for r in split["val"]) == [k for k in keys if int(k[1:]) % 3 >= 1]  # 2+ drawings
    assert sorted(r.key for r in split["pool"]) == [k for k in keys if int(k[1:]) % 3 == 2]  # 3 drawings
    assert all(sum(r.key == k for r in split["pool"]) <= 1 for k in keys)
    assert target_domain_split(list(reversed(recs)), seed=3) == split  # order of the records does not matter
    assert target_domain_split(recs, seed=4) != split


def test_a_repeated_drawing_is_refused():
    recs = _records(3)
    with pytest.raises(emoji.SplitError, match="appears twice"):
        target_domain_split(recs + recs[:1])


def test_the_in_domain_pool_never_holds_a_held_out_render():
    keys = [f"k{i:02d}" for i in range(9)]
    recs = [Rec(s, k) for s in emoji.TRAIN_STYLES for k in keys] + [Rec(TARGET_STYLES[0], k) for k in keys]
    held = emoji.held_out_renders(keys)
    pool = pool_records(recs, emoji.TRAIN_STYLES, held)
    pool_ids = {emoji.render_id(r.style, r.key) for r in pool}
    assert not pool_ids & {rid for ids in held.values() for rid in ids}
    assert len(pool) == 2 * len(keys) and all(r.style in emoji.TRAIN_STYLES for r in pool)
