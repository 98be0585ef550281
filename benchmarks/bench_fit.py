"""End-to-end fitting throughput on the CPU (pairs/s): decode + encode + KFAC factors + marginal likelihood.

Writes N synthetic image-text pairs (noise PNGs, numbered captions) to a temporary folder and fits the
posterior of the bundled model (or ``--model ViT-B-32`` with random weights) on them.

    python benchmarks/bench_fit.py [--pairs 2048] [--num-candidates 1024] [--model bundled] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

import bayesvlm_explain as bx


def make_pairs(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    with open(root / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "caption"])
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
            w.writerow([f"{i}.png", f"an emoji of thing number {i % 97}"])
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--num-candidates", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "bundled":
        vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    else:
        model, _, pre = open_clip.create_model_and_transforms(args.model, pretrained=None)
        vlm = bx.BayesVLM(model, open_clip.get_tokenizer(args.model), pre, device="cpu", name=args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_pairs(Path(tmp), args.pairs, max(vlm.image_size or (64, 64)))
        start = time.perf_counter()
        report = vlm.fit(data, num_candidates=args.num_candidates, batch_size=args.batch_size,
                         cache_dir=Path(tmp) / "cache", progress=False)
        total = time.perf_counter() - start
    print(f"{vlm.name}: {report.num_pairs} pairs, {report.num_class_batches} class batches of "
          f"{args.num_candidates}, {args.threads} threads")
    n = report.num_pairs
    print(f"  features (decode+encode): {report.feature_time_s:7.2f} s = {n / report.feature_time_s:8.1f} pairs/s")
    print(f"  KFAC factors:             {report.kfac_time_s:7.2f} s = {n / report.kfac_time_s:8.1f} pairs/s")
    print(f"  end to end (incl. λ):     {total:7.2f} s = {report.num_pairs / total:8.1f} pairs/s")
    print(f"  λ = {report.prior_precision}")


if __name__ == "__main__":
    main()
