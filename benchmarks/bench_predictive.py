"""How close is each predictive to the true-cosine predictive? (KL and max |Δp|, bundled model)

The reference is Monte Carlo over the posterior itself: both projection matrices are drawn from their
matrix-normal posteriors, the exact cosine logits ``τ cos(W_img f̃, W_txt g̃)`` are pushed through the
softmax and averaged. Against it: the probit approximation (the paper's) and the Gaussian Monte Carlo
predictive with the full class covariance, each with the ``projected`` and ``expected_norm`` variances,
and the deterministic model (MAP). The posterior scale is varied through the pseudo-count ``n`` (the
shipped posterior has n = 1; smaller n is broader), λ re-optimised for each n by marginal likelihood.

    python benchmarks/bench_predictive.py [--draws 4000] [--json benchmarks/bench_predictive.json]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)

import bayesvlm_explain as bx
from bayesvlm_explain.data.labels import load_label_space

ROOT = Path(__file__).resolve().parents[1]


def _find(name: str) -> Path:
    """A data file of the bundled model, wherever the package or the checkout keeps it."""
    for base in (Path(str(resources.files("bayesvlm_explain"))), ROOT / "assets"):
        hits = sorted(base.rglob(name))
        if hits:
            return hits[0]
    raise FileNotFoundError(name)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (nats)."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q.clamp_min(1e-300))).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--pseudo-counts", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    prompts = load_label_space().prompts()
    ex_file = _find("examples.json")
    images = [ex_file.parent / e["file"] for e in json.loads(ex_file.read_text())["examples"]]
    img, txt = vlm.encode_images(images), vlm.encode_prompts(prompts)
    rows = []
    for n in args.pseudo_counts:
        vlm.optimize_prior_precision(pseudo_count=n)
        gen = torch.Generator().manual_seed(0)
        true = torch.softmax(vlm.sample_logits_features(img, txt, args.draws, gen), -1).mean(0)
        preds = {v: vlm.predict_features(img, txt, prompts, variance=v, num_samples=args.draws)
                 for v in ("projected", "expected_norm")}
        cands = {"MAP": preds["projected"].map_probs}
        for v, pred in preds.items():
            cands[f"probit/{v}"] = pred.predictive("probit")
            cands[f"mc/{v}"] = pred.predictive("mc")
        std = preds["projected"].std.median().item()
        for name, q in cands.items():
            rows.append({"pseudo_count": n, "median_logit_std": std, "predictive": name,
                         "kl_mean": _kl(true, q).mean().item(), "kl_max": _kl(true, q).max().item(),
                         "max_abs_dp": (true - q).abs().max().item()})
    print(f"bundled model, {len(images)} example images x {len(prompts)} classes, {args.draws} draws")
    print("| n | median logit std | predictive | mean KL(true ‖ q) | max KL | max |Δp| |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pseudo_count']:g} | {r['median_logit_std']:.3f} | {r['predictive']} | {r['kl_mean']:.2e} | "
              f"{r['kl_max']:.2e} | {r['max_abs_dp']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "draws": args.draws, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
