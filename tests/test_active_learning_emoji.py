"""Split hygiene of the emoji active-learning data: no test or validation drawing (nor an augmentation of one)
is ever in the pool or the support set."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tools import emoji
from tools.emoji_active_learning import (
    SHIFTS,
    TARGET_STYLES,
    colour_complement,
    domain_parts,
    edge_sketch,
    pool_records,
    screen_shift,
    target_domain_split,
)


@dataclass(frozen=True)
class Rec:
    style: str
    key: str


def _records(n_classes: int = 12) -> list[Rec]:
    # class i is drawn in the first 1 + i % 3 target styles: 1, 2 or 3 drawings
    return [Rec(s, f"k{i:02d}") for i in range(n_classes) for s in TARGET_STYLES[:1 + i % 3]]


def test_every_drawing_goes_to_exactly_one_split_and_test_comes_first():
    recs = _records()
    split = target_domain_split(recs, seed=3, test=1, val=1)
    ids = {name: [emoji.render_id(r.style, r.key) for r in part] for name, part in split.items()}
    assert sorted(sum(ids.values(), [])) == sorted(emoji.render_id(r.style, r.key) for r in recs)
    for a, b in (("test", "val"), ("test", "pool"), ("val", "pool")):
        assert not set(ids[a]) & set(ids[b])
    keys = sorted({r.key for r in recs})
    assert sorted(r.key for r in split["test"]) == keys  # one test drawing per class
    assert sorted(r.key for r in split["val"]) == [k for k in keys if int(k[1:]) % 3 >= 1]  # 2+ drawings
    assert sorted(r.key for r in split["pool"]) == [k for k in keys if int(k[1:]) % 3 == 2]  # 3 drawings
    assert all(sum(r.key == k for r in split["pool"]) <= 1 for k in keys)
    assert target_domain_split(list(reversed(recs)), seed=3, test=1, val=1) == split  # record order is irrelevant
    assert target_domain_split(recs, seed=4, test=1, val=1) != split


def test_the_default_deal_is_two_test_one_validation_the_rest_to_the_pool():
    recs = [Rec(s, f"k{i:02d}") for i in range(10) for s in TARGET_STYLES[:3 + i % 4]]  # 3 to 6 drawings
    split = target_domain_split(recs, seed=0)
    for i in range(10):
        key = f"k{i:02d}"
        counts = [sum(r.key == key for r in split[name]) for name in ("test", "val", "pool")]
        assert counts == [2, 1, i % 4]
    with pytest.raises(ValueError, match="at least one test"):
        target_domain_split(recs, test=0)


def test_a_repeated_drawing_is_refused():
    recs = _records(3)
    with pytest.raises(emoji.SplitError, match="appears twice"):
        target_domain_split(recs + recs[:1])


def test_the_in_domain_pool_never_holds_a_held_out_render():
    keys = [f"k{i:02d}" for i in range(9)]
    recs = [Rec(s, k) for s in emoji.TRAIN_STYLES for k in keys] + [Rec("emojione", k) for k in keys]
    held = emoji.held_out_renders(keys)
    pool = pool_records(recs, emoji.TRAIN_STYLES, held)
    pool_ids = {emoji.render_id(r.style, r.key) for r in pool}
    assert not pool_ids & {rid for ids in held.values() for rid in ids}
    assert len(pool) == 2 * len(keys) and all(r.style in emoji.TRAIN_STYLES for r in pool)


def test_no_evaluation_drawing_is_in_the_pool_shifted_or_not():
    """The in-domain distractors are unshifted renders of the training styles; a drawing dealt to test or
    validation (shifted) must not come back into the pool as its unshifted render."""
    keys = [f"k{i:02d}" for i in range(15)]
    recs = [Rec(s, k) for s in TARGET_STYLES for k in keys]
    held = emoji.held_out_renders(keys)
    parts = domain_parts(recs, TARGET_STYLES, emoji.TRAIN_STYLES, held, seed=1)
    ids = {name: {emoji.render_id(r.style, r.key) for r, _ in items} for name, items in parts.items()}
    assert not ids["pool"] & (ids["test"] | ids["val"]) and not ids["test"] & ids["val"]
    assert all(shifted for name in ("test", "val") for _, shifted in parts[name])
    target_pool = [r for r, shifted in parts["pool"] if shifted]
    in_domain = [r for r, shifted in parts["pool"] if not shifted]
    # every target-domain drawing is dealt exactly once
    assert len(parts["test"]) + len(parts["val"]) + len(target_pool) == len(recs)
    held_ids = {rid for v in held.values() for rid in v}
    assert in_domain and all(r.style in emoji.TRAIN_STYLES for r in in_domain)
    assert not {emoji.render_id(r.style, r.key) for r in in_domain} & held_ids
    # exactly the training renders that are neither held out nor evaluated are distractors
    expected = {emoji.render_id(s, k) for s in emoji.TRAIN_STYLES for k in keys} - held_ids - ids["test"] - ids["val"]
    assert {emoji.render_id(r.style, r.key) for r in in_domain} == expected


def test_colour_complement_keeps_greys_and_luma_and_undoes_itself():
    grey = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    torch.testing.assert_close(colour_complement(grey), grey)
    x = torch.tensor([0.6, 0.4, 0.5]).view(1, 3, 1, 1)  # no channel clips
    y = colour_complement(x)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((y * luma).sum(1), (x * luma).sum(1))
    g = float((x * luma).sum())
    torch.testing.assert_close(y.flatten(), torch.tensor([2 * g - 0.6, 2 * g - 0.4, 2 * g - 0.5]))
    torch.testing.assert_close(colour_complement(y), x)
    red = colour_complement(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(red, torch.tensor([0.0, 0.598, 0.598]))  # red -> cyan, clipped at 0


def test_edge_sketch_draws_dark_edges_on_white():
    flat = torch.full((1, 3, 6, 6), 0.3)
    torch.testing.assert_close(edge_sketch(flat), torch.ones(1, 3, 6, 6))
    step = torch.zeros(1, 3, 6, 6)
    step[..., 3:] = 1.0  # black left half, white right half: a vertical edge between columns 2 and 3
    out = edge_sketch(step)[0, 0]
    assert (out[:, [2, 3]] == 0).all() and (out[:, [0, 5]] == 1).all()
    assert set(SHIFTS) >= {"complement", "none"} and SHIFTS["none"](step) is step


def test_screen_shift_reads_validation_only(tiny_vlm):
    """With no learning (0 steps) every screened figure is the zero-shot validation accuracy; test labels play
    no part."""
    from conftest import PROMPTS, random_posterior

    import bayesvlm_explain as bx
    from bayesvlm_explain.adapters import Features
    from bayesvlm_explain.evaluation.active_learning import ActiveLearningData, map_accuracy

    vlm = bx.BayesVLM(tiny_vlm.model, tiny_vlm.tokenizer, tiny_vlm.preprocess, device="cpu", name="tiny")
    vlm.posterior = random_posterior(vlm, prior_precision=5.0, seed=3, scale=0.2)
    gen = torch.Generator().manual_seed(0)

    def feats(n: int) -> Features:
        acts = torch.randn(n, vlm.adapter.image.weight.shape[1], generator=gen, dtype=torch.float64)
        return Features(acts, vlm.adapter.image.project(acts).detach())

    pool, val, test = feats(20), feats(10), feats(6)
    labels = torch.randint(0, 4, (20,), generator=gen)
    val_labels = torch.randint(0, 4, (10,), generator=gen)
    data = ActiveLearningData(pool, labels, val, test, torch.zeros(6).long(), vlm.encode_prompts(PROMPTS), PROMPTS,
                              val=val, val_labels=val_labels, pool_in_target=torch.arange(20) < 8)
    zero = map_accuracy(vlm, torch.zeros(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in, dtype=torch.float64),
                        val, val_labels, data.txt)
    still = screen_shift(vlm, data, (0.0, 0, 0.01), budget=4, seeds=(0, 1))
    assert still == {"zero_shot": zero, "random_target": zero, "random_in_domain": zero, "all_target": zero}
    fitted = screen_shift(vlm, data, (0.0, 200, 0.05), budget=4, seeds=(0, 1))
    assert fitted["zero_shot"] == zero and fitted["all_target"] != zero
    relabelled = ActiveLearningData(pool, labels, val, test, torch.ones(6).long(), data.txt, PROMPTS, val=val,
                                    val_labels=val_labels, pool_in_target=data.pool_in_target)
    assert screen_shift(vlm, relabelled, (0.0, 200, 0.05), budget=4, seeds=(0, 1)) == fitted
    with pytest.raises(ValueError, match="validation split"):
        screen_shift(vlm, ActiveLearningData(pool, labels, val, test, torch.zeros(6).long(), data.txt, PROMPTS),
                     (0.0, 0, 0.01))
