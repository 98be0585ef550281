"""Load test of the studio on the bundled model (a script: it takes minutes, not a unit test).

1. Every call made alone: ``CLIENTS x CALLS`` different /predict requests (different images, made by
   flipping / rotating / recolouring the bundled examples, and different prompt sets of 3-10 labels).
2. The same requests from ``CLIENTS`` concurrent clients: all must be answered and each answer must equal
   the one made alone (the JSON, exactly).
3. /predict latency of 4 normal clients (``--latency`` calls each) alone (the unloaded p95), then while a
   hostile client (one address: 16 simultaneous /call/explain joins with one session hash, a session-less
   /call/explain loop, and a zip of 1000 1-bit 6300x6300 PNGs sent to /select, over and over) runs beside
   them: every normal /predict must be answered (never "queue full" or "busy") with a p95 within
   ``--max-slowdown`` (3x) of the unloaded p95; the pixel-bomb zip must be refused (``bomb_refusal_s_median``
   includes its wait in the heavy lane behind the hostile's own explains; ``bomb_refusal_library_s`` is the
   refusal alone).
4. ``--mixed`` requests (predict 70%, compare 10%, batch of 2 10%, explain 10%) from 4 clients; server RSS
   after the first ``--warmup`` of them and at the end: growth must stay under ``--max-growth-mb``.

    python benchmarks/load_studio.py [--clients 8] [--calls 10] [--mixed 1000] [--json out]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def upload(url: str, path: str) -> dict:
    """Upload one file; its FileData reference for a /call body."""
    import httpx

    with open(path, "rb") as fp:
        ref = httpx.post(f"{url}gradio_api/upload", files={"files": (Path(path).name, fp)}, timeout=60).json()[0]
    return {"path": ref, "meta": {"_type": "gradio.FileData"}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Hostile:
    """One address attacking the heavy lane until ``stop`` is set; counts what it got."""

    def __init__(self, url: str, image: dict, bomb_zip: dict) -> None:
        self.url, self.image, self.bomb = url, image, bomb_zip
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}
        self.bomb_refusal_s: list[float] = []
        self.lock = threading.Lock()

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def explain_body(self) -> dict:
        return {"data": [self.image, "a cat\na dog", "", "total predictive entropy", "saliency", 4, None]}

    def joins(self) -> None:
        """Rounds of 16 simultaneous joins with one session hash."""
        import httpx

        rounds = 0
        while not self.stop.is_set():
            barrier = threading.Barrier(16)
            body = {**self.explain_body(), "session_hash": f"hostile{rounds}"}

            def one(body: dict = body, barrier: threading.Barrier = barrier) -> None:
                with httpx.Client(timeout=60) as http:
                    barrier.wait()
                    r = http.post(f"{self.url}gradio_api/call/explain", json=body)
                    self.count(f"joins_{r.status_code}")

            threads = [threading.Thread(target=one) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rounds += 1
            time.sleep(0.2)

    def loop(self) -> None:
        """A session-less /call loop that never reads its results."""
        import httpx

        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set():
                r = http.post(f"{self.url}gradio_api/call/explain", json=self.explain_body())
                self.count(f"loop_{r.status_code}")
                time.sleep(0.01)

    def bombs(self) -> None:
        """The pixel-bomb zip to /select, result read (it must be a refusal)."""
        import httpx

        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                start = time.perf_counter()
                r = http.post(f"{self.url}gradio_api/call/select",
                              # pool, prompts, targets, labelled zip, learner knobs (prior weight, steps, lr), scale
                              json={"data": [self.bomb, "a cat\na dog", None, None, 0.01, 100, 0.01, None]})
                if r.status_code != 200:
                    self.count(f"bomb_{r.status_code}")
                    time.sleep(0.1)
                    continue
                text = http.get(f"{self.url}gradio_api/call/select/{r.json()['event_id']}").text
                refused = "million pixels" in text
                self.count("bomb_refused" if refused else "bomb_other")
                if refused:
                    self.bomb_refusal_s.append(time.perf_counter() - start)
                time.sleep(0.1)


def timed_predicts(url: str, requests: list[tuple[str, str]], n: int) -> tuple[list[float], list[str]]:
    """``n`` /predict calls from one gradio client: latencies (s) and failure messages."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times, failures = [], []
    for i in range(n):
        image, prompts = requests[i % len(requests)]
        start = time.perf_counter()
        try:
            client.predict(handle_file(image), prompts, api_name="/predict")
            times.append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - the client raises plain exceptions with the message
            failures.append(str(err)[:120])
    return times, failures


def mixed(url: str, requests: list[tuple[str, str]], n: int, warmup: int, rss: Any) -> dict:
    """``warmup`` then ``n - warmup`` mixed requests from 4 clients; the server's RSS (idle) after each part
    and after every 200 requests of the second."""
    from gradio_client import Client, handle_file

    errors: list[str] = []
    clients = [Client(url, verbose=False) for _ in range(4)]

    def worker(k: int, lo: int, hi: int) -> None:
        client = clients[k]
        for i in range(lo + k, hi, 4):
            image, prompts = requests[i % len(requests)]
            kind = i % 10
            try:
                if kind < 7:
                    client.predict(handle_file(image), prompts, api_name="/predict")
                elif kind == 7:
                    client.predict(handle_file(image), "a {}", "a photo of a {}", "", "", prompts,
                                   api_name="/compare")
                elif kind == 8:
                    other = requests[(i + 1) % len(requests)][0]
                    client.predict([handle_file(image), handle_file(other)], prompts, api_name="/batch")
                else:
                    client.predict(handle_file(image), prompts, "", "epistemic uncertainty (BALD)",
                                   "integrated gradients", 16, api_name="/explain")
            except Exception as err:  # noqa: BLE001
                errors.append(str(err)[:120])

    def part(lo: int, hi: int) -> float:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: worker(k, lo, hi), range(4)))
        return rss()

    start = time.perf_counter()
    warm = part(0, warmup)
    marks = [part(lo, min(lo + 200, n)) for lo in range(warmup, n, 200)]
    return {"requests": n, "warmup": warmup, "seconds": time.perf_counter() - start, "errors": len(errors),
            "error_examples": errors[:3], "warm_rss_mb": warm, "rss_every_200_mb": marks,
            "growth_mb": marks[-1] - warm}


def pixel_bomb_zip(folder: Path) -> str:
    """A zip of 1000 1-bit 6300x6300 PNGs (about 214 KB)."""
    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG")
    path = folder / "bombs.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1000):
            zf.writestr(f"pool/{i:04d}.png", buf.getvalue())
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--latency", type=int, default=40, help="/predict calls per client for the p95s")
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--max-slowdown", type=float, default=3.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp, StudioServer("--max-queue", "32", "--per-client", "4") as server:
        requests = make_requests(args.clients * args.calls, Path(tmp))
        start = time.perf_counter()
        alone = [call(server.url, r) for r in requests]
        report["alone_s"] = time.perf_counter() - start
        start = time.perf_counter()
        together = run_clients(server.url, requests, args.clients)
        report["concurrent_s"] = time.perf_counter() - start
        report["answered"] = sum(r is not None for r in together)
        report["equal_to_alone"] = sum(a == b for a, b in zip(alone, together, strict=True))

        alone_times, _ = timed_predicts(server.url, requests, args.latency)
        report["one_client_predict_p95_s"] = percentile(alone_times, 0.95)
        with ThreadPoolExecutor(4) as pool:  # the 4 normal clients without the hostile: the unloaded p95
            parts = list(pool.map(lambda k: timed_predicts(server.url, requests[k::4], args.latency), range(4)))
        report["unloaded_predict_p95_s"] = percentile([x for times, _ in parts for x in times], 0.95)
        hostile = Hostile(server.url, upload(server.url, requests[0][0]),
                          upload(server.url, pixel_bomb_zip(Path(tmp))))
        attacks = [threading.Thread(target=f) for f in (hostile.joins, hostile.loop, hostile.bombs)]
        for t in attacks:
            t.start()
        time.sleep(2.0)  # the attack is under way before the normal clients start
        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(lambda k: timed_predicts(server.url, requests[k::4], args.latency), range(4)))
        hostile.stop.set()
        for t in attacks:
            t.join()
        loaded = [x for times, _ in parts for x in times]
        failures = [f for _, fails in parts for f in fails]
        report["hostile"] = {
            "loaded_predict_p95_s": percentile(loaded, 0.95), "normal_predicts": len(loaded) + len(failures),
            "normal_failures": len(failures), "failure_examples": failures[:3],
            "slowdown_p95": percentile(loaded, 0.95) / report["unloaded_predict_p95_s"],
            "attack_counts": hostile.counts,
            "bomb_refusal_s_median": statistics.median(hostile.bomb_refusal_s) if hostile.bomb_refusal_s else None}
        time.sleep(5.0)  # the hostile's admitted explains finish
        report["mixed"] = mixed(server.url, requests, args.mixed, args.warmup, server.rss_mb)
    from bayesvlm_explain.inputs import InputError
    from bayesvlm_explain.ui.archives import extracted

    with tempfile.TemporaryDirectory() as tmp:  # the bomb's refusal itself, without the queue wait
        bomb = pixel_bomb_zip(Path(tmp))
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            try:
                with extracted(bomb):
                    pass
            except InputError:
                seconds.append(time.perf_counter() - start)
        report["hostile"]["bomb_refusal_library_s"] = statistics.median(seconds)
    h = report["hostile"]
    ok = (report["answered"] == len(requests) and report["equal_to_alone"] == len(requests)
          and h["normal_failures"] == 0 and h["slowdown_p95"] <= args.max_slowdown
          and h["attack_counts"].get("bomb_refused", 0) > 0 and h["attack_counts"].get("bomb_other", 0) == 0
          and report["mixed"]["errors"] == 0 and report["mixed"]["growth_mb"] < args.max_growth_mb)
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
