"""Benchmark: one whole ``predict_features`` call (prompt side included, probit) with the head's default
``dtype="auto"`` against ``torch.float64`` and ``torch.float32``, side by side in one run (docs/numerics.md).

ViT-B-32 with random weights and the built-in B/32 posterior, random features at the real dims (the towers are
not timed); round-robin medians, so a shared machine's load falls on all three alike.

    python benchmarks/bench_head_dtype.py --threads 2 --json benchmarks/bench_head_dtype.json
"""

from __future__ import annotations

from typing import Any

import torch
from bench_head_ratio import (  # benchmarks/ (run as a script: this folder is on sys.path)
    b32_arguments,
    random_b32,
    reported,
)
from machine import printed_markdown, round_robin


def main(argv: list[str] | None = None) -> int:
    args = b32_arguments(__doc__, 1000, argv)
    if printed_markdown(args, markdown):
        return 0
    vlm, img, txt = random_b32(args.images, args.prompts)
    prompts = [f"prompt {i}" for i in range(args.prompts)]
    dtypes: dict[str, Any] = {"float64": torch.float64, "auto": "auto", "float32": torch.float32}
    timed = round_robin({k: lambda dt=dt: vlm.predict_features(img, txt, prompts, dtype=dt).probs
                         for k, dt in dtypes.items()}, args.repeats)
    ref = timed["float64"][1]
    rows = [{"dtype": k, "seconds": t, "float64_over_this": timed["float64"][0] / t,
             "probit_error_relative": float((p.double() - ref).abs().max() / ref.abs().max())}
            for k, (t, p) in timed.items()]
    return reported(args, {"rows": rows}, markdown)


def markdown(r: dict[str, Any]) -> str:
    """The docs' table of one run (a JSON written by this script)."""
    m = r["machine"]
    lines = [f"N = {r['images']} x C = {r['prompts']:,}, probit; {m['cpu']} ({m['cores']} cores), "
             f"{m['torch_threads']} torch threads, load average {m['load_average'][0]}, {m['date']}; "
             f"medians of {r['repeats']} rounds", "",
             "| head dtype | seconds | float64 / this | probit error / largest probability |", "|---|---|---|---|"]
    lines += [f"| {row['dtype']} | {row['seconds']:.4f} | {row['float64_over_this']:.2f}× | "
              f"{row['probit_error_relative']:.1e} |" for row in r["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
