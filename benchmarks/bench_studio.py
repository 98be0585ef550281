"""Benchmark: the studio's answer time as a user's client sees it, split into library time, app overhead
and the floor that Gradio and the client cost whatever the app does.

The studio runs on the bundled model (or ``--model ViT-B-32``: random weights, the built-in posterior) in a
separate process (``studio_server.py --timings``). Two clients in
this process measure the round trip, image upload included:

* ``gradio_client`` (``Client.predict``), the Python client the README shows;
* ``HTTP``: the protocol the studio's own web page speaks (what a browser, gradio's JS client or any HTTP
  library sees): upload the file, join the queue, read the server-sent events until the result; one
  keep-alive connection, as a browser keeps.

The server times, for the same requests, its view function (*handler*: file check, decoding, library calls,
JSON, figure built) and the library calls inside it (*library*), plus the PNG encoding of the explain
figure. App overhead = round trip - handler. Then the same page is served again with ``--replay`` (each
view answers every call with its first answer: same components, same payloads, no library work), and the
same two clients give the **floor**: what a request costs in Gradio and the client alone.

* ``/predict``: 1 image x 10 prompts (library: encoding, the MC predictive and its entropy split, the
  yardstick's figures over the 93 labels);
* ``/explain``: integrated gradients, 16 steps, image-side variance of a prompt that is not the top one
  (library: the same plus the pixel and token attributions).

    python benchmarks/bench_studio.py [--repeats 15] [--threads 2] [--json benchmarks/bench_studio.json]
    python benchmarks/bench_studio.py --model ViT-B-32 --steps 8 --repeats 7 --json benchmarks/bench_studio_vitb32.json

Warm (two calls of each first), medians. Not a test: prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)
from studio_common import StudioServer  # noqa: E402


class HttpClient:
    """Gradio's queue protocol over one keep-alive ``httpx`` connection (as the studio's web page uses it)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(timeout=120)
        self.root = url.rstrip("/")
        config = self.http.get(f"{self.root}/config").json()
        self.fn_index = {d.get("api_name"): d.get("id", i) for i, d in enumerate(config["dependencies"])}

    def upload(self, path: str) -> dict[str, Any]:
        """Upload a file; returns the FileData that names it in a request."""
        with open(path, "rb") as fh:
            response = self.http.post(f"{self.root}/gradio_api/upload", files=[("files", (Path(path).name, fh))])
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}

    def predict(self, api_name: str, *data: Any) -> list[Any]:
        """Join the queue and read the events until the result; ``data`` as the endpoint's inputs."""
        session = uuid.uuid4().hex
        joined = self.http.post(f"{self.root}/gradio_api/queue/join",
                                json={"data": list(data), "fn_index": self.fn_index[api_name.lstrip("/")],
                                      "session_hash": session, "event_data": None, "trigger_id": None})
        joined.raise_for_status()
        with self.http.stream("GET", f"{self.root}/gradio_api/queue/data", params={"session_hash": session}) as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        if not msg.get("success"):
                            raise RuntimeError(f"{api_name} failed: {msg.get('output')}")
                        return msg["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``call`` in ms, after two warm calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _answer(outputs: Any) -> Any:
    """The JSON answer among an endpoint's outputs, without its wall times (which differ per call)."""
    answer = next((o for o in outputs if isinstance(o, dict) and "seconds" in o), outputs[-1])
    return {k: v for k, v in answer.items() if k != "seconds"} if isinstance(answer, dict) else answer


def measure(server: StudioServer, image: str, prompts: list[str], repeats: int,
            steps: int = 16) -> dict[str, dict[str, float]]:
    """Round trips of both clients on both endpoints, with the server's own timings of the same requests."""
    from gradio_client import Client, handle_file

    gc, http = Client(server.url, verbose=False), HttpClient(server.url)
    text = "\n".join(prompts)
    explain_args = (text, prompts[3], "image-side variance of the prompt", "integrated gradients", steps)
    calls = {
        "/predict": {"gradio_client": lambda: gc.predict(handle_file(image), text, api_name="/predict"),
                     "HTTP": lambda: http.predict("/predict", http.upload(image), text, None)},
        "/explain": {"gradio_client": lambda: gc.predict(handle_file(image), *explain_args, api_name="/explain"),
                     "HTTP": lambda: http.predict("/explain", http.upload(image), *explain_args, None)},
    }
    rows: dict[str, dict[str, float]] = {}
    for name, clients in calls.items():
        assert _answer(clients["gradio_client"]()) == _answer(clients["HTTP"]()), f"{name}: the two clients disagree"
        row: dict[str, float] = {}
        for client, call in clients.items():
            server.timings()
            row[f"{client}_ms"] = median_ms(call, repeats)
            measured = server.timings()
            row.update({f"{client}_{k.split('/')[-1]}": v for k, v in measured.items() if k.startswith(name + "/")})
        rows[name] = row
    return rows


def main() -> int:
    from bayesvlm_explain.data.labels import load_label_space
    from bayesvlm_explain.ui import bundled_examples

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--model", default="bundled",
                        help="'bundled', or an open_clip architecture with random weights (e.g. ViT-B-32)")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients steps of /explain")
    args = parser.parse_args()
    image = bundled_examples()[2][0]
    prompts = load_label_space().prompts()[:10]
    common = ("--threads", str(args.threads), "--model", args.model)
    with StudioServer(*common, "--timings") as server:
        real = measure(server, image, prompts, args.repeats, args.steps)
    with StudioServer(*common, "--replay") as server:
        floor = measure(server, image, prompts, args.repeats, args.steps)
    load = os.getloadavg()[0]
    print(f"{args.model} model, CPU, {args.threads} threads, load average {load:.1f}; medians of {args.repeats}; "
          f"/explain IG {args.steps} steps")
    print("| endpoint | client | round trip | handler | library | figure (PNG) | app overhead | floor (replay) |"
          " above the floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in real.items():
        for client in ("gradio_client", "HTTP"):
            rt, handler, low = r[f"{client}_ms"], r[f"{client}_handler_ms"], floor[name][f"{client}_ms"]
            fig = r.get(f"{client}_figure_png_ms")
            print(f"| {name} | {client} | {rt:.0f} ms | {handler:.0f} ms | {r[f'{client}_library_ms']:.0f} ms | "
                  f"{'-' if fig is None else f'{fig:.0f} ms'} | {rt - handler:.0f} ms | {low:.0f} ms | "
                  f"{rt - low:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "model": args.model, "steps": args.steps,
                                               "load_average": load, "threads": args.threads,
                                               "repeats": args.repeats, "rows": real, "floor": floor},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
