"""Command line: ``bayesvlm-explain studio | predict | fit | yardstick | evaluate | …`` (``--help`` lists all)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .pretrained.registry import BUNDLED


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=BUNDLED,
                   help="open_clip model name, 'hf-hub:…', 'local-dir:…', or 'bundled' (default, offline)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    p.add_argument("--posterior", default=None,
                   help="posterior directory (ours, or the reference layout); default: the bundled one")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")


def _load(args: argparse.Namespace):
    from .model import BayesVLM

    return BayesVLM.from_pretrained(args.model, pretrained=args.pretrained, posterior=args.posterior,
                                    device=args.device)


def _port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (another server listens there)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def cmd_studio(args: argparse.Namespace) -> int:
    from .ui import build_app

    taken = f"error: port {args.port} on {args.host} is taken (another studio?); choose a free one with --port N"
    if _port_taken(args.host, args.port):
        print(taken, file=sys.stderr)
        return 2
    vlm = _load(args)
    app = build_app(vlm, examples=vlm.assets.examples or None,
                    max_queue=args.max_queue)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                   prevent_thread_lock=True, quiet=True)
    except OSError:  # taken between the check and the launch
        print(taken, file=sys.stderr)
        return 2
    print(f"bayesvlm-explain studio on {app.local_url}" + (f" and {app.share_url}" if app.share_url else ""),
          flush=True)
    app.block_thread()
    return 0


def cmd_export_space(args: argparse.Namespace) -> int:
    from .space import SpaceExportError, check_space, default_hardware, export_space

    existing = Path(args.dir).is_dir() and any(Path(args.dir).iterdir())
    try:
        if not (args.check and existing):
            export_space(args.dir, model=args.model, pretrained=args.pretrained, hardware=args.hardware,
                         posterior=args.posterior, with_bundled=args.with_bundled)
        hardware = args.hardware or (None if existing else default_hardware(args.model))
        checked = check_space(args.dir, hardware=hardware) if args.check else []
    except SpaceExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in checked:
        print(f"checked {line}")
    if not existing:
        print(f"Space written to {args.dir}; to publish (docs/hosting.md): create a Gradio Space on huggingface.co,"
              f" then\n  cd {args.dir} && git init -b main && git lfs install && git add . && git commit -m space\n"
              "  git remote add origin https://huggingface.co/spaces/USER/NAME && git push -f origin main")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inputs import InputError
    from .ui import TABLE_HEADERS, prediction_table

    if not Path(args.image).is_file():
        raise InputError(f"{args.image}: file not found")
    vlm = _load(args)
    rows = prediction_table(vlm, args.image, "\n".join(args.prompts))
    print("\t".join(TABLE_HEADERS))
    for row in rows:
        print("\t".join(str(x) for x in row))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os

    import torch

    from .fitting import FitError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=args.backend)  # launched by torchrun
    lam = None
    if args.prior_precision:
        vals = [float(v) for v in args.prior_precision.split(",")]
        lam = vals[0] if len(vals) == 1 else (vals[0], vals[1])
    vlm = _load(args)
    try:
        report = vlm.fit(args.data, num_candidates=args.num_candidates, batch_size=args.batch_size,
                         shard_size=args.shard_size, cache_dir=args.cache or os.path.join(args.out, "cache"),
                         pseudo_count=args.pseudo_count, prior_precision=lam, marglik=args.marglik)
    except (FitError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        vlm.posterior.metadata["pretrained"] = args.pretrained
        vlm.posterior.save(args.out)
        print(json.dumps(dataclasses.asdict(report), indent=2))
        print(f"posterior written to {args.out}")
    return 0


def cmd_yardstick(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import EvaluationError, read_classnames
    from .yardstick import YardstickError, build_from_data

    vlm = _load(args)
    if vlm.posterior is None:
        print(f"error: no posterior for {vlm.name}; pass --posterior DIR (see `bayesvlm-explain fit`)",
              file=sys.stderr)
        return 2
    try:
        names = read_classnames(args.classnames) if args.classnames else None
        ys = build_from_data(vlm, args.data, classnames=names, template=args.template,
                             cache_dir=args.cache or Path(args.out) / "cache", num_samples=args.mc_samples,
                             seed=args.seed, false_alarm=args.false_alarm or None,
                             batch_size=args.batch_size)
    except (EvaluationError, YardstickError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"wrote {ys.save(args.out)} ({ys.reference}, {len(ys.prompts)} classes)")
    if ys.rule is not None:
        rates = ", ".join(f"{k} {v:.1%}" for k, v in ys.rule.flag_rates.items()) or "not measured"
        print(f"out-of-domain rule: {ys.rule.figure} percentile >= {ys.rule.percentile:g} (flagged: {rates})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import EvaluationError, evaluate, read_classnames, summary_markdown, write_report

    vlm = _load(args)
    try:
        names = read_classnames(args.classnames) if args.classnames else None
        result = evaluate(vlm, args.data, classnames=names, template=args.template, predictive=args.predictive,
                           num_samples=args.mc_samples, pseudo_count=args.pseudo_count,
                           prior_precision=args.prior_precision, cache_dir=args.cache or Path(args.out) / "cache",
                           batch_size=args.batch_size, seed=args.seed)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_report(result, args.out)
    report = result.report
    print(summary_markdown(report))
    print(f"written to {path} (features {'from the cache' if report['cache']['hit'] else 'computed'}, "
          f"{report['seconds']['total']:.1f} s)")
    return 0


def cmd_active_learning(args: argparse.Namespace) -> int:
    from .evaluation.active_learning import (
        config_from_arguments,
        folder_active_learning_data,
        run_active_learning,
        summary_markdown,
        write_results,
    )
    from .evaluation.evaluate import EvaluationError, read_classnames

    vlm = _load(args)
    feature_cache = args.feature_cache or str(Path.home() / ".cache" / "bayesvlm_explain" / "features")
    try:
        if not args.pool:
            raise EvaluationError("--pool is required (the bundled model's emoji experiment is "
                                  "`python -m tools.emoji_active_learning` in the repository)")
        if not args.test:
            raise EvaluationError("--pool needs --test (labelled images of the target domain)")
        names = read_classnames(args.classnames) if args.classnames else None
        data = folder_active_learning_data(vlm, args.pool, args.test, target=args.target, val=args.val,
                                           classnames=names,
                                           template=args.template, cache_dir=feature_cache)
        payload = run_active_learning(vlm, data, config_from_arguments(args),
                                      progress=lambda line: print(line, flush=True))
    except (EvaluationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    payload["settings"].update(model=vlm.name, target_style=None)
    path = write_results(payload, args.out)
    print(summary_markdown(payload))
    print(f"written to {path}")
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
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.set_defaults(func=cmd_studio)
    p = sub.add_parser("export-space", help="write a Hugging Face Space folder that runs the studio")
    p.add_argument("dir", help="new or empty folder to write")
    p.add_argument("--model", default=BUNDLED, help="'bundled' (default) or an open_clip model name / 'hf-hub:…'")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag, e.g. laion2b_s34b_b79k")
    p.add_argument("--posterior", default=None, help="posterior folder to ship (default: bundled or built-in)")
    p.add_argument("--hardware", default=None,
                   help="'zerogpu' (pins Python and torch for ZeroGPU) or a suggested_hardware flavour "
                        "(default cpu-basic for bundled, zerogpu otherwise)")
    p.add_argument("--with-bundled", action="store_true", help="also ship the bundled model with a hub model")
    p.add_argument("--check", action="store_true",
                   help="validate the folder as the Hub would (only validate if DIR is an existing Space)")
    p.set_defaults(func=cmd_export_space)
    p = sub.add_parser("predict", help="print per-prompt logit mean, std and probabilities for one image")
    _add_model_args(p)
    p.add_argument("image")
    p.add_argument("prompts", nargs="+")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("fit", help="fit the posterior on image-text pairs (works under torchrun)")
    _add_model_args(p)
    p.add_argument("--data", required=True,
                   help="captions file (.csv/.jsonl), folder with one, or WebDataset tar shards (glob/braces)")
    p.add_argument("--out", required=True, help="posterior directory to write")
    p.add_argument("--num-candidates", type=int, default=32768, help="pairs per class batch (candidate set)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per encoder call")
    p.add_argument("--shard-size", type=int, default=None, help="pairs per feature-cache shard")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache); reused to resume")
    p.add_argument("--pseudo-count", type=float, default=1.0, help="n of the posterior")
    p.add_argument("--prior-precision", default=None, help="fixed lambda, or 'img,txt'; default: marglik")
    p.add_argument("--marglik", choices=["exact", "reference"], default="exact")
    p.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("yardstick", help="build the yardstick (percentiles, out-of-domain flag) of a model and "
                                         "posterior from labelled in-domain images")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="in-domain images: one sub-folder per class, a labels CSV/JSONL, "
                                                 "or WebDataset tar shards")
    p.add_argument("--out", required=True, help="folder for yardstick.json: the posterior's, so it loads with it")
    p.add_argument("--classnames", default=None, help="text file, one class name per line (default: the data's)")
    p.add_argument("--template", default=None,
                   help="prompt template with one {} (default: the model's, else 'a photo of a {}.')")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--mc-samples", type=int, default=1000)
    p.add_argument("--false-alarm", type=float, default=0.1,
                   help="in-domain false-alarm rate of the out-of-domain flag (joint figure); 0: no flag")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_yardstick)
    p = sub.add_parser("evaluate", help="accuracy, calibration and misclassification detection on labelled images")
    _add_model_args(p)
    p.add_argument("--data", required=True,
                   help="image folder with one sub-folder per class, a labels CSV/JSONL (path + caption = class "
                        "name), or WebDataset tar shards (glob/braces)")
    p.add_argument("--classnames", default=None, help="text file, one class name per line (default: folders/labels)")
    p.add_argument("--template", default="a photo of a {}.", help="prompt template with one {} for the class name")
    p.add_argument("--out", default="evaluation", help="folder for evaluation.json/.md and reliability.png")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--predictive", choices=["probit", "mc", "map"], default="probit")
    p.add_argument("--mc-samples", type=int, default=1000)
    p.add_argument("--pseudo-count", type=float, default=None, help="posterior n (lambda re-optimised unless given)")
    p.add_argument("--prior-precision", type=float, default=None, help="posterior lambda (both sides)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("active-learning",
                       help="choose labels by random/MAP entropy/entropy/BALD/EPIG/targeted, adapt the image "
                            "projection, score a target")
    _add_model_args(p)
    p.add_argument("--out", default="assets/active_learning", help="folder for active_learning.json/.md/.png")
    p.add_argument("--pool", default=None, help="own data: labelled pool (image folder / labels CSV / shards)")
    p.add_argument("--test", default=None, help="own data: labelled test images of the target domain")
    p.add_argument("--val", default=None,
                   help="own data: labelled validation images of the target domain (for --knob-grid)")
    p.add_argument("--target", default=None,
                   help="own data: unlabelled targets for EPIG / targeted (default: --val, else the test images)")
    p.add_argument("--classnames", default=None, help="own data: text file, one class name per line")
    p.add_argument("--template", default="a photo of a {}.", help="own data: prompt template with one {}")
    p.add_argument("--feature-cache", default=None, help="feature cache (default ~/.cache/bayesvlm_explain/features)")
    p.add_argument("--k", type=int, default=10, help="labels chosen per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--strategies", default="random,map_entropy,entropy,bald,epig",
                   help="comma-separated, some of random, map_entropy (the paper's Entropy: MAP softmax), entropy "
                        "(posterior predictive), bald, epig, targeted_map_entropy")
    p.add_argument("--pool-fraction", type=float, default=0.5, help="share of the pool drawn per seed")
    p.add_argument("--num-targets", type=int, default=64, help="EPIG target inputs drawn per seed")
    p.add_argument("--mc-samples", type=int, default=64, help="joint posterior draws per scoring")
    p.add_argument("--steps", type=int, default=300, help="learner: Adam steps of the adaptation")
    p.add_argument("--lr", type=float, default=1e-2, help="learner: Adam learning rate")
    p.add_argument("--prior-weight", type=float, default=1e-3,
                   help="learner: weight of the posterior as prior in the adaptation (1: exact Bayesian update, "
                        "0: plain fine-tuning)")
    p.add_argument("--knob-grid", default=None,
                   help="learner settings prior_weight:steps:lr, comma-separated, to choose from on a validation "
                        "split (needs one; the library's run_active_learning with ActiveLearningData.val)")
    p.add_argument("--neighbour-distance", choices=["cosine", "wasserstein"], default="cosine",
                   help="targeted strategy: map targets to pool images by cosine or the 2-Wasserstein distance "
                        "of the embedding posteriors (the paper's default)")
    p.add_argument("--no-sanity", action="store_true",
                   help="skip the learner's sanity runs (support-set fit, ceilings) before the strategies")
    p.set_defaults(func=cmd_active_learning)
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
