"""Start-up cost a user feels, as ratios to ``import torch, open_clip`` measured in the same run.

Each measurement runs in a fresh Python process (so nothing is imported yet), the kinds interleaved and
repeated; the child times itself with ``time.perf_counter`` (interpreter start-up excluded). Medians.

* ``baseline``: ``import torch, open_clip``;
* ``import``: ``import bayesvlm_explain``;
* ``bundled``: ``import bayesvlm_explain`` + ``BayesVLM.from_pretrained("bundled")`` (model, tokenizer,
  posterior), and the ``from_pretrained`` part alone.

    python benchmarks/bench_startup.py [--repeats 5] [--json benchmarks/bench_startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent

CHILD = {
    "baseline": "import time; t=time.perf_counter(); import torch, open_clip; print(time.perf_counter()-t, 0)",
    "import": "import time; t=time.perf_counter(); import bayesvlm_explain; print(time.perf_counter()-t, 0)",
    "bundled": ("import time; t=time.perf_counter(); import bayesvlm_explain as bx; t1=time.perf_counter(); "
                "bx.BayesVLM.from_pretrained('bundled', device='cpu'); t2=time.perf_counter(); "
                "print(t2-t, t2-t1)"),
}


def run_child(kind: str, threads: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    env.pop("BAYESVLM_BUNDLED_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD[kind]], capture_output=True, text=True, check=True,
                         env=env, cwd=ROOT)
    total, part = out.stdout.split()[-2:]
    return float(total), float(part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in CHILD}
    run_child("bundled", args.threads)  # warm the OS file cache once
    for _ in range(args.repeats):
        for kind in CHILD:
            times[kind].append(run_child(kind, args.threads))
    med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    load_only = statistics.median(p for _, p in times["bundled"])
    base = med["baseline"]
    result = {
        "seconds": {"import torch, open_clip": base, "import bayesvlm_explain": med["import"],
                    "import + from_pretrained('bundled')": med["bundled"],
                    "from_pretrained('bundled') alone": load_only},
        "ratio_to_import_torch_open_clip": {"import bayesvlm_explain": med["import"] / base,
                                            "import + from_pretrained('bundled')": med["bundled"] / base},
        "repeats": args.repeats, "threads": args.threads, "python": sys.version.split()[0],
        "machine": machine_info(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
