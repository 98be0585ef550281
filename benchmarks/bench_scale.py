"""Scale benchmark: the Bayesian head against the plain zero-shot head at real label-set sizes.

ViT-B-32 with random weights (``open_clip.create_model("ViT-B-32", pretrained=None)``; ``--arch ViT-L-14``
too, if asked) and the built-in B/32 posterior (``Posterior.from_pretrained("ViT-B-32",
"laion2b_s34b_b79k")``; for L/14 a random SPD posterior of its dims). Image features come from the real
image tower (random images); **text features are random** at the real dims wherever C is large (encoding
21,843 or 100,000 prompts with the text tower on this CPU takes far longer than the head), and the real
text tower's streaming throughput is measured on ``--encode`` prompts and extrapolated to C = 100,000.

Cases (medians of ``--repeats`` side-by-side runs; peak resident memory of each case via /proc VmHWM):

* head at N = 32 x C = 21,843: plain zero-shot (normalise, matmul, softmax; float32 and float64), the
  probit head on precomputed prompt terms (per-image cost, projected and diagonal), and the full head
  including the prompt side;
* N = 1 x C = 20,000 and C = 100,000 (projected probit) with peak memory;
* ``.cov`` and the MC predictive chunked at N = 256 x C = 1000 within the default 2 GiB budget;
* the log-log slope of head time in C at N = 32 (C = 1000 ... 32,000), projected and diagonal.

    python benchmarks/bench_scale.py [--json benchmarks/bench_scale.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from bench_gpu import _posterior as random_or_reference_posterior
from machine import machine_info  # benchmarks/machine.py (run as a script: this folder is on sys.path)

import bayesvlm_explain as bx
from bayesvlm_explain.adapters import Features
from bayesvlm_explain.predictive import probit_probs
from bayesvlm_explain.probcos import MemoryBudgetError


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets the peak resident set size (Linux)
        fh.write("5")


def _rss_gib(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Median seconds, peak RSS increase (GiB) over the resident size before the first call, result."""
    base = _rss_gib("VmRSS")
    _reset_peak()
    times, out = [], None
    for _ in range(repeats):
        out = None
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), _rss_gib() - base, out


def _random_text(c: int, p_t: int, d: int, seed: int) -> Features:
    gen = torch.Generator().manual_seed(seed)
    return Features(torch.randn(c, p_t, generator=gen, dtype=torch.float64),
                    torch.randn(c, d, generator=gen, dtype=torch.float64))


def _plain(img: Features, txt_unit: torch.Tensor, scale: float) -> torch.Tensor:
    """The plain zero-shot head: normalise the images, one matmul with the normalised prompts, softmax."""
    return torch.softmax(scale * F.normalize(img.embeddings.to(txt_unit.dtype), dim=-1) @ txt_unit.T, -1)


def _bayes(head: bx.head.MomentHead, img: Features, terms: Any) -> torch.Tensor:
    mom = head.image_moments(img, terms)
    return probit_probs(mom.mean, mom.var)


def _full(head: bx.head.MomentHead, img: Features, txt: Features) -> torch.Tensor:
    mom = head(img, txt)
    return probit_probs(mom.mean, mom.var)


def _posterior(vlm: bx.BayesVLM, arch: str) -> bx.Posterior:
    """The built-in B/32 posterior; for other architectures a random SPD one of their dims (bench_gpu's)."""
    if arch == "ViT-B-32":
        return bx.Posterior.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    return random_or_reference_posterior(vlm, Path("no-reference-factors"))


def _slope(cs: list[int], ts: list[float]) -> float:
    x, y = [math.log(c) for c in cs], [math.log(t) for t in ts]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms(arch, pretrained=None)
    vlm = bx.BayesVLM(model.eval(), open_clip.get_tokenizer(arch), pre, None, device="cpu", name=arch)
    vlm.posterior = _posterior(vlm, arch)
    probe = vlm.encode_prompts(["a photo"])
    p_t, d = probe.activations.shape[1], probe.embeddings.shape[1]  # text activations before augmentation
    n = 32
    images = torch.randn(n, 3, *vlm.image_size, generator=torch.Generator().manual_seed(1))
    img = vlm.encode_images(images)
    tau = vlm.adapter.logit_scale
    out: dict[str, Any] = {"arch": arch, "text_features": "random at the real dims (see module doc)"}
    proj, diag = vlm.head("projected"), vlm.head("diagonal")

    # -- N = 32 x C = 21,843, side by side --------------------------------------------------------
    c = 21_843
    txt = _random_text(c, p_t, d, seed=2)
    unit64 = F.normalize(txt.embeddings, dim=-1)
    unit32 = unit64.float()
    img32 = Features(img.activations.float(), img.embeddings.float())
    t_terms, m_terms, terms = _timed(lambda: proj.prompt_terms(txt), 1)
    dterms = diag.prompt_terms(txt)
    rows = {
        "plain_float32": _timed(lambda: _plain(img32, unit32, tau), args.repeats),
        "plain_float64": _timed(lambda: _plain(img, unit64, tau), args.repeats),
        "bayes_projected_probit": _timed(lambda: _bayes(proj, img, terms), args.repeats),
        "bayes_diagonal_probit": _timed(lambda: _bayes(diag, img, dterms), args.repeats),
        "bayes_projected_full_head": _timed(lambda: _full(proj, img, txt), 1),
    }
    res = {k: {"seconds": round(v[0], 4), "peak_gib": round(v[1], 3)} for k, v in rows.items()}
    res["prompt_terms_once"] = {"seconds": round(t_terms, 4), "peak_gib": round(m_terms, 3)}
    base32, base64 = rows["plain_float32"][0], rows["plain_float64"][0]
    res["ratio_projected_vs_plain_float64"] = round(rows["bayes_projected_probit"][0] / base64, 2)
    res["ratio_projected_vs_plain_float32"] = round(rows["bayes_projected_probit"][0] / base32, 2)
    res["ratio_diagonal_vs_plain_float64"] = round(rows["bayes_diagonal_probit"][0] / base64, 2)
    res["ratio_diagonal_vs_plain_float32"] = round(rows["bayes_diagonal_probit"][0] / base32, 2)
    out["N32_C21843"] = res
    print(json.dumps({arch: res}), flush=True)

    # -- one image against 20,000 and 100,000 prompts ---------------------------------------------
    for c in (20_000, 100_000):
        txt = _random_text(c, p_t, d, seed=3)
        one = Features(img.activations[:1], img.embeddings[:1])
        t, mem, pred = _timed(lambda txt=txt, one=one, c=c: vlm.predict_features(one, txt, [""] * c).probs, 1)
        out[f"N1_C{c}"] = {"seconds": round(t, 3), "peak_gib": round(mem, 3), "probs_sum": float(pred.sum())}
        print(json.dumps({f"N1_C{c}": out[f"N1_C{c}"]}), flush=True)

    # -- the real text tower, streamed --------------------------------------------------------------
    prompts = [f"a photo of class number {i}" for i in range(args.encode)]
    t, mem, _ = _timed(lambda: vlm.encode_prompts(prompts), 1)
    out["encode_prompts"] = {"prompts": args.encode, "seconds": round(t, 2), "peak_gib": round(mem, 3),
                             "extrapolated_seconds_C100000": round(t / args.encode * 100_000, 1)}
    print(json.dumps({"encode": out["encode_prompts"]}), flush=True)

    # -- C×C per image: .cov and MC, chunked within the default budget ----------------------------
    n_big, c = 256, 1000
    big = vlm.encode_images(torch.randn(8, 3, *vlm.image_size, generator=torch.Generator().manual_seed(4)))
    big = Features(big.activations.repeat(n_big // 8, 1) * (1 + 0.01 * torch.randn(n_big, 1, dtype=torch.float64)),
                   big.embeddings.repeat(n_big // 8, 1))
    txt = _random_text(c, p_t, d, seed=5)
    pred = vlm.predict_features(big, txt, [""] * c)
    t, mem, cov = _timed(lambda: pred.moments.covariance(), 1)
    out["N256_C1000_cov"] = {"seconds": round(t, 2), "peak_gib": round(mem, 3), "result_gib": round(
        cov.numel() * 8 / 2**30, 3), "budget_gib": pred.max_memory / 2**30}
    t, mem, _ = _timed(lambda: pred.predictive("mc", args.mc_samples), 1)
    out["N256_C1000_mc"] = {"seconds": round(t, 2), "peak_gib": round(mem, 3), "samples": args.mc_samples,
                            "image_chunks": len(pred.moments.draw_chunks())}
    try:
        _ = vlm.predict_features(big, _random_text(4000, p_t, d, seed=6), [""] * 4000).cov
    except MemoryBudgetError as err:
        out["N256_C4000_cov_refused"] = str(err)
    print(json.dumps({k: out[k] for k in out if k.startswith("N256")}), flush=True)

    # -- slope of head time in C --------------------------------------------------------------------
    cs = [1000, 2000, 4000, 8000, 16_000, 32_000]
    slopes: dict[str, Any] = {}
    for name, head in (("projected", proj), ("diagonal", diag)):
        per_image, full = [], []
        for c in cs:
            txt = _random_text(c, p_t, d, seed=c)
            terms = head.prompt_terms(txt)
            per_image.append(_timed(lambda head=head, terms=terms: _bayes(head, img, terms), args.repeats)[0])
            full.append(_timed(lambda head=head, txt=txt: head(img, txt).var, 1)[0])
        slopes[name] = {"C": cs, "per_image_seconds": [round(x, 4) for x in per_image],
                        "full_head_seconds": [round(x, 4) for x in full],
                        "slope_per_image": round(_slope(cs, per_image), 3),
                        "slope_full_head": round(_slope(cs, full), 3)}
    out["slope_N32"] = slopes
    print(json.dumps({"slope": slopes}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["ViT-B-32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encode", type=int, default=512, help="prompts encoded by the real text tower")
    ap.add_argument("--mc-samples", type=int, default=200)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"load_average_start": os.getloadavg(), "runs": [run_arch(a, args) for a in args.arch]}
    results["machine"] = machine_info()
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
