"""Benchmark: the studio's answer time as a user's client sees it, split into library time and app overhead.

The studio runs on the bundled model in a separate process (``studio_server.py --timings``); a
``gradio_client`` in this process measures the round trip (image upload included), and the server measures,
for the same requests, its view function (*handler*: file check, decoding, library calls, JSON, figure
built) and the library calls inside it (*library*), plus the PNG encoding of the explain figure.
App overhead = round trip - handler (upload, queue, pre/post-processing, HTTP, the client).

* ``/predict``: 1 image x 10 prompts (library: encoding, the MC predictive and its entropy split, the
  yardstick's figures over the 93 labels);
* ``/explain``: integrated gradients, 16 steps, image-side variance of a prompt that is not the top one
  (library: the same plus the pixel and token attributions).

    python benchmarks/bench_studio.py [--repeats 15] [--threads 2] [--json benchmarks/bench_studio.json]

Warm (two calls of each first), medians. Not a test: prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studio_common import StudioServer  # noqa: E402


def main() -> int:
    from gradio_client import Client, handle_file

    from bayesvlm_explain.data.labels import load_label_space
    from bayesvlm_explain.ui import bundled_examples

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    image = bundled_examples()[2][0]
    prompts = load_label_space().prompts()[:10]
    text = "\n".join(prompts)
    calls = {
        "/predict": lambda c: c.predict(handle_file(image), text, api_name="/predict"),
        "/explain": lambda c: c.predict(handle_file(image), text, prompts[3], "image-side variance of the prompt",
                                        "integrated gradients", 16, api_name="/explain"),
    }
    rows: dict[str, dict[str, float]] = {}
    with StudioServer("--threads", str(args.threads), "--timings") as server:
        client = Client(server.url, verbose=False)
        for name, call in calls.items():
            for _ in range(2):  # warm
                call(client)
            server.timings()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call(client)
                times.append(time.perf_counter() - start)
            measured = server.timings()
            row = {k.split("/")[-1]: v for k, v in measured.items() if k.startswith(name + "/")}
            row["round_trip_ms"] = 1000 * statistics.median(times)
            row["app_overhead_ms"] = row["round_trip_ms"] - row["handler_ms"]
            rows[name] = row
    load = os.getloadavg()[0]
    print(f"bundled model, CPU, {args.threads} threads, load average {load:.1f}; medians of {args.repeats}")
    print("| endpoint | round trip | handler | library | figure (PNG) | app overhead |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        fig = f"{r['figure_png_ms']:.0f} ms" if "figure_png_ms" in r else "-"
        print(f"| {name} | {r['round_trip_ms']:.0f} ms | {r['handler_ms']:.0f} ms | {r['library_ms']:.0f} ms | "
              f"{fig} | {r['app_overhead_ms']:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "threads": args.threads,
                                               "repeats": args.repeats, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
