"""Benchmark: the Bayesian head against the plain zero-shot head at N = 32 images x C = 21,843 prompts, and the
float32 head and the default ``"auto"`` head against the float64 one (time ratio and error), side by side in one
run.

ViT-B-32 with random weights and the built-in B/32 posterior; image and text features are random at the real
dims (the towers are not timed). Each head gets its prompt side once per label set (``prompt_terms``) and is
then timed per image batch, as zero-shot classification uses it. The cases are timed round-robin (one call of
each per round, ``--repeats`` rounds, medians), so a shared machine's load falls on all of them alike.

    python benchmarks/bench_head_ratio.py --threads 2 --json benchmarks/bench_head_ratio.json
    python benchmarks/bench_head_ratio.py --markdown benchmarks/bench_head_ratio.json   # the docs' table
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from machine import (  # benchmarks/machine.py (run as a script: this folder is on sys.path)
    add_output_options,
    machine_info,
    printed_markdown,
    round_robin,
)

import bayesvlm_explain as bx
from bayesvlm_explain.adapters import Features
from bayesvlm_explain.predictive import probit_probs


def plain(img: torch.Tensor, txt_unit: torch.Tensor, scale: float) -> torch.Tensor:
    """The plain zero-shot head: normalise the images, one matmul with the normalised prompts, softmax."""
    return torch.softmax(scale * F.normalize(img, dim=-1) @ txt_unit.T, -1)


def bayes(head: Any, img: Features, terms: Any) -> torch.Tensor:
    """The Bayesian probit head on precomputed prompt terms."""
    mom = head.image_moments(img, terms)
    return probit_probs(mom.mean, mom.var)


def random_b32(images: int, prompts: int) -> tuple[bx.BayesVLM, Features, Features]:
    """ViT-B-32 with random weights and the built-in posterior, and random float32 features of ``images`` images
    and ``prompts`` prompts at its dims (seeded)."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    vlm = bx.BayesVLM(model, open_clip.get_tokenizer("ViT-B-32"), None, None, device="cpu", name="ViT-B-32/random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the built-in posterior was fitted for the trained weights
        vlm.posterior = bx.Posterior.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        act_i, act_t = torch.randn(images, 768, generator=gen), torch.randn(prompts, 512, generator=gen)
        return (vlm, Features(act_i, vlm.adapter.image.project(act_i)),
                Features(act_t, vlm.adapter.text.project(act_t)))


def b32_arguments(doc: str | None, prompts: int, argv: list[str] | None) -> argparse.Namespace:
    """``--images``, ``--prompts`` (default ``prompts``), ``--threads``, ``--repeats`` and the output options;
    sets the thread count."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=prompts)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    add_output_options(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    args = b32_arguments(__doc__, 21_843, argv)
    if printed_markdown(args, markdown):
        return 0
    vlm, img32, txt32 = random_b32(args.images, args.prompts)
    img64, txt64 = img32.to("cpu", torch.float64), txt32.to("cpu", torch.float64)
    tau = vlm.adapter.logit_scale
    unit32 = F.normalize(txt32.embeddings, dim=-1)
    unit64 = unit32.double()
    cases: dict[str, Any] = {
        "plain_float32": lambda: plain(img32.embeddings, unit32, tau),
        "plain_float64": lambda: plain(img64.embeddings, unit64, tau),
    }
    for variance in ("projected", "diagonal"):
        for dtype, img, txt in ((torch.float64, img64, txt64), (torch.float32, img32, txt32), ("auto", img32, txt32)):
            head = vlm.head(variance, dtype=dtype)  # "auto": the default (float32 here, results in float64)
            terms = head.prompt_terms(txt)
            name = f"bayes_{variance}_{str(dtype).split('.')[-1]}"
            cases[name] = lambda head=head, img=img, terms=terms: bayes(head, img, terms)
    timed = round_robin(cases, args.repeats)
    med, outputs = {k: v[0] for k, v in timed.items()}, {k: v[1] for k, v in timed.items()}
    rows = [{"case": k, "seconds": med[k], "vs_plain_float32": med[k] / med["plain_float32"],
             "vs_plain_float64": med[k] / med["plain_float64"]} for k in cases]
    errors = {}
    for variance in ("projected", "diagonal"):
        for kind in ("float32", "auto"):
            a, b = outputs[f"bayes_{variance}_{kind}"].double(), outputs[f"bayes_{variance}_float64"]
            errors[variance if kind == "float32" else f"{variance}_auto"] = float((a - b).abs().max() / b.abs().max())
    return reported(args, {"rows": rows, "float32_probit_error_relative": errors}, markdown)


def reported(args: argparse.Namespace, result: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> int:
    """Add the run's sizes and machine to ``result``, print its ``markdown`` table, write it to ``--json``; 0."""
    result = {"images": args.images, "prompts": args.prompts, "repeats": args.repeats, **result,
              "machine": machine_info()}
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The docs' table of one run (a JSON written by this script)."""
    m = r["machine"]
    lines = [f"N = {r['images']} x C = {r['prompts']:,}; {m['cpu']} ({m['cores']} cores), {m['torch_threads']} torch "
             f"threads, load average {m['load_average'][0]}, {m['date']}; medians of {r['repeats']} rounds", "",
             "| head (per image batch, prompt terms precomputed) | seconds | / plain float32 | / plain float64 |",
             "|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['case']} | {row['seconds']:.4f} | {row['vs_plain_float32']:.2f} | "
                     f"{row['vs_plain_float64']:.2f} |")
    err = ", ".join(f"{k} {v:.1e}" for k, v in r["float32_probit_error_relative"].items())
    lines += ["", f"float32 head vs float64, largest probit-probability error / largest probability: {err}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
