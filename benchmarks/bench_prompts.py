"""Benchmark: encoding a real label set's prompts with the padding after the longest prompt cut off
(``Encoder.token_features``) against the full 77-position context, side by side in one run.

ViT-B-32 with random weights (the real text tower's shape; weights do not change the cost), the prompts
"a photo of a {class}." for the first ``--prompts`` ImageNet classes (open_clip's metadata), in batches of 64.
Both paths are timed round-robin (``--repeats`` rounds, medians) and their features compared.

    python benchmarks/bench_prompts.py --threads 2 --json benchmarks/bench_prompts.json
    python benchmarks/bench_prompts.py --markdown benchmarks/bench_prompts.json   # the docs' table
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import open_clip
import torch
from machine import (  # benchmarks/machine.py (run as a script: this folder is on sys.path)
    add_output_options,
    machine_info,
    printed_markdown,
    round_robin,
)
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from bayesvlm_explain.adapters import Features
from bayesvlm_explain.encoding import Encoder


def encode_all(encoder: Encoder, tokens: torch.Tensor, cut: bool) -> Features:
    """Features of ``tokens`` [C, 77] in the encoder's batches, with or without the padding cut."""
    encoder.pad_cut_exact = cut
    parts = [encoder.token_features(t) for t in tokens.split(encoder.batch_size)]
    return Features(torch.cat([p.activations for p in parts]), torch.cat([p.embeddings for p in parts]))


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    head = (f"{result['prompts']} prompts, ViT-B-32 text tower (random weights); {m['cpu']} ({m['cores']} cores), "
            f"{m['torch_threads']} torch threads, load average {m['load_average'][0]}, {m['date']}; "
            f"medians of {result['repeats']} rounds\n\n")
    rows = "\n".join(f"| {r['case']} | {r['positions']} | {r['seconds']:.2f} | {r['speedup']:.1f}× |"
                     for r in result["rows"])
    return (head + "| encoding | positions per prompt | seconds | speed-up |\n|---|---|---|---|\n" + rows
            + f"\n\nlargest change of an embedding / largest embedding: {result['max_rel_change']:.1e}; "
              f"the check on the first batch says exact: {result['checked_exact']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_output_options(ap)
    args = ap.parse_args(argv)
    if printed_markdown(args, markdown):
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights loaded"
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    encoder = Encoder(model.eval(), open_clip.get_tokenizer("ViT-B-32"), preprocess, torch.device("cpu"))
    prompts = [f"a photo of a {name}." for name in IMAGENET_CLASSNAMES[:args.prompts]]
    tokens = encoder.tokenize(prompts)
    encoder.pad_cut_exact = None
    encoder.token_features(tokens[:encoder.batch_size])  # the one-off check, as the first request makes it
    checked = bool(encoder.pad_cut_exact)
    timed = round_robin({"full": lambda: encode_all(encoder, tokens, cut=False),
                         "cut": lambda: encode_all(encoder, tokens, cut=True)}, args.repeats)
    full, cut = timed["full"][1].embeddings, timed["cut"][1].embeddings
    longest = [encoder.used_positions(b) for b in tokens.split(encoder.batch_size)]
    rows = [{"case": "full context", "positions": tokens.shape[1], "seconds": timed["full"][0], "speedup": 1.0},
            {"case": "padding cut after the batch's longest prompt", "positions": f"{min(longest)}–{max(longest)}",
             "seconds": timed["cut"][0], "speedup": timed["full"][0] / timed["cut"][0]}]
    result = {"prompts": args.prompts, "repeats": args.repeats, "rows": rows, "checked_exact": checked,
              "max_rel_change": float((cut - full).abs().max() / full.abs().max()), "machine": machine_info()}
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
