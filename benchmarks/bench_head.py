"""Cost of the Bayesian head against the plain deterministic zero-shot computation, side by side.

ViT-B-32-sized open_clip model with random weights on the CPU, a random non-diagonal SPD posterior,
N images x C prompts (default 32 x 1000). Reports median wall times over repeats and the ratios
(Bayesian / deterministic), encoders excluded and included.

    python benchmarks/bench_head.py [--images 32] [--prompts 1000] [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)

import bayesvlm_explain as bx


def _spd(n: int, gen: torch.Generator) -> torch.Tensor:
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return m @ m.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(args.model)
    vlm = bx.BayesVLM(model, tokenizer, None, device="cpu", name=args.model)
    gen = torch.Generator().manual_seed(0)
    sides = {s: bx.KronPosterior(_spd(vlm.projection_dims(s)[0], gen), _spd(vlm.projection_dims(s)[1], gen),
                                 prior_precision=100.0) for s in ("image", "text")}
    vlm.posterior = bx.Posterior(sides["image"], sides["text"])
    vlm.posterior.image.covariance_factors(), vlm.posterior.text.covariance_factors()  # one-off, cached
    images = torch.randn(args.images, 3, *vlm.image_size, generator=gen)
    prompts = [f"a photo of a {i} thing number {i * 7 % 13}" for i in range(args.prompts)]
    tokens = tokenizer(prompts)
    tau = model.logit_scale.exp().item()

    def plain_encoders():
        with torch.inference_mode():
            return model.encode_image(images), model.encode_text(tokens)

    def plain_head(feats):
        img, txt = feats
        return torch.softmax(tau * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T, -1)

    def bayes_encoders():
        vlm.encoder.prompt_cache.clear()
        return vlm.encode_images(images), vlm.encode_prompts(prompts)

    def bayes_head(feats, cov=False):
        pred = vlm.predict_features(*feats, prompts)
        out = pred.probs
        if cov:
            out = pred.cov
        return out

    # encoders dominate and the machine may be shared: interleave the two paths, take medians
    enc_plain, enc_bayes = [], []
    for _ in range(args.repeats):
        t, plain_feats = _timed(plain_encoders, 1)
        enc_plain.append(t)
        t, bayes_feats = _timed(bayes_encoders, 1)
        enc_bayes.append(t)
    t_plain_enc, t_bayes_enc = statistics.median(enc_plain), statistics.median(enc_bayes)
    t_plain_head, _ = _timed(lambda: plain_head(plain_feats), args.repeats * 5)
    t_bayes_head, _ = _timed(lambda: bayes_head(bayes_feats), args.repeats * 5)
    t_bayes_cov, _ = _timed(lambda: bayes_head(bayes_feats, cov=True), args.repeats)
    t_mc, _ = _timed(lambda: vlm.predict_features(*bayes_feats, prompts).predictive("mc", 1000), args.repeats)
    res = {
        "model": args.model, "images": args.images, "prompts": args.prompts, "threads": args.threads,
        "plain_encoders_s": t_plain_enc, "plain_head_s": t_plain_head,
        "bayes_encoders_s": t_bayes_enc, "bayes_head_probit_s": t_bayes_head,
        "bayes_head_with_cov_s": t_bayes_cov, "bayes_head_mc1000_s": t_mc,
        "ratio_head_only": t_bayes_head / t_plain_head,
        "overhead_included_probit": (t_bayes_enc + t_bayes_head) / (t_plain_enc + t_plain_head) - 1,
        "head_overhead_vs_plain_total": (t_bayes_head - t_plain_head) / (t_plain_enc + t_plain_head),
        "overhead_included_with_cov": (t_bayes_enc + t_bayes_cov) / (t_plain_enc + t_plain_head) - 1,
    }
    print(f"{args.model}, {args.images} images x {args.prompts} prompts, {args.threads} threads, CPU")
    print(f"  encoders   plain {t_plain_enc:8.3f} s   bayes (activations captured) {t_bayes_enc:8.3f} s")
    print(f"  head       plain {t_plain_head * 1e3:8.2f} ms  bayes probit {t_bayes_head * 1e3:8.2f} ms"
          f"  (+[N,C,C] cov {t_bayes_cov * 1e3:.1f} ms, MC 1000 draws {t_mc * 1e3:.1f} ms)")
    print(f"  head-only ratio bayes/plain: {res['ratio_head_only']:.1f}x")
    print(f"  extra time of the Bayesian head over the plain pipeline: "
          f"{100 * res['head_overhead_vs_plain_total']:.3f}% (probit)")
    print(f"  measured end-to-end ratio (includes encoder timing noise): probit "
          f"{100 * res['overhead_included_probit']:+.2f}%,"
          f" with full class covariance {100 * res['overhead_included_with_cov']:+.2f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**res, "machine": machine_info()}, fh, indent=2)


if __name__ == "__main__":
    main()
