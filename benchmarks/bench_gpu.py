"""GPU benchmark: plain zero-shot vs the Bayesian head at scale, device agreement, attributions, fitting.

ViT-B-32 with random weights (no download) and the authors' published B/32 factors (``--factors``, default
``../shared/reference-factors/CLIP-ViT-B-32-laion2B-s34B-b79K``; a random SPD posterior if absent).
On CUDA: N = 32, 1024, 4096 images x C = 1000 prompts; on the CPU it falls back to N = 8, 32 x C = 100.
Reported (medians, seconds): encoders vs head time, cold (empty prompt cache) and warm (cached prompts);
the posterior algebra on the CPU vs on the device (float64 both); CUDA (float16 autocast) vs CPU (float32)
agreement of the logit mean and variance; IG (32 steps) and token attribution time; fit throughput.
Scale cases (docs/scale.md; random text features at the real dims): the head on the device at N = 32 x
C = 21,843 beside the plain zero-shot head (prompt terms precomputed once), and the chunked ``.cov`` and MC
predictive at N = 256 x C = 1000 (CPU fallback: N = 8 x C = 2000 and N = 16 x C = 200).

    python benchmarks/bench_gpu.py [--json benchmarks/bench_gpu.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)
from PIL import Image

import bayesvlm_explain as bx

DEFAULT_FACTORS = Path(__file__).resolve().parents[2] / "shared/reference-factors/CLIP-ViT-B-32-laion2B-s34B-b79K"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _posterior(vlm: bx.BayesVLM, factors: Path) -> bx.Posterior:
    if factors.is_dir():
        return bx.Posterior.from_reference_dir(factors)
    gen = torch.Generator().manual_seed(0)
    sides = {}
    for side in ("image", "text"):
        p, d = vlm.projection_dims(side)
        a, b = torch.randn(p, p + 3, generator=gen), torch.randn(d, d + 3, generator=gen)
        sides[side] = bx.KronPosterior(a @ a.T / p, b @ b.T / d, prior_precision=1000.0)
    return bx.Posterior(sides["image"], sides["text"])


def _plain(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor, device: torch.device,
           batch: int) -> dict[str, float]:
    """Deterministic zero-shot: encoders, then normalise + matmul + softmax."""
    with torch.inference_mode(), bx.encoding.autocast(device):
        t_enc, (u, v) = _timed(lambda: (
            torch.cat([model.encode_image(c.to(device)) for c in x.split(batch)]),
            torch.cat([model.encode_text(c.to(device)) for c in tokens.split(batch)])), device, 1)
        t_head, _ = _timed(lambda: torch.softmax(
            model.logit_scale.exp() * F.normalize(u.float(), dim=-1) @ F.normalize(v.float(), dim=-1).T, -1),
            device)
    return {"encoders_s": t_enc, "head_s": t_head}


def _bayes(vlm: bx.BayesVLM, x: torch.Tensor, prompts: list[str], algebra: torch.device) -> dict[str, float]:
    """Our predict: encoders (cold and warm prompt cache) and the head (mean, variance, probit)."""
    vlm.encoder.prompt_cache.clear()  # a cold start
    t_img, img = _timed(lambda: vlm.encode_images(x), vlm.device, 1)
    t_cold, _ = _timed(lambda: vlm.encode_prompts(prompts), vlm.device, 1)
    t_warm, txt = _timed(lambda: vlm.encode_prompts(prompts), vlm.device, 1)
    head_cpu = vlm.head("projected")
    t_head, _ = _timed(lambda: head_cpu(img, txt).var, torch.device("cpu"))
    out = {"image_encoder_s": t_img, "text_encoder_cold_s": t_cold, "text_cached_s": t_warm, "head_cpu_s": t_head}
    if algebra.type == "cuda":
        head_dev = vlm.head("projected", algebra)
        out["head_device_s"], _ = _timed(lambda: head_dev(img, txt).var, algebra)
    return out


def _scale(vlm: bx.BayesVLM, device: torch.device, cuda: bool) -> dict[str, Any]:
    """The scale cases of bench_scale.py with the posterior algebra on ``device`` (float64)."""
    from bayesvlm_explain.adapters import Features
    from bayesvlm_explain.predictive import Prediction, probit_probs

    (n, c), (n_cov, c_cov) = ((32, 21_843), (256, 1000)) if cuda else ((8, 2000), (16, 200))
    gen = torch.Generator().manual_seed(0)
    img = vlm.encode_images(torch.randn(max(n, n_cov), 3, 224, 224, generator=gen))
    p_t, d = vlm.encode_prompts(["a photo"]).activations.shape[1], img.embeddings.shape[1]
    txt = Features(torch.randn(c, p_t, generator=gen, dtype=torch.float64),
                   torch.randn(c, d, generator=gen, dtype=torch.float64))
    head = vlm.head("projected", device)
    terms = head.prompt_terms(txt)
    part = Features(img.activations[:n], img.embeddings[:n])
    unit = F.normalize(txt.embeddings.to(device, torch.float32), dim=-1)
    emb = part.embeddings.to(device, torch.float32)
    t_plain, _ = _timed(lambda: torch.softmax(100.0 * F.normalize(emb, dim=-1) @ unit.T, -1), device)

    def bayes() -> torch.Tensor:
        mom = head.image_moments(part, terms)
        return probit_probs(mom.mean, mom.var)

    t_head, _ = _timed(bayes, device)
    small = Features(torch.randn(c_cov, p_t, generator=gen, dtype=torch.float64),
                     torch.randn(c_cov, d, generator=gen, dtype=torch.float64))
    mom = head(Features(img.activations[:n_cov], img.embeddings[:n_cov]), small)
    pred = Prediction(mom, mom.mean, [""] * c_cov)
    t_cov, _ = _timed(lambda: pred.moments.covariance(), device, 1)
    t_mc, _ = _timed(lambda: pred.predictive("mc", 200), device, 1)
    return {"head_N_C": [n, c], "plain_head_s": t_plain, "bayes_head_s": t_head, "ratio": t_head / t_plain,
            "cov_N_C": [n_cov, c_cov], "cov_s": t_cov, "mc200_s": t_mc, "mc_image_chunks": len(mom.draw_chunks())}


def _agreement(model: torch.nn.Module, tok: Any, pre: Any, post: bx.Posterior, x: torch.Tensor,
               prompts: list[str], device: torch.device) -> dict[str, float]:
    """Relative max difference of mean and variance between the device run and a CPU float32 run."""
    preds = {}
    for dev in {device, torch.device("cpu")}:
        vlm = bx.BayesVLM(model, tok, pre, post, device=dev)
        preds[dev.type] = vlm.predict(x, prompts)
    a, b = preds[device.type], preds["cpu"]
    return {"mean_rel": float((a.mean - b.mean).abs().max() / b.mean.abs().max()),
            "var_rel": float(((a.var - b.var).abs() / b.var).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", type=Path, default=DEFAULT_FACTORS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes, num_prompts, fit_pairs = ((32, 1024, 4096), 1000, 4096) if cuda else ((8, 32), 100, 256)
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    tok = open_clip.get_tokenizer("ViT-B-32")
    vlm = bx.BayesVLM(model, tok, pre, device=device)
    vlm.posterior = _posterior(vlm, args.factors)
    prompts = [f"a photo of class number {i}" for i in range(num_prompts)]
    tokens = tok(prompts)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                               "factors": args.factors.name if args.factors.is_dir() else "random", "rows": []}
    for n in sizes:
        x = torch.randn(n, 3, 224, 224)
        row = {"images": n, "prompts": num_prompts, **{f"plain_{k}": v for k, v in
                                                       _plain(vlm.model, x, tokens, device, 256).items()}}
        row.update(_bayes(vlm, x, prompts, device))
        results["rows"].append(row)
        print(json.dumps(row))
    results["agreement"] = _agreement(vlm.model, tok, pre, vlm.posterior, torch.randn(4, 3, 224, 224),
                                      prompts[:50], device)
    results["scale"] = _scale(vlm, device, cuda)
    print(json.dumps(results["scale"]))
    x1 = torch.randn(1, 3, 224, 224)
    results["ig32_s"], _ = _timed(lambda: bx.UncertaintyAttribution(vlm, "epistemic", num_samples=200).attribute(
        x1, prompts[:10], n_steps=32), device, 1)
    results["token_ig32_s"], _ = _timed(lambda: bx.TokenAttribution(vlm).attribute(x1, prompts[3], n_steps=32),
                                        device, 1)
    gen = torch.Generator().manual_seed(0)
    pairs = [(Image.fromarray(torch.randint(0, 255, (64, 64, 3), generator=gen, dtype=torch.uint8).numpy()),
              f"a caption about item {i}") for i in range(fit_pairs)]
    start = time.perf_counter()
    vlm.fit(pairs, num_candidates=min(1024, fit_pairs), batch_size=256, prior_precision=(1000.0, 1000.0))
    results["fit_pairs_per_s"] = fit_pairs / (time.perf_counter() - start)
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    if args.json:
        args.json.write_text(json.dumps({**results, "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
