"""Benchmark: cost of the uncertainty attributions on the CPU, in units of one forward+backward pass.

The unit is one forward+backward pass of the same target on the same image batch (the cost of one
gradient, i.e. of Saliency). Goal: Integrated Gradients with ``n_steps`` points costs at most
``1.2 × n_steps`` units (batched steps, no wasted passes).

It also times the studio's Explain view (``explain_prompt``: prediction, pixel IG, token IG and figures for
one image; goal about 1.5 s at ViT-B/32 on 2 cores) at the fast default (8 steps) and the precise setting
(32), and the token attribution with the padding cut off against the full context, side by side. The
JSON records the machine, threads, load average and date (``machine.py``); ``--markdown FILE`` prints the
docs' table from a JSON written earlier, so the docs quote figures of one run.

    python benchmarks/bench_attribution.py --threads 2 --json benchmarks/bench_attribution_vitb32.json
    python benchmarks/bench_attribution.py --model bundled     # the bundled emoji model, if present
    python benchmarks/bench_attribution.py --markdown benchmarks/bench_attribution_vitb32.json

Not a test: it prints a table and exits 0 (also when ``--model bundled`` finds no bundled model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from machine import (  # benchmarks/machine.py (run as a script: this folder is on sys.path)
    add_output_options,
    machine_info,
    printed_markdown,
    round_robin,
)

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_WEIGHTS = ROOT / "bayesvlm_explain" / "pretrained" / "bundled" / "open_clip_model.safetensors"
PROMPTS = [f"a photo of a {c}" for c in ("cat", "dog", "truck", "flower", "car", "bird", "house", "tree")]


def random_spd(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random dense symmetric positive-definite matrix [n, n] (float64)."""
    m = torch.randn(n, n + 3, generator=gen, dtype=torch.float64)
    return m @ m.T / n + 0.05 * torch.eye(n, dtype=torch.float64)


def random_posterior(vlm: Any, seed: int = 0) -> Any:
    import bayesvlm_explain as bx

    gen = torch.Generator().manual_seed(seed)
    sides = {}
    for side in ("image", "text"):
        p, d = vlm.projection_dims(side)
        sides[side] = bx.KronPosterior(random_spd(p, gen), random_spd(d, gen), prior_precision=10.0)
    return bx.Posterior(sides["image"], sides["text"], {"model": vlm.name})


def build(model: str) -> Any | None:
    import open_clip

    import bayesvlm_explain as bx
    from bayesvlm_explain.posterior import Posterior
    from bayesvlm_explain.pretrained.registry import known_posterior_dir

    if model == "bundled":
        if not BUNDLED_WEIGHTS.is_file():
            print(f"skipped: no bundled model at {BUNDLED_WEIGHTS.relative_to(ROOT)} (not trained yet)")
            return None
        vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    else:
        torch.manual_seed(0)
        net = open_clip.create_model(model, pretrained=None)
        size = net.visual.image_size
        size = size if isinstance(size, int) else size[0]
        vlm = bx.BayesVLM(net, open_clip.get_tokenizer(model), open_clip.image_transform(size, is_train=False),
                          device="cpu", name=f"{model}/random")
    if vlm.posterior is None:
        shipped = known_posterior_dir(model, "laion2b_s34b_b79k") if model != "bundled" else None
        vlm.posterior = Posterior.load(shipped) if shipped else random_posterior(vlm)
    return vlm


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median wall time (s) over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights) or 'bundled'")
    ap.add_argument("--target", default="image_variance",
                    choices=["image_variance", "text_variance", "variance", "mean", "entropy", "aleatoric",
                             "epistemic"])
    ap.add_argument("--images", type=int, default=1, help="images per attribution call")
    ap.add_argument("--steps", type=int, default=32, help="IG integration points")
    ap.add_argument("--nt-samples", type=int, default=8, help="SmoothGrad noisy samples")
    ap.add_argument("--batch", type=int, default=32, help="internal batch size (inputs per pass)")
    ap.add_argument("--samples", type=int, default=1000, help="MC draws of entropy targets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the unit pass (median)")
    ap.add_argument("--method-repeats", type=int, default=3, help="repeats of each method (median, after a warm-up)")
    ap.add_argument("--explain-repeats", type=int, default=5,
                    help="round-robin rounds of the Explain view and of the token cut/full comparison (median)")
    add_output_options(ap)
    args = ap.parse_args(argv)
    if printed_markdown(args, markdown):
        return 0

    torch.set_num_threads(args.threads)
    from bayesvlm_explain.explain import UncertaintyAttribution, model_patch_size

    vlm = build(args.model)
    if vlm is None:
        return 0
    size = vlm.image_size
    x = torch.randn(args.images, 3, *size, generator=torch.Generator().manual_seed(0))
    ua = UncertaintyAttribution(vlm, args.target, num_samples=args.samples, internal_batch_size=args.batch)
    forward = ua.target_function(PROMPTS, prompt_index=0)

    def unit() -> torch.Tensor:
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(forward(xx).sum(), xx)
        return g

    def forward_only() -> torch.Tensor:
        with torch.no_grad():
            return forward(x)

    unit()  # warm-up (allocator, oneDNN kernels, prompt cache)
    t_unit, _ = timed(unit, args.repeats)
    t_fwd, _ = timed(forward_only, args.repeats)
    rows: list[dict[str, Any]] = []
    calls = {
        "integrated_gradients": dict(method="integrated_gradients", n_steps=args.steps),
        "saliency": dict(method="saliency"),
        "smoothgrad": dict(method="smoothgrad", nt_samples=args.nt_samples),
        "occlusion": dict(method="occlusion"),
    }
    for name, kw in calls.items():
        ua.attribute(x, PROMPTS, 0, **kw)  # warm-up: first pass at a new batch shape sets up kernels
        t, res = timed(lambda kw=kw: ua.attribute(x, PROMPTS, 0, **kw), args.method_repeats)
        row = {"method": name, "seconds": t, "units": t / t_unit}
        if name == "integrated_gradients":
            row["units_per_step"] = t / t_unit / args.steps
            row["max_rel_delta"] = float((res.delta.abs() / (res.target_values - res.baseline_values).abs()).max())
        if name == "smoothgrad":
            row["units_per_sample"] = t / t_unit / args.nt_samples
        if name == "occlusion":
            n_windows = res.attributions[0, 0].numel() // (res.settings["sliding_window"][0]
                                                            * res.settings["sliding_window"][1])
            row["windows"] = n_windows
            row["units_per_window"] = t / t_unit / n_windows
        rows.append(row)

    print(f"model {vlm.name} | image {tuple(size)} | patch {model_patch_size(vlm.model)}"
          f" | target {args.target} | images {args.images} | prompts {len(PROMPTS)} | threads {args.threads}"
          f" | batch {args.batch}")
    print(f"unit: forward+backward {t_unit * 1e3:.1f} ms (forward only {t_fwd * 1e3:.1f} ms)")
    for r in rows:
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k not in ("method", "seconds", "units"))
        print(f"  {r['method']:<22} {r['seconds']:8.2f} s  {r['units']:7.2f} units" + (f"  ({extra})" if extra else ""))
    ig = rows[0]
    goal = 1.2 * args.steps
    verdict = "meets" if ig["units"] <= goal else "MISSES"
    print(f"IG {args.steps} steps: {ig['units']:.2f} units {verdict} the goal of <= {goal:.1f} units")
    result = {"model": vlm.name, "target": args.target, "threads": args.threads, "images": args.images,
              "unit_seconds": t_unit, "forward_seconds": t_fwd, "methods": rows,
              "tokens": token_rows(vlm, x[:1], args.explain_repeats),
              "explain": explain_rows(vlm, unit, args.explain_repeats)}
    result["machine"] = machine_info()
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def token_rows(vlm: Any, image: torch.Tensor, repeats: int, steps: int = 16) -> dict[str, Any]:
    """Token IG of one prompt with the padding cut off (the default) and on the full context, round-robin."""
    from bayesvlm_explain.explain import TokenAttribution

    feats = vlm.encode_images(image)
    vlm.encode_prompts(PROMPTS)  # the encoder's verdict on the padding cut, as after a prediction
    ta = TokenAttribution(vlm)
    verdict = vlm.encoder.pad_cut_exact

    def run(cut: bool) -> Any:
        vlm.encoder.pad_cut_exact = verdict if cut else False  # False: the full-context path
        try:
            return ta.attribute(feats, PROMPTS[0], n_steps=steps)
        finally:
            vlm.encoder.pad_cut_exact = verdict

    timed_cases = round_robin({"cut": lambda: run(True), "full": lambda: run(False)}, repeats)
    out: dict[str, Any] = {"steps": steps, "prompt": PROMPTS[0]}
    for name, (t, res) in timed_cases.items():
        out[name] = {"seconds": t, "positions": res.positions, "scores": res.scores.tolist()}
    out["speedup"] = out["full"]["seconds"] / out["cut"]["seconds"]
    cut, full = torch.tensor(out["cut"]["scores"]), torch.tensor(out["full"]["scores"])
    out["max_score_difference_relative"] = float((cut - full).abs().max() / full.abs().max())
    return out


def explain_rows(vlm: Any, unit: Any, repeats: int) -> list[dict[str, Any]]:
    """The studio's Explain view on one 320×240 image and the 8 prompts (IG at 8 and 32 steps, saliency),
    round-robin with ``unit`` (one forward+backward pass of the image target), so ratios share the load.
    One :class:`BaselineCache` serves every call, as the page keeps one (its first call, the warm-up, encodes
    the grey image)."""
    import numpy as np
    from PIL import Image

    from bayesvlm_explain.explain.attribution import BaselineCache
    from bayesvlm_explain.ui.tabs.explain import FAST_STEPS, PRECISE_STEPS, explain_prompt

    path = Path("/tmp") / f"bench_attribution_{time.time_ns()}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    settings = {"ig_fast": ("integrated_gradients", FAST_STEPS), "ig_precise": ("integrated_gradients", PRECISE_STEPS),
                "saliency": ("saliency", FAST_STEPS)}
    cases: dict[str, Any] = {"unit": unit}
    cache = BaselineCache()
    for name, (method, steps) in settings.items():
        cases[name] = lambda method=method, steps=steps: explain_prompt(
            vlm, str(path), "\n".join(PROMPTS), method=method, steps=steps, baseline_cache=cache).json
    try:
        timed_cases = round_robin(cases, repeats)
    finally:
        path.unlink(missing_ok=True)
    t_unit = timed_cases["unit"][0]
    rows = []
    for name, (method, steps) in settings.items():
        t, payload = timed_cases[name]
        delta, total = payload["attribution"]["delta"], payload["attribution"]["sum"]
        rows.append({"method": method, "steps": steps, "seconds": t, "unit_seconds": t_unit,
                     "units": t / t_unit, "last_call_seconds": payload["seconds"],
                     "relative_delta": None if delta is None else abs(delta) / max(abs(total - delta), 1e-30)})
    return rows


def markdown(r: dict[str, Any]) -> str:
    """The docs' table of one run (a JSON written by this script)."""
    m = r.get("machine", {})
    head = (f"{r['model']}, {m.get('cpu', '?')} ({m.get('cores', '?')} cores), {m.get('torch_threads', '?')} torch "
            f"threads, load average {m.get('load_average', ['?'])[0]}, {m.get('date', '?')}; medians")
    lines = [head, "", "| what | seconds | ratio |", "|---|---|---|"]
    unit = r["unit_seconds"]
    lines.append(f"| one forward+backward pass of the image target (the unit) | {unit:.3f} | 1 |")
    for row in r["methods"]:
        lines.append(f"| pixel {row['method']} | {row['seconds']:.2f} | {row['units']:.1f} units |")
    tok = r.get("tokens")
    if tok:
        lines.append(f"| token IG {tok['steps']} steps, full context ({tok['full']['positions']} positions) | "
                     f"{tok['full']['seconds']:.3f} | 1 |")
        lines.append(f"| token IG {tok['steps']} steps, padding cut off ({tok['cut']['positions']} positions) | "
                     f"{tok['cut']['seconds']:.3f} | {tok['speedup']:.1f}x faster (scores agree to "
                     f"{tok['max_score_difference_relative']:.0e}) |")
    for row in r.get("explain", []):
        s = row["last_call_seconds"]
        name = row["method"] + (f" {row['steps']} steps" if row["method"] == "integrated_gradients" else "")
        lines.append(f"| studio Explain view, {name} (last call: pixels {s['pixels']:.2f} s, tokens "
                     f"{s['tokens']:.2f} s) | {row['seconds']:.2f} | {row['units']:.1f} units (unit "
                     f"{row['unit_seconds']:.3f} s in the same rounds) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
