"""The bundled model's active-learning experiment on the emoji styles (method.md §6).

Pool: in-domain renders of the label space (never a render held out of the bundled model's training);
target: one shift style. The experiment itself (strategies, adaptation, posterior update, metrics) is the
library's :func:`bayesvlm_explain.evaluation.active_learning.run_active_learning`; this module only builds
its data from the emoji pipeline, with features computed once and cached::

    python -m tools.emoji_active_learning [--target-style emojione] [--pool-styles noto,twemoji] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def emoji_active_learning_data(vlm: Any, target_style: str = "emojione", *,
                               pool_styles: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                               feature_cache: str | Path | None = None, repeats: int = 2, test_repeats: int = 2,
                               seed: int = 0) -> ActiveLearningData:
    """Pool: the renders of the label space in ``pool_styles`` (default: the training styles),
    ``repeats`` augmented draws each, labelled. Target: one augmented draw of every ``target_style``
    render (unlabelled, for EPIG); test: ``test_repeats`` other, independent draws of the same renders,
    labelled (so EPIG's targets are the test renders, unlabelled and differently augmented).
    Features are cached in ``feature_cache``.

    The pool is every render of ``pool_styles`` except the renders held out of the bundled model's
    training (:func:`pool_records`), so no calibration or test render is ever a label.
    """
    pool_styles = tuple(pool_styles or emoji.TRAIN_STYLES)
    if target_style not in emoji.SHIFT_STYLES:
        raise ValueError(f"target style {target_style!r} is not a shift style {emoji.SHIFT_STYLES}")
    if target_style in pool_styles or not set(pool_styles) <= set(emoji.EMOJI_STYLES):
        raise ValueError(f"pool styles {pool_styles} must be known styles other than the target {target_style!r}")
    classes = load_label_space()
    prompts = classes.prompts()
    index = {k: i for i, k in enumerate(classes.keys)}
    concepts = {c.key: c for c in emoji.load_concepts(cache_dir)}
    size = max(vlm.image_size or (64, 64))
    build = emoji.build_dataset(pool_styles + (target_style,), size, cache_dir,
                                [concepts[k] for k in classes.keys], write_manifest=False)
    pool_recs = pool_records(build.records, pool_styles, emoji.held_out_renders(classes.keys))
    target_recs = [r for r in build.records if r.style == target_style]
    key = hashlib.blake2b(json.dumps([model_fingerprint(vlm), target_style, repeats, test_repeats, seed, size,
                                      [(r.style, r.key) for r in build.records]]).encode(), digest_size=8).hexdigest()
    path = Path(feature_cache) / f"al-features-{key}.safetensors" if feature_cache else None
    if path is not None and path.is_file():
        t, _ = load_features(path)
    else:
        def encode(records: list[Any], draws: int, draw_seed: int) -> Features:
            raw = load_images(records)
            gen = torch.Generator().manual_seed(draw_seed)
            x = torch.cat([normalise(augment(raw, gen)) for _ in range(draws)])
            return vlm.encoder.image_features(x.to(vlm.encoder.image_dtype))

        parts = {"pool": encode(pool_recs, repeats, seed + 10_000), "target": encode(target_recs, 1, seed + 20_000),
                 "test": encode(target_recs, test_repeats, seed + 30_000)}
        t = {f"{name}_{kind}": getattr(f, kind).float() for name, f in parts.items()
             for kind in ("activations", "embeddings")}
        t["pool_labels"] = torch.tensor([index[r.key] for r in pool_recs] * repeats)
        t["test_labels"] = torch.tensor([index[r.key] for r in target_recs] * test_repeats)
        if path is not None:
            save_features(path, t, {"target_style": target_style, "repeats": repeats, "seed": seed,
                                    "test_repeats": test_repeats})

    def feats(name: str) -> Features:
        return Features(t[f"{name}_activations"].double(), t[f"{name}_embeddings"].double())

    description = (f"pool: {len(pool_recs)} renders of {', '.join(pool_styles)} x {repeats} draws; target: "
                   f"{target_style} ({len(target_recs)} renders, one unlabelled draw for EPIG, {test_repeats} "
                   "other draws labelled for test)")
    return ActiveLearningData(feats("pool"), t["pool_labels"].long(), feats("target"), feats("test"),
                              t["test_labels"].long(), vlm.encode_prompts(prompts), prompts, description)


def pool_records(records: list[Any], styles: Sequence[str], held_out: dict[str, list[str]]) -> list[Any]:
    """The labelled pool among the rendered records: the renders of ``styles`` except those held out of the
    bundled model's training (``held_out``: split name -> render ids ``"style/key"``, its calibration and test
    renders), so that no evaluation render is ever a label."""
    held = {rid for ids in held_out.values() for rid in ids}
    return [r for r in records if r.style in styles and f"{r.style}/{r.key}" not in held]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every strategy and seed on the emoji data; write ``active_learning.json``, ``.md`` and ``.png``.

    Besides the options below it takes the model and experiment options of ``bayesvlm-explain
    active-learning`` (``--model``, ``--k``, ``--rounds``, ``--seeds``, ``--strategies``, ...)."""
    from bayesvlm_explain.cli import _load, build_parser

    p = argparse.ArgumentParser(prog="python -m tools.emoji_active_learning",
                                description="active learning of the bundled model towards one shift style")
    p.add_argument("--out", default="assets/active_learning", help="folder for active_learning.json/.md/.png")
    p.add_argument("--target-style", default="emojione", help="the shift style to adapt to")
    p.add_argument("--pool-styles", default=None, help="comma-separated pool styles (default: the training styles)")
    p.add_argument("--cache", default=None, help="emoji data cache (default ~/.cache/bayesvlm_explain/emoji)")
    own, rest = p.parse_known_args(argv)
    # the model and experiment options are those of the library command (its own-data paths are unused)
    args = build_parser().parse_args(["active-learning", "--pool", "-", "--test", "-", "--out", own.out, *rest])
    vlm = _load(args)
    feature_cache = args.feature_cache or str(Path.home() / ".cache" / "bayesvlm_explain" / "features")
    data = emoji_active_learning_data(vlm, own.target_style, cache_dir=own.cache, feature_cache=feature_cache,
                                      pool_styles=own.pool_styles.split(",") if own.pool_styles else None)
    payload = run_active_learning(vlm, data, config_from_arguments(args), progress=lambda line: print(line, flush=True))
    payload["settings"].update(model=vlm.name, target_style=own.target_style)
    path = write_results(payload, own.out)
    print(summary_markdown(payload))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
