"""Fetch the pinned emoji artwork (npm ci) and render it into the cache.

Example::

    python scripts/build_emoji_data.py --size 64 --styles train shift
    python scripts/build_emoji_data.py --write-benchmark   # regenerate the committed label space

Nothing is written inside the repository except, with ``--write-benchmark``, the committed label space
``bayesvlm_explain/data/emoji_labels.json`` (and, with ``--write-examples DIR``, the example images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayesvlm_explain.data.labels import PROMPT_TEMPLATE, load_label_space  # noqa: E402
from tools import emoji  # noqa: E402

# (label, style): benchmark classes, permissive training styles only, spread over groups and styles
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("grinning face", "noto"),
    ("thumbs up", "twemoji"),
    ("frog", "fluent-flat"),
    ("grapes", "noto"),
    ("airplane", "twemoji"),
    ("soccer ball", "fluent-flat"),
    ("saxophone", "noto"),
    ("anchor", "twemoji"),
)


def write_examples(out_dir: Path, size: int, cache_dir: Path | None) -> Path:
    """Render :data:`EXAMPLES` as ``<out_dir>/<n>_<label>_<style>.png`` plus ``examples.json``."""
    concepts = {c.label: c for c in emoji.load_concepts(cache_dir)}
    bench = set(load_label_space().labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i, (label, style) in enumerate(EXAMPLES):
        if label not in bench or emoji.EMOJI_STYLES[style].split != "train":
            raise SystemExit(f"example {label!r}/{style} must be a benchmark class in a training style")
        fname = f"{i:02d}_{emoji.slugify(label)}_{style}.png"
        emoji.render(concepts[label], style, size, cache_dir).save(out_dir / fname, optimize=True)
        items.append({"file": fname, "label": label, "key": concepts[label].key, "style": style,
                      "licence": emoji.EMOJI_STYLES[style].licence})
    path = out_dir / "examples.json"
    payload = {
        "note": "Rendered by scripts/build_emoji_data.py --write-examples; artwork credits in "
                "bayesvlm_explain/pretrained/bundled/ATTRIBUTION.md. Prompt template: " + PROMPT_TEMPLATE,
        "size": size,
        "examples": items,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def _styles(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n == "train":
            out += emoji.TRAIN_STYLES
        elif n == "shift":
            out += emoji.SHIFT_STYLES
        elif n in emoji.EMOJI_STYLES:
            out.append(n)
        else:
            raise SystemExit(f"unknown style {n!r}; choose from train, shift, {', '.join(emoji.EMOJI_STYLES)}")
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $BAYESVLM_CACHE/emoji or ~/.cache/...")
    p.add_argument("--size", type=int, default=64, help="output side in pixels")
    p.add_argument("--styles", nargs="+", default=["train", "shift"], help="style names, or 'train'/'shift'")
    p.add_argument("--overwrite", action="store_true", help="re-render existing PNGs")
    p.add_argument("--write-benchmark", action="store_true", help="regenerate the committed label space")
    p.add_argument("--write-examples", type=Path, default=None, metavar="DIR",
                   help="render the example images (e.g. bayesvlm_explain/pretrained/examples) at --examples-size")
    p.add_argument("--examples-size", type=int, default=64)
    p.add_argument("--per-subgroup", type=int, default=1, help="benchmark concepts per emojibase subgroup")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    modules = emoji.fetch_sources(args.cache_dir)
    concepts = emoji.load_concepts(args.cache_dir)
    print(f"sources in {modules} ({time.perf_counter() - t0:.1f}s); {len(concepts)} concepts")

    styles = _styles(args.styles)
    for s in styles:  # a name-keyed set must never draw two concepts with one icon
        collisions = emoji.name_collisions(concepts, emoji.EMOJI_STYLES[s], modules)
        if collisions:
            raise SystemExit(f"{s}: icons matched to several concepts: {collisions}")
    t1 = time.perf_counter()
    build = emoji.build_dataset(styles, args.size, args.cache_dir, concepts, args.overwrite, progress=True)
    per_style: dict[str, int] = {}
    for r in build.records:
        per_style[r.style] = per_style.get(r.style, 0) + 1
    print(f"{len(build.records)} records ({build.rendered} newly rendered) in {time.perf_counter() - t1:.1f}s")
    for s in styles:
        print(f"  {s:15s} {per_style.get(s, 0):5d} images, {build.skipped.get(s, 0):5d} concepts lacking")
    print(f"manifest: {build.manifest}")

    if args.write_benchmark:
        required = {s: emoji.available_keys(s, concepts, args.cache_dir) for s in emoji.EMOJI_STYLES}
        # the name-keyed shift sets cover fewer concepts; require the codepoint-keyed ones only
        required = {s: k for s, k in required.items() if emoji.EMOJI_STYLES[s].keyed_by == "codepoint"}
        chosen = emoji.select_benchmark_concepts(concepts, required, per_subgroup=args.per_subgroup)
        note = (
            f"select_benchmark_concepts(per_subgroup={args.per_subgroup}), requiring styles "
            f"{sorted(required)}; regenerate with scripts/build_emoji_data.py --write-benchmark"
        )
        path = emoji.write_label_space(chosen, note=note)
        print(f"benchmark: {len(chosen)} classes -> {path}")
    if args.write_examples is not None:
        print(f"examples -> {write_examples(args.write_examples, args.examples_size, args.cache_dir)}")
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
