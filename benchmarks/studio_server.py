"""Serve the studio on the bundled model in this process and print its URL (for the load test and the
studio benchmark, which start it as a separate process so that the client side is measured as a user sees
it): ``python benchmarks/studio_server.py [--port 0] [--threads 2] [--max-queue 64] [--timings] [--replay]``.

With ``--timings`` the server times, per request, the studio's view function (*handler*) and the library
calls inside it (*library*: encoding, predictions, decompositions, yardstick, attributions; nested calls
counted once), and every PNG encoding of a figure; a line ``timings`` on stdin prints the medians in ms
as JSON and starts afresh. With ``--replay`` each timed view function computes its first answer and
then returns that same answer to every later call (no library work): the same page, components and
payloads, so a client's round trip against it is the floor that Gradio and the client cost per request.
Serves until stdin closes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


class Timings:
    """Per-request handler and library seconds, and figure encodings (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local = threading.local()
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.values[key].append(seconds)

    def handler(self, name: str, fn: Any, replay: bool = False) -> Any:
        answers: list[Any] = []

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            self.local.library, self.local.depth = 0.0, 0
            start = time.perf_counter()
            try:
                if replay and answers:
                    return answers[0]
                answers.append(fn(*args, **kwargs))
                return answers[-1]
            finally:
                self.add(f"{name}/handler_ms", time.perf_counter() - start)
                self.add(f"{name}/library_ms", self.local.library)
        return run

    def library(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self.local, "depth", 0)
            self.local.depth = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.depth = depth
                if depth == 0 and hasattr(self.local, "library"):
                    self.local.library += time.perf_counter() - start
        return run

    def medians_ms(self) -> dict[str, float]:
        with self.lock:
            out = {k: 1000 * statistics.median(v) for k, v in self.values.items() if v}
            self.values.clear()
        return out


def instrument(timings: Timings, replay: bool = False) -> None:
    """Wrap the studio's view functions (replaying their first answer with ``replay``) and the library calls
    they make."""
    from matplotlib.figure import Figure

    from bayesvlm_explain import explain
    from bayesvlm_explain.explain import TokenAttribution, UncertaintyAttribution
    from bayesvlm_explain.model import BayesVLM
    from bayesvlm_explain.ui.tabs import explain as explain_tab
    from bayesvlm_explain.ui.tabs import inspect as inspect_tab
    from bayesvlm_explain.yardstick import Yardstick

    inspect_tab.inspect_image = timings.handler("/predict", inspect_tab.inspect_image, replay)
    explain_tab.explain_prompt = timings.handler("/explain", explain_tab.explain_prompt, replay)
    for owner, name in ((BayesVLM, "encode_images"), (BayesVLM, "predict_features"),
                        (BayesVLM, "preprocess_images"), (Yardstick, "measure"),
                        (UncertaintyAttribution, "attribute"), (TokenAttribution, "attribute")):
        setattr(owner, name, timings.library(getattr(owner, name)))
    explain.decompose_uncertainty = timings.library(explain.decompose_uncertainty)
    savefig = Figure.savefig

    def timed_savefig(self: Figure, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return savefig(self, *args, **kwargs)
        finally:
            timings.add("/explain/figure_png_ms", time.perf_counter() - start)

    Figure.savefig = timed_savefig


def main() -> None:
    import torch

    import bayesvlm_explain as bx
    from bayesvlm_explain.ui import build_app, bundled_examples

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=16)
    parser.add_argument("--timings", action="store_true")
    parser.add_argument("--replay", action="store_true", help="views answer every call with their first answer")
    parser.add_argument("--model", default="bundled",
                        help="'bundled', or an open_clip architecture with random weights (bench_attribution.build)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timings = Timings()
    if args.timings or args.replay:
        instrument(timings, args.replay)
    if args.model == "bundled":
        vlm = bx.BayesVLM.from_pretrained(device="cpu")
    else:
        from bench_attribution import build  # random weights, the shipped posterior where there is one

        vlm = build(args.model)
    app = build_app(vlm, examples=bundled_examples(), max_queue=args.max_queue, per_client=args.per_client)
    app.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True)
    print(f"URL {app.local_url}", flush=True)
    for line in sys.stdin:  # serve until the parent closes our stdin
        if line.strip() == "timings":
            print("TIMINGS " + json.dumps(timings.medians_ms()), flush=True)
    app.close()


if __name__ == "__main__":
    main()
