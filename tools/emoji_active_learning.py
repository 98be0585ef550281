"""The bundled model's active-learning experiment on the emoji styles (method.md §6, the paper's protocol).

**Target domain**: a fixed, systematic shift of the artwork, :data:`SHIFTS` ``"complement"`` (every colour
replaced by its complement about its own grey, ``2·grey − rgb``: hue turned by 180°, luminance kept),
applied to distinct drawings: the six artwork styles with a drawing of most classes (:data:`TARGET_STYLES`,
the three training styles and the three unseen colour styles). So each class has up to six distinct drawings
in the target domain, and what they share is the shift, which a learner can pick up from some drawings and
carry to others. Per class the drawings are dealt out by :func:`target_domain_split`: two to test, one to
validation, the rest to the pool; so no test or validation drawing is ever a pool image or a label, shifted
or not (:func:`domain_parts`).

**Pool**: the union of two domains' images, labels hidden until chosen: the target domain's pool drawings
(shifted) and the training styles' renders as they are (the model's own domain, the distractors; never a
render held out of its training, :func:`pool_records`, nor a drawing of the target's test or validation
split); ``repeats`` augmented draws of each. **Validation** (knob choice, EPIG's and the targeted strategy's
unlabelled targets) and **test**: ``eval_repeats`` augmented draws of their drawings, shifted.

The shift was chosen on validation only (docs/evaluation.md, "Active learning"): it must lower zero-shot
accuracy, and random target-domain labels must lift validation accuracy on *other* drawings clearly above
random in-domain labels.

The experiment itself (learner knobs on validation, sanity checks, strategies, adaptation, posterior update,
metrics) is the library's :func:`bayesvlm_explain.evaluation.active_learning.run_active_learning`; this module
only builds its data, with features computed once and cached::

    python -m tools.emoji_active_learning [--shift complement] [--target-styles ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Callable, Sequence
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

TARGET_STYLES: tuple[str, ...] = emoji.TRAIN_STYLES + ("noto-v1", "emojione", "openmoji")
"""The styles whose drawings, shifted, make the target domain: every style with a colour drawing of most
classes (left out: OpenMoji black, the line layer of the OpenMoji drawing, so an augmentation of it; Fluent
high-contrast, monochrome)."""

DEFAULT_KNOB_GRID = "0:100:0.01,0.001:300:0.01,0.01:100:0.01,0.1:100:0.01"
"""The learner settings (prior weight:steps:lr) the experiment chooses from on validation."""


def colour_complement(x: torch.Tensor) -> torch.Tensor:
    """The complementary colours of images ``[B, 3, S, S]`` in [0, 1]: ``2·g − x`` with ``g`` the luma
    (0.299 R + 0.587 G + 0.114 B), clipped to [0, 1]. Greys (white, black outlines) stay; every hue turns
    by 180° about its grey, with the luma kept wherever no channel clips."""
    g = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return (2.0 * g - x).clamp(0.0, 1.0)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _low_contrast(x: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0.0, 1.0)


def edge_sketch(x: torch.Tensor) -> torch.Tensor:
    """Grey line drawing of images ``[B, 3, S, S]`` in [0, 1]: ``1 − |Sobel(luma)|`` (clipped), dark edges on
    white."""
    g = torch.nn.functional.pad(_luma(x), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = torch.nn.functional.conv2d(g, kx), torch.nn.functional.conv2d(g, kx.transpose(2, 3))
    return (1.0 - (gx.square() + gy.square()).sqrt().clamp(0.0, 1.0)).expand(-1, 3, -1, -1)


SHIFTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "complement": colour_complement,
    "complement_low_contrast": lambda x: _low_contrast(colour_complement(x)),
    "invert": lambda x: 1.0 - x,
    "sketch": edge_sketch,
    "none": lambda x: x,
}
"""The target domain's shift, applied after augmentation (``"none"``: the drawings as they are); the
experiment's is ``"complement"``, the others are the candidates :func:`screen_shift` compared it with."""


def target_domain_split(records: Sequence[Any], seed: int = 0, *, test: int = 2, val: int = 1
                        ) -> dict[str, list[Any]]:
    """Deal every class's target-domain drawings (records with ``.style``, ``.key``) to ``test``, ``val`` and
    ``pool``: per class (in key order) a seeded shuffle of its drawings, the first ``test`` to test, the
    next ``val`` to validation, the rest to the pool. Raises :class:`~tools.emoji.SplitError` if a drawing
    appears twice."""
    if test < 1 or val < 0:
        raise ValueError(f"need at least one test drawing per class and no negative count, got {test}, {val}")
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
        out["test"] += drawings[:test]
        out["val"] += drawings[test:test + val]
        out["pool"] += drawings[test + val:]
    return out


def domain_parts(records: Sequence[Any], target_styles: Sequence[str], pool_styles: Sequence[str],
                 held_out: dict[str, list[str]], seed: int = 0) -> dict[str, list[tuple[Any, bool]]]:
    """``{"pool", "val", "test"}`` -> ``[(record, shifted)]``: the target domain's drawings (the records of
    ``target_styles``, dealt by :func:`target_domain_split`, all shifted) and, in the pool only, the
    in-domain distractors (the records of ``pool_styles`` as they are, :func:`pool_records`) minus every
    drawing of the test or validation split, so no evaluation drawing is ever in the pool in any form."""
    split = target_domain_split([r for r in records if r.style in target_styles], seed)
    evaluated = {emoji.render_id(r.style, r.key) for r in split["test"] + split["val"]}
    in_domain = [r for r in pool_records(list(records), pool_styles, held_out)
                 if emoji.render_id(r.style, r.key) not in evaluated]
    return {"pool": [(r, True) for r in split["pool"]] + [(r, False) for r in in_domain],
            "val": [(r, True) for r in split["val"]], "test": [(r, True) for r in split["test"]]}


def emoji_active_learning_data(vlm: Any, target_styles: Sequence[str] = TARGET_STYLES, *, shift: str = "complement",
                               pool_styles: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                               feature_cache: str | Path | None = None, repeats: int = 2, eval_repeats: int = 2,
                               seed: int = 0) -> ActiveLearningData:
    """The experiment's :class:`ActiveLearningData` (see the module docstring): labelled pool (target-domain
    pool drawings with the ``shift``, and in-domain renders of ``pool_styles``, default the training styles,
    without it; ``repeats`` draws each, ``pool_in_target`` marking the former), validation and test
    (``eval_repeats`` shifted draws of the target domain's validation / test drawings), targets = the
    validation images unlabelled; ``*_groups`` name every row's drawing (shifted or not). Features are
    cached in ``feature_cache``."""
    pool_styles = tuple(pool_styles or emoji.TRAIN_STYLES)
    target_styles = tuple(target_styles)
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected one of {tuple(SHIFTS)}")
    bad = [s for s in target_styles + pool_styles if s not in emoji.EMOJI_STYLES]
    if bad or not target_styles:
        raise ValueError(f"styles {bad or target_styles} must be known styles {tuple(emoji.EMOJI_STYLES)}")
    classes = load_label_space()
    prompts = classes.prompts()
    index = {k: i for i, k in enumerate(classes.keys)}
    concepts = {c.key: c for c in emoji.load_concepts(cache_dir)}
    size = max(vlm.image_size or (64, 64))
    styles = tuple(dict.fromkeys(pool_styles + target_styles))
    build = emoji.build_dataset(styles, size, cache_dir, [concepts[k] for k in classes.keys], write_manifest=False)
    parts = domain_parts(build.records, target_styles, pool_styles, emoji.held_out_renders(classes.keys), seed)
    draws = {"pool": repeats, "val": eval_repeats, "test": eval_repeats}
    key = hashlib.blake2b(json.dumps([model_fingerprint(vlm), draws, seed, size, shift,
                                      {n: [(r.style, r.key, s) for r, s in items] for n, items in parts.items()}]
                                     ).encode(), digest_size=8).hexdigest()
    path = Path(feature_cache) / f"al-features-{key}.safetensors" if feature_cache else None
    if path is not None and path.is_file():
        t, _ = load_features(path)
    else:
        t = {}
        for offset, (name, items) in enumerate(parts.items()):
            raw = load_images([r for r, _ in items])
            shifted = torch.tensor([s for _, s in items]).view(-1, 1, 1, 1)
            gen = torch.Generator().manual_seed(seed + 10_000 * (offset + 1))
            batches = []
            for _ in range(draws[name]):
                x = augment(raw, gen)
                batches.append(normalise(torch.where(shifted, SHIFTS[shift](x), x)))
            f = vlm.encoder.image_features(torch.cat(batches).to(vlm.encoder.image_dtype))
            t[f"{name}_activations"], t[f"{name}_embeddings"] = f.activations.float(), f.embeddings.float()
            t[f"{name}_labels"] = torch.tensor([index[r.key] for r, _ in items] * draws[name])
        if path is not None:
            save_features(path, t, {"target_styles": ",".join(target_styles), "shift": shift, "seed": seed,
                                    **draws})

    def feats(name: str) -> Features:
        return Features(t[f"{name}_activations"].double(), t[f"{name}_embeddings"].double())

    def groups(name: str) -> list[str]:
        return [emoji.render_id(r.style, r.key) for r, _ in parts[name]] * draws[name]

    in_target = torch.tensor([s for _, s in parts["pool"]] * repeats)
    n_target_pool = sum(s for _, s in parts["pool"])
    description = (f"target domain: the {shift} shift of {', '.join(target_styles)} ({len(parts['test'])} test / "
                   f"{len(parts['val'])} validation / {n_target_pool} pool drawings); pool: those and "
                   f"{len(parts['pool']) - n_target_pool} unshifted renders of {', '.join(pool_styles)}, {repeats} "
                   f"draws each; validation and test: {eval_repeats} draws each")
    return ActiveLearningData(feats("pool"), t["pool_labels"].long(), feats("val"), feats("test"),
                              t["test_labels"].long(), vlm.encode_prompts(prompts), prompts, description,
                              val=feats("val"), val_labels=t["val_labels"].long(), pool_in_target=in_target,
                              pool_groups=groups("pool"), val_groups=groups("val"), test_groups=groups("test"))


def pool_records(records: list[Any], styles: Sequence[str], held_out: dict[str, list[str]]) -> list[Any]:
    """The in-domain pool among the rendered records: the renders of ``styles`` except those held out of the
    bundled model's training (``held_out``: split name -> render ids ``"style/key"``, its calibration and test
    renders)."""
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


def screen_shift(vlm: Any, data: ActiveLearningData, knobs: tuple[float, int, float], budget: int = 50,
                 seeds: Sequence[int] = (0, 1, 2)) -> dict[str, float]:
    """How learnable a target domain is, on **validation** only (the shift is chosen by it): MAP accuracy
    zero-shot, after ``budget`` random target-domain / in-domain pool labels (mean over ``seeds``) and after
    every target-domain pool label. A usable shift lowers the zero-shot accuracy and lets target labels lift
    it clearly above in-domain ones."""
    from bayesvlm_explain.evaluation.active_learning import fit_learner, map_accuracy

    if data.val is None or data.val_labels is None or data.pool_in_target is None:
        raise ValueError("screening a shift needs the validation split and pool_in_target")

    def val_accuracy(idx: torch.Tensor | None) -> float:
        if idx is None:
            delta = torch.zeros(vlm.adapter.image.dim_out, vlm.adapter.image.dim_in, dtype=torch.float64)
        else:
            support = Features(data.pool.activations[idx], data.pool.embeddings[idx])
            delta = fit_learner(vlm, support, data.pool_labels[idx], data.txt, knobs, update=False).delta
        return map_accuracy(vlm, delta, data.val, data.val_labels, data.txt)

    def random_labels(index: torch.Tensor) -> float:
        return sum(val_accuracy(index[torch.randperm(index.numel(), generator=torch.Generator().manual_seed(s))
                                      [:budget]]) for s in seeds) / len(seeds)

    everything = torch.arange(data.pool_labels.numel())
    target, in_domain = everything[data.pool_in_target], everything[~data.pool_in_target]
    return {"zero_shot": val_accuracy(None), "random_target": random_labels(target),
            "random_in_domain": random_labels(in_domain), "all_target": val_accuracy(target)}


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
                   help="comma-separated styles whose drawings, shifted, make the target domain")
    p.add_argument("--shift", default="complement", choices=tuple(SHIFTS), help="the target domain's shift")
    p.add_argument("--pool-styles", default=None, help="comma-separated in-domain pool styles (default: training)")
    p.add_argument("--cache", default=None, help="emoji data cache (default ~/.cache/bayesvlm_explain/emoji)")
    p.add_argument("--screen", default=None, metavar="SHIFTS",
                   help="only compare comma-separated shifts on validation (screen_shift at the knobs "
                        "--prior-weight/--steps/--lr) and print the table")
    own, rest = p.parse_known_args(argv)
    if "--knob-grid" not in rest:
        rest += ["--knob-grid", DEFAULT_KNOB_GRID]
    # the model and experiment options are those of the library command (its own-data paths are unused)
    args = build_parser().parse_args(["active-learning", "--pool", "-", "--test", "-", "--out", own.out, *rest])
    vlm = _load(args)
    feature_cache = args.feature_cache or str(Path.home() / ".cache" / "bayesvlm_explain" / "features")
    targets = own.target_styles.split(",")
    pool_styles = own.pool_styles.split(",") if own.pool_styles else None
    if own.screen:
        knobs = (args.prior_weight, args.steps, args.lr)
        print(f"validation MAP accuracy, learner {knobs}: shift | zero shot | 50 random target | "
              "50 random in-domain | all target")
        for shift in own.screen.split(","):
            r = screen_shift(vlm, emoji_active_learning_data(vlm, targets, shift=shift, cache_dir=own.cache,
                                                             feature_cache=feature_cache, pool_styles=pool_styles),
                             knobs)
            print(f"| {shift} | {r['zero_shot']:.3f} | {r['random_target']:.3f} | {r['random_in_domain']:.3f} | "
                  f"{r['all_target']:.3f} |", flush=True)
        return 0
    data = emoji_active_learning_data(vlm, targets, shift=own.shift, cache_dir=own.cache, feature_cache=feature_cache,
                                      pool_styles=pool_styles)
    payload = run_active_learning(vlm, data, config_from_arguments(args), progress=lambda line: print(line, flush=True))
    payload["settings"].update(model=vlm.name, target_style=f"the {own.shift} shift of " + ", ".join(targets))
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
