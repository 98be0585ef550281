"""The bundled model's active-learning experiment on the emoji styles (method.md §6, the paper's protocol).

**Target domain**: the unseen colour artwork styles together (:data:`TARGET_STYLES`: blob-era Noto,
EmojiOne, OpenMoji colour), so most classes have three distinct drawings in it. Per class its drawings are
dealt out by :func:`target_domain_split`: one to test, one to validation, the rest to the pool; so no test
or validation drawing, nor any augmentation of one, is ever a pool image or a label. Left out: OpenMoji's
black line art (the line layer of the OpenMoji colour drawing, so an augmentation of it) and Fluent
high-contrast (monochrome; the bundled model is at chance on it, 1.7 % zero-shot).

**Pool**: the union of two domains' images, labels hidden until chosen: the training styles' renders
(the model's own domain; never a render held out of its training, :func:`pool_records`) and the target
domain's pool drawings; ``repeats`` augmented draws of each. **Validation** (knob choice, EPIG's and the
targeted strategy's unlabelled targets) and **test**: ``eval_repeats`` augmented draws of their drawings.

The experiment itself (learner knobs on validation, sanity checks, strategies, adaptation, posterior update,
metrics) is the library's :func:`bayesvlm_explain.evaluation.active_learning.run_active_learning`; this module
only builds its data, with features computed once and cached::

    python -m tools.emoji_active_learning [--target-styles noto-v1,emojione,openmoji] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bayesvlm_explain.adapters import Features
from bayesvlm_explain.data.labels import load_label_space
from bayesvlm_explain.evaluation.active_learning import (
    ActiveLearningData,
    config_from_arguments,
    run_active_learning,
    summary_markdown,
    write_results,
)
from bayesvlm_explain.evaluation.evaluate import load_features, save_features
from bayesvlm_explain.fitting.features import model_fingerprint

from . import emoji
from .augment import augment, load_images, normalise

TARGET_STYLES: tuple[str, ...] = ("noto-v1", "emojione", "openmoji")
"""The styles that together make the target domain: distinct artwork families, none seen in training."""

DEFAULT_KNOB_GRID = "0:100:0.01,0.001:300:0.01,0.01:100:0.01,0.01:300:0.01,0.1:100:0.01,1:100:0.01"
"""The learner settings (prior weight:steps:lr) the experiment chooses from on validation."""


def target_domain_split(records: Sequence[Any], seed: int = 0) -> dict[str, list[Any]]:
    """Deal every class's target-domain drawings (records with ``.style``, ``.key``) to ``test``, ``val`` and
    ``pool``: per class (in key order) a seeded shuffle of its drawings, the first to test, the second to
    validation, the rest to the pool. Raises :class:`~tools.emoji.SplitError` if a drawing appears twice."""
    by_key: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for r in records:
        rid = emoji.render_id(r.style, r.key)
        if rid in seen:
            raise emoji.SplitError(f"drawing {rid} appears twice in the records")
        seen.add(rid)
        by_key.setdefault(r.key, []).append(r)
    rng = random.Random(seed)
    out: dict[str, list[Any]] = {"test": [], "val": [], "pool": []}
    for key in sorted(by_key):
        drawings = sorted(by_key[key], key=lambda r: r.style)
        rng.shuffle(drawings)
        out["test"] += drawings[:1]
        out["val"] += drawings[1:2]
        out["pool"] += drawings[2:]
    return out


def emoji_active_learning_data(vlm: Any, target_styles: Sequence[str] = TARGET_STYLES, *,
                               pool_styles: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                               feature_cache: str | Path | None = None, repeats: int = 2, eval_repeats: int = 2,
                               seed: int = 0) -> ActiveLearningData:
    """The experiment's :class:`ActiveLearningData` (see the module docstring): labelled pool (training-style
    renders and target-domain pool drawings, ``repeats`` draws each, ``pool_in_target`` marking the latter),
    validation and test (``eval_repeats`` draws of the target domain's validation / test drawings), targets
    = the validation images unlabelled; ``*_groups`` name every row's drawing. Features are cached in
    ``feature_cache``."""
    pool_styles = tuple(pool_styles or emoji.TRAIN_STYLES)
    target_styles = tuple(target_styles)
    bad = [s for s in target_styles if s not in emoji.SHIFT_STYLES]
    if bad or not target_styles:
        raise ValueError(f"target styles {bad or target_styles} must be shift styles {emoji.SHIFT_STYLES}")
    if set(target_styles) & set(pool_styles) or not set(pool_styles) <= set(emoji.EMOJI_STYLES):
        raise ValueError(f"pool styles {pool_styles} must be known styles other than the target's {target_styles}")
    classes = load_label_space()
    prompts = classes.prompts()
    index = {k: i for i, k in enumerate(classes.keys)}
    concepts = {c.key: c for c in emoji.load_concepts(cache_dir)}
    size = max(vlm.image_size or (64, 64))
    build = emoji.build_dataset(pool_styles + target_styles, size, cache_dir,
                                [concepts[k] for k in classes.keys], write_manifest=False)
    split = target_domain_split([r for r in build.records if r.style in target_styles], seed)
    parts_recs = {"pool": pool_records(build.records, pool_styles, emoji.held_out_renders(classes.keys))
                  + split["pool"], "val": split["val"], "test": split["test"]}
    draws = {"pool": repeats, "val": eval_repeats, "test": eval_repeats}
    key = hashlib.blake2b(json.dumps([model_fingerprint(vlm), draws, seed, size,
                                      {n: [(r.style, r.key) for r in recs] for n, recs in parts_recs.items()}]
                                     ).encode(), digest_size=8).hexdigest()
    path = Path(feature_cache) / f"al-features-{key}.safetensors" if feature_cache else None
    if path is not None and path.is_file():
        t, _ = load_features(path)
    else:
        t = {}
        for offset, (name, recs) in enumerate(parts_recs.items()):
            raw = load_images(recs)
            gen = torch.Generator().manual_seed(seed + 10_000 * (offset + 1))
            x = torch.cat([normalise(augment(raw, gen)) for _ in range(draws[name])])
            f = vlm.encoder.image_features(x.to(vlm.encoder.image_dtype))
            t[f"{name}_activations"], t[f"{name}_embeddings"] = f.activations.float(), f.embeddings.float()
            t[f"{name}_labels"] = torch.tensor([index[r.key] for r in recs] * draws[name])
        if path is not None:
            save_features(path, t, {"target_styles": ",".join(target_styles), "seed": seed, **draws})

    def feats(name: str) -> Features:
        return Features(t[f"{name}_activations"].double(), t[f"{name}_embeddings"].double())

    def groups(name: str) -> list[str]:
        return [emoji.render_id(r.style, r.key) for r in parts_recs[name]] * draws[name]

    in_target = torch.tensor([r.style in target_styles for r in parts_recs["pool"]] * repeats)
    description = (f"target domain: {', '.join(target_styles)} ({len(split['test'])} test / {len(split['val'])} "
                   f"validation / {len(split['pool'])} pool drawings, one per class each for test and validation); "
                   f"pool: those and {len(parts_recs['pool']) - len(split['pool'])} renders of "
                   f"{', '.join(pool_styles)}, {repeats} draws each; validation and test: {eval_repeats} draws each")
    return ActiveLearningData(feats("pool"), t["pool_labels"].long(), feats("val"), feats("test"),
                              t["test_labels"].long(), vlm.encode_prompts(prompts), prompts, description,
                              val=feats("val"), val_labels=t["val_labels"].long(), pool_in_target=in_target,
                              pool_groups=groups("pool"), val_groups=groups("val"), test_groups=groups("test"))


def pool_records(records: list[Any], styles: Sequence[str], held_out: dict[str, list[str]]) -> list[Any]:
    """The labelled pool among the rendered records: the renders of ``styles`` except those held out of the
    bundled model's training (``held_out``: split name -> render ids ``"style/key"``, its calibration and test
    renders), so that no evaluation render is ever a label."""
    held = {rid for ids in held_out.values() for rid in ids}
    return [r for r in records if r.style in styles and f"{r.style}/{r.key}" not in held]


def memorisation_control(vlm: Any, data: ActiveLearningData, knobs: tuple[float, int, float],
                         draws: int = 2) -> dict[str, float]:
    """What the learner gains from labels of the *very drawings* it is tested on versus other drawings of the
    same classes: fit on the first augmented draw of the validation drawings (labelled), then MAP accuracy
    on their other draws (``same_drawings``, the leaky design the splits rule out) and on the test drawings
    (``other_drawings``); ``zero_shot_*`` without labels. Needs ``val`` laid out as ``draws`` blocks."""
    from bayesvlm_explain.evaluation.active_learning import fit_learner, map_accuracy

    if data.val is None or data.val_labels is None:
        raise ValueError("the memorisation control needs the validation split")
    n = data.val_labels.numel() // draws
    first, rest = torch.arange(n), torch.arange(n, data.val_labels.numel())

    def rows(x: Features, idx: torch.Tensor) -> Features:
        return Features(x.activations[idx], x.embeddings[idx])

    delta = fit_learner(vlm, rows(data.val, first), data.val_labels[first], data.txt, knobs, update=False).delta
    zero = torch.zeros_like(delta)
    return {"labels": n,
            "same_drawings": map_accuracy(vlm, delta, rows(data.val, rest), data.val_labels[rest], data.txt),
            "zero_shot_same_drawings": map_accuracy(vlm, zero, rows(data.val, rest), data.val_labels[rest], data.txt),
            "other_drawings": map_accuracy(vlm, delta, data.test, data.test_labels, data.txt),
            "zero_shot_other_drawings": map_accuracy(vlm, zero, data.test, data.test_labels, data.txt)}


def main(argv: Sequence[str] | None = None) -> int:
    """Choose the learner's knobs on validation, run the sanity checks, then every strategy and seed on the
    emoji data; write ``active_learning.json``, ``.md`` and ``.png``.

    Besides the options below it takes the model and experiment options of ``bayesvlm-explain
    active-learning`` (``--model``, ``--k``, ``--rounds``, ``--seeds``, ``--strategies``, ``--knob-grid``, ...)."""
    from bayesvlm_explain.cli import _load, build_parser

    p = argparse.ArgumentParser(prog="python -m tools.emoji_active_learning",
                                description="active learning of the bundled model towards unseen artwork styles")
    p.add_argument("--out", default="assets/active_learning", help="folder for active_learning.json/.md/.png")
    p.add_argument("--target-styles", default=",".join(TARGET_STYLES),
                   help="comma-separated shift styles that together make the target domain")
    p.add_argument("--pool-styles", default=None, help="comma-separated in-domain pool styles (default: training)")
    p.add_argument("--cache", default=None, help="emoji data cache (default ~/.cache/bayesvlm_explain/emoji)")
    own, rest = p.parse_known_args(argv)
    if "--knob-grid" not in rest:
        rest += ["--knob-grid", DEFAULT_KNOB_GRID]
    # the model and experiment options are those of the library command (its own-data paths are unused)
    args = build_parser().parse_args(["active-learning", "--pool", "-", "--test", "-", "--out", own.out, *rest])
    vlm = _load(args)
    feature_cache = args.feature_cache or str(Path.home() / ".cache" / "bayesvlm_explain" / "features")
    targets = own.target_styles.split(",")
    data = emoji_active_learning_data(vlm, targets, cache_dir=own.cache, feature_cache=feature_cache,
                                      pool_styles=own.pool_styles.split(",") if own.pool_styles else None)
    payload = run_active_learning(vlm, data, config_from_arguments(args), progress=lambda line: print(line, flush=True))
    payload["settings"].update(model=vlm.name, target_style=" + ".join(targets))
    st = payload["settings"]
    payload["memorisation_control"] = control = memorisation_control(vlm, data, (st["prior_weight"], st["steps"],
                                                                                 st["lr"]))
    print(f"memorisation control ({control['labels']} labels of validation drawings, MAP accuracy): other draws "
          f"of the same drawings {control['zero_shot_same_drawings']:.3f} -> {control['same_drawings']:.3f}; "
          f"the test drawings {control['zero_shot_other_drawings']:.3f} -> {control['other_drawings']:.3f}")
    path = write_results(payload, own.out)
    print(summary_markdown(payload))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
