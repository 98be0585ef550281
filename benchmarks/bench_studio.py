"""Benchmark: the studio's answer time as a user's client sees it, split into library time and app overhead.

The studio runs on the bundled model in a separate process (:mod:`studio_server`); a ``gradio_client``
measures the round trip (image upload included). The same work is timed in this process without any web
layer: *handler* = the studio view function (file check, decoding, library calls, JSON, figure built),
*library* = the library calls alone. App overhead = round trip - handler.

* ``/predict``: 1 image x 10 prompts. Library: encode the image, the MC predictive and its entropy split,
  the yardstick's figures (93 labels).
* ``/explain``: integrated gradients, 16 steps, image-side variance of a prompt that is not the top one.
  Library: the same plus the pixel and token attributions. Figure: building and PNG-encoding the heatmap.

    python benchmarks/bench_studio.py [--repeats 15] [--threads 2] [--json benchmarks/bench_studio.json]

Warm (one call of each first), then interleaved rounds, medians; the in-process times are taken before
the client starts. Not a test: prints a table
and exits 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studio_common import StudioServer  # noqa: E402


def interleaved(timed: dict[tuple[str, str], Callable[[], object]], repeats: int) -> dict[tuple[str, str], list]:
    """Seconds per call of each function: one warm-up call each, then ``repeats`` rounds of all in turn (a
    change in machine load hits all alike)."""
    times: dict[tuple[str, str], list[float]] = {key: [] for key in timed}
    for fn in timed.values():
        fn()
    for _ in range(repeats):
        for key, fn in timed.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


def main() -> int:
    import torch
    from gradio_client import Client, handle_file

    import bayesvlm_explain as bx
    from bayesvlm_explain.explain import TokenAttribution, UncertaintyAttribution
    from bayesvlm_explain.ui import bundled_examples, views
    from bayesvlm_explain.ui.app import bundled_extras

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    ys, labels, _ = bundled_extras(vlm)
    image = bundled_examples()[2][0]
    prompts = labels[:10]
    text = "\n".join(prompts)
    other = prompts[3]

    def library_predict() -> None:
        feats = vlm.encode_images([views.open_upload(image)])
        views.entropy_parts(views.recommended_prediction(vlm, feats, prompts))
        ys.measure(vlm, feats)

    def library_explain() -> None:
        x = vlm.preprocess_images([views.open_upload(image)])
        views.entropy_parts(views.recommended_prediction(vlm, vlm.encode_images(x), prompts))
        UncertaintyAttribution(vlm, target="image_variance", num_samples=500).attribute(
            x, prompts, prompt_index=3, method="integrated_gradients", n_steps=16)
        TokenAttribution(vlm, target="text_variance").attribute(x, other, n_steps=16)

    figure = views.explain_prompt(vlm, image, text, other)["figure"]

    def encode_figure() -> None:
        figure.savefig(io.BytesIO(), format="png")

    local = {  # in this process, before any client exists (gradio_client's threads would slow it down)
        ("/predict", "handler_ms"): lambda: views.inspect_image(vlm, image, text, ys),
        ("/predict", "library_ms"): library_predict,
        ("/explain", "handler_ms"): lambda: views.explain_prompt(vlm, image, text, other),
        ("/explain", "library_ms"): library_explain,
        ("/explain", "figure_png_ms"): encode_figure,
    }
    times = interleaved(local, args.repeats)
    with StudioServer("--threads", str(args.threads)) as server:
        client = Client(server.url, verbose=False)
        times.update(interleaved({
            ("/predict", "round_trip_ms"): lambda: client.predict(handle_file(image), text, api_name="/predict"),
            ("/explain", "round_trip_ms"): lambda: client.predict(
                handle_file(image), text, other, "image-side variance of the prompt", "integrated gradients", 16,
                api_name="/explain"),
        }, args.repeats))
    rows: dict[str, dict[str, float]] = {}
    for (endpoint, what), values in times.items():
        rows.setdefault(endpoint, {})[what] = 1000 * statistics.median(values)
    for row in rows.values():
        row["app_overhead_ms"] = row["round_trip_ms"] - row["handler_ms"]
    load = os.getloadavg()[0]
    print(f"bundled model, CPU, {args.threads} threads, load average {load:.1f}; medians")
    print("| endpoint | round trip | handler | library | figure (PNG) | app overhead |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        fig = f"{r['figure_png_ms']:.0f} ms" if "figure_png_ms" in r else "-"
        print(f"| {name} | {r['round_trip_ms']:.0f} ms | {r['handler_ms']:.0f} ms | {r['library_ms']:.0f} ms | "
              f"{fig} | {r['app_overhead_ms']:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "threads": args.threads, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
