"""Load test of the studio on the bundled model (a script: it takes minutes, not a unit test).

1. Every call made alone: ``CLIENTS x CALLS`` different /predict requests (different images, made by
   flipping / rotating / recolouring the bundled examples, and different prompt sets of 3-10 labels).
2. The same requests from ``CLIENTS`` concurrent clients: all must be answered and each answer must equal
   the one made alone (the JSON, exactly).
3. Server memory (RSS of the server process) before and after ``--requests`` more concurrent requests;
   growth must stay under ``--max-growth-mb``. ``--explain N`` then makes 5 + N /explain calls and reports
   the growth over the last N (``explain_growth_mb``, not checked).

    python benchmarks/load_studio.py [--clients 8] [--calls 10] [--requests 300] [--explain 0] [--json out]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studio_common import StudioServer  # noqa: E402


def make_requests(n: int, folder: Path, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (image path, prompts text) pairs, all different."""
    from bayesvlm_explain.data.labels import load_label_space
    from bayesvlm_explain.ui import bundled_examples

    labels = load_label_space().prompts()
    sources = [Image.open(path).convert("RGB") for path, _ in bundled_examples()]
    rng = random.Random(seed)
    ops = [lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(90), ImageOps.invert,
           ImageOps.grayscale, lambda im: ImageOps.posterize(im, 3), lambda im: im.resize((48, 48))]
    out = []
    for i in range(n):
        img = ops[(i // len(sources)) % len(ops)](sources[i % len(sources)]).convert("RGB")
        path = folder / f"req{i:03d}.png"
        img.save(path)
        out.append((str(path), "\n".join(rng.sample(labels, rng.randint(3, 10)))))
    return out


def call(url: str, request: tuple[str, str]) -> dict:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    return client.predict(handle_file(request[0]), request[1], api_name="/predict")[3]


def run_clients(url: str, requests: list[tuple[str, str]], clients: int) -> list[dict]:
    """Each of ``clients`` threads holds one gradio_client and sends its share of ``requests`` in turn."""
    from gradio_client import Client, handle_file

    def worker(k: int) -> list[tuple[int, dict]]:
        client = Client(url, verbose=False)
        return [(i, client.predict(handle_file(requests[i][0]), requests[i][1], api_name="/predict")[3])
                for i in range(k, len(requests), clients)]

    results: dict[int, dict] = {}
    with ThreadPoolExecutor(clients) as pool:
        for part in pool.map(worker, range(clients)):
            results.update(part)
    return [results[i] for i in range(len(requests))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--explain", type=int, default=0)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp, StudioServer() as server:
        requests = make_requests(args.clients * args.calls, Path(tmp))
        start = time.perf_counter()
        alone = [call(server.url, r) for r in requests]
        report["alone_s"] = time.perf_counter() - start
        start = time.perf_counter()
        together = run_clients(server.url, requests, args.clients)
        report["concurrent_s"] = time.perf_counter() - start
        report["answered"] = sum(r is not None for r in together)
        report["equal_to_alone"] = sum(a == b for a, b in zip(alone, together, strict=True))
        rss_before = server.rss_mb()
        more = [requests[i % len(requests)] for i in range(args.requests)]
        start = time.perf_counter()
        run_clients(server.url, more, args.clients)
        report["memory_phase_s"] = time.perf_counter() - start
        rss_after = server.rss_mb()
        if args.explain:
            from gradio_client import Client, handle_file

            client = Client(server.url, verbose=False)

            def explain(i: int) -> None:
                image, prompts = requests[i % len(requests)]
                client.predict(handle_file(image), prompts, "", "epistemic uncertainty (BALD)",
                               "integrated gradients", 16, api_name="/explain")

            for i in range(5):  # warm-up: first-use allocations (captum, autograd) are not growth
                explain(i)
            rss_explain = server.rss_mb()
            for i in range(args.explain):
                explain(i)
            report["explain_growth_mb"] = server.rss_mb() - rss_explain
        report.update(rss_before_mb=rss_before, rss_after_mb=rss_after, growth_mb=rss_after - rss_before,
                      requests=len(requests), clients=args.clients, memory_requests=args.requests,
                      explain_calls=args.explain)
    ok = (report["answered"] == len(requests) and report["equal_to_alone"] == len(requests)
          and report["growth_mb"] < args.max_growth_mb)
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
