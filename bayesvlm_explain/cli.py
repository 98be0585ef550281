"""Command line: ``bayesvlm-explain studio | predict`` (and the commands other modules register)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled",
                   help="open_clip model name, 'hf-hub:…', 'local-dir:…', or 'bundled' (default, offline)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    p.add_argument("--posterior", default=None,
                   help="posterior directory (ours, or the reference layout); default: the bundled one")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def _load(args: argparse.Namespace):
    from .model import BayesVLM

    return BayesVLM.from_pretrained(args.model, pretrained=args.pretrained, posterior=args.posterior,
                                    device=args.device)


def cmd_studio(args: argparse.Namespace) -> int:
    from .ui import build_app, bundled_examples

    vlm = _load(args)
    app = build_app(vlm, examples=bundled_examples() if args.model == "bundled" else None,
                    max_queue=args.max_queue)
    app.launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .ui import TABLE_HEADERS, prediction_table

    vlm = _load(args)
    rows = prediction_table(vlm, args.image, "\n".join(args.prompts))
    print("\t".join(TABLE_HEADERS))
    for row in rows:
        print("\t".join(str(x) for x in row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesvlm-explain",
                                     description="Post-hoc Bayesian uncertainty for CLIP-style models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("studio", help="launch the Gradio studio")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting at most (more are refused)")
    p.set_defaults(func=cmd_studio)
    p = sub.add_parser("predict", help="print per-prompt logit mean, std and probabilities for one image")
    _add_model_args(p)
    p.add_argument("image")
    p.add_argument("prompts", nargs="+")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .inputs import InputError
    from .posterior import PosteriorError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, PosteriorError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
