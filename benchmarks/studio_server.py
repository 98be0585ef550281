"""Serve the studio on the bundled model in this process and print its URL (for the load test and the
studio benchmark, which start it as a separate process so that the client side is measured as a user sees
it): ``python benchmarks/studio_server.py [--port 0] [--threads 2] [--max-queue 64]``."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    import torch

    import bayesvlm_explain as bx
    from bayesvlm_explain.ui import build_app, bundled_examples

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    app = build_app(vlm, examples=bundled_examples(), max_queue=args.max_queue, per_client=args.per_client)
    app.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True)
    print(f"URL {app.local_url}", flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    app.close()


if __name__ == "__main__":
    main()
