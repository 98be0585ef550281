"""Fit the bundled model's posterior with the library's own ``fit``; write ``pretrained/bundled/posterior/``.

Pairs: every training render of the model (training styles Noto, Twemoji, Fluent Flat; 64 px; the ids in
the model's ``training.json``, so never a held-out calibration or test render) in ``--repeats`` seeded
augmented draws, each with a caption sampled like the training captions (label, tags, template). Class
batches of ``--num-candidates`` pairs; λ by marginal likelihood (exact log-determinant) at pseudo-count 1.
The benchmark (``python -m tools.shift_benchmark``) later chooses the pseudo-count on the calibration split.

    python scripts/fit_bundled.py [--repeats 3] [--num-candidates 1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bayesvlm_explain as bx  # noqa: E402
from bayesvlm_explain.bundled import bundled_dir  # noqa: E402
from bayesvlm_explain.data.pairs import InMemoryPairs  # noqa: E402
from tools import emoji  # noqa: E402
from tools.augment import augment, load_images  # noqa: E402
from tools.shift_benchmark import model_splits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-candidates", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=None, help="emoji data cache")
    ap.add_argument("--out", default=str(bundled_dir() / "posterior"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    concepts = {c.key: c for c in emoji.load_concepts(args.cache_dir)}
    train_ids = set(model_splits()["train"])  # refuses a model without recorded splits
    records = [r for r in emoji.build_dataset(emoji.TRAIN_STYLES, 64, args.cache_dir, write_manifest=False).records
               if emoji.render_id(r.style, r.key) in train_ids]
    if len(records) != len(train_ids):
        raise SystemExit(f"{len(train_ids) - len(records)} training renders are missing from the cache")
    raw = load_images(records)
    gen, rng = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    pairs = []
    for _ in range(args.repeats):
        x = (augment(raw, gen) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        pairs.extend((Image.fromarray(x[i]), emoji.sample_caption(concepts[r.key], rng))
                     for i, r in enumerate(records))
    order = list(range(len(pairs)))
    rng.shuffle(order)  # class batches mix styles and concepts, like training batches
    pairs = [pairs[i] for i in order]
    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    source = InMemoryPairs(pairs)
    source.description = (f"emoji training renders (train split) of {list(emoji.TRAIN_STYLES)}, {len(records)} x "
                          f"{args.repeats} augmented draws, sampled captions, seed {args.seed}")
    report = vlm.fit(source, num_candidates=args.num_candidates, batch_size=256)
    vlm.posterior.metadata["script"] = "scripts/fit_bundled.py"
    vlm.posterior.save(args.out)
    print(report)
    print(f"posterior written to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
