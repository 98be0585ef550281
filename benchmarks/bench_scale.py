"""Scale benchmark: the Bayesian head against the plain zero-shot head at real label-set sizes.

ViT-B-32 and ViT-L-14 with random weights (``open_clip.create_model(arch, pretrained=None)``; D = 512,
p = 768 and D = 768, p = 1024) with the built-in B/32 posterior (``Posterior.from_pretrained("ViT-B-32",
"laion2b_s34b_b79k")``) and, for L/14, which has no built-in posterior, a random SPD posterior of its dims
(``bench_gpu._posterior``). Image features come from the real image tower: ``--image-batch`` random
images are encoded (timed) and, where fewer than 32, their features are tiled to 32 rows with a 1%
random scale each (the encoder time for 32 is then extrapolated linearly and reported as such). **Text
features are random** at the real dims wherever C is large (encoding 21,843 or 100,000 prompts with the
text tower on this CPU takes far longer than the head), and the real text tower's streaming throughput
is measured on ``--encode`` prompts and extrapolated to C = 100,000.

Cases (medians of ``--repeats`` side-by-side runs; per case the peak resident memory increase over the
resident size before it, and the process's absolute peak, both via /proc VmHWM):

* head at N = 32 x C = 21,843: plain zero-shot (normalise, matmul, softmax; float32 and float64), the
  probit head on precomputed prompt terms (per-image cost, projected and diagonal), and the full head
  including the prompt side;
* N = 1 x C = 20,000 and C = 100,000 (projected probit) with peak memory;
* ``.cov`` and the MC predictive chunked at N = 256 x C = 1000 within the default 2 GiB budget;
* the log-log slope of head time in C at N = 32 (C = 1000 ... 32,000), projected and diagonal.

    python benchmarks/bench_scale.py [--arch ViT-B-32 ViT-L-14] [--json benchmarks/bench_scale.json] [--threads 2]
    python benchmarks/bench_scale.py --markdown benchmarks/bench_scale.json   # the docs' table of a run
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


PEAKS: dict[str, float] = {}
"""The process's absolute peak resident size (GiB) per timed case label, filled by :func:`_timed`."""


def _timed(fn: Callable[[], Any], repeats: int, label: str = "") -> tuple[float, float, Any]:
    """Median seconds, peak RSS increase (GiB) over the resident size before the first call, result.
    With a ``label``, the process's absolute peak during the calls goes to ``PEAKS[label]``."""
    base = _rss_gib("VmRSS")
    _reset_peak()
    times, out = [], None
    for _ in range(repeats):
        out = None
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    peak = _rss_gib()
    if label:
        PEAKS[label] = round(peak, 3)
    return statistics.median(times), peak - base, out


def _image_features(vlm: bx.BayesVLM, n: int, batch: int, seed: int) -> tuple[Features, float]:
    """Features of ``n`` images: ``min(batch, n)`` random images through the real tower, tiled to ``n`` rows
    with a 1% random scale per row; and the encoder seconds measured for those images."""
    k = min(batch, n)
    images = torch.randn(k, 3, *(vlm.image_size or (224, 224)), generator=torch.Generator().manual_seed(seed))
    t, _, enc = _timed(lambda: vlm.encode_images(images), 1)
    reps = math.ceil(n / k)
    scale = 1 + 0.01 * torch.randn(k * reps, 1, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return Features((enc.activations.repeat(reps, 1) * scale)[:n], (enc.embeddings.repeat(reps, 1) * scale)[:n]), t


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
    img, t_img = _image_features(vlm, n, args.image_batch, seed=1)
    tau = vlm.adapter.logit_scale
    out: dict[str, Any] = {"arch": arch, "text_features": "random at the real dims (see module doc)",
                           "dims": {"D": d, "p_image": vlm.projection_dims("image")[0], "p_text": p_t},
                           "posterior": "built-in" if arch == "ViT-B-32" else "random SPD of these dims",
                           "image_encoder": {"images_encoded": min(args.image_batch, n), "seconds": round(t_img, 2),
                                             "extrapolated_seconds_N32": round(t_img / min(args.image_batch, n) * n, 1),
                                             "tiled_to": n}}
    proj, diag = vlm.head("projected"), vlm.head("diagonal")

    # -- N = 32 x C = 21,843, side by side --------------------------------------------------------
    c = 21_843
    txt = _random_text(c, p_t, d, seed=2)
    unit64 = F.normalize(txt.embeddings, dim=-1)
    unit32 = unit64.float()
    img32 = Features(img.activations.float(), img.embeddings.float())
    t_terms, m_terms, terms = _timed(lambda: proj.prompt_terms(txt), 1, "prompt_terms_once")
    dterms = diag.prompt_terms(txt)
    rows = {
        "plain_float32": _timed(lambda: _plain(img32, unit32, tau), args.repeats, "plain_float32"),
        "plain_float64": _timed(lambda: _plain(img, unit64, tau), args.repeats, "plain_float64"),
        "bayes_projected_probit": _timed(lambda: _bayes(proj, img, terms), args.repeats, "bayes_projected_probit"),
        "bayes_diagonal_probit": _timed(lambda: _bayes(diag, img, dterms), args.repeats, "bayes_diagonal_probit"),
        "bayes_projected_full_head": _timed(lambda: _full(proj, img, txt), 1, "bayes_projected_full_head"),
    }
    res = {k: {"seconds": round(v[0], 4), "peak_gib": round(v[1], 3), "process_peak_gib": PEAKS[k]}
           for k, v in rows.items()}
    res["prompt_terms_once"] = {"seconds": round(t_terms, 4), "peak_gib": round(m_terms, 3),
                                "process_peak_gib": PEAKS["prompt_terms_once"]}
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
        t, mem, pred = _timed(lambda txt=txt, one=one, c=c: vlm.predict_features(one, txt, [""] * c).probs, 1, "one")
        out[f"N1_C{c}"] = {"seconds": round(t, 3), "peak_gib": round(mem, 3), "process_peak_gib": PEAKS["one"],
                           "probs_sum": float(pred.sum())}
        print(json.dumps({f"N1_C{c}": out[f"N1_C{c}"]}), flush=True)

    # -- the real text tower, streamed --------------------------------------------------------------
    prompts = [f"a photo of class number {i}" for i in range(args.encode)]
    t, mem, _ = _timed(lambda: vlm.encode_prompts(prompts), 1)
    out["encode_prompts"] = {"prompts": args.encode, "seconds": round(t, 2), "peak_gib": round(mem, 3),
                             "extrapolated_seconds_C100000": round(t / args.encode * 100_000, 1)}
    print(json.dumps({"encode": out["encode_prompts"]}), flush=True)

    # -- C×C per image: .cov and MC, chunked within the default budget ----------------------------
    n_big, c = 256, 1000
    big, _ = _image_features(vlm, n_big, min(8, args.image_batch), seed=4)
    txt = _random_text(c, p_t, d, seed=5)
    pred = vlm.predict_features(big, txt, [""] * c)
    t, mem, cov = _timed(lambda: pred.moments.covariance(), 1, "cov")
    out["N256_C1000_cov"] = {"seconds": round(t, 2), "peak_gib": round(mem, 3), "process_peak_gib": PEAKS["cov"],
                             "result_gib": round(cov.numel() * 8 / 2**30, 3), "budget_gib": pred.max_memory / 2**30}
    del cov
    t, mem, _ = _timed(lambda: pred.predictive("mc", args.mc_samples), 1, "mc")
    out["N256_C1000_mc"] = {"seconds": round(t, 2), "peak_gib": round(mem, 3), "process_peak_gib": PEAKS["mc"],
                            "samples": args.mc_samples, "image_chunks": len(pred.moments.draw_chunks())}
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


def markdown(results: dict[str, Any]) -> str:
    """The docs' table of a written run: one column per architecture."""
    runs = results["runs"]
    m = results["machine"]
    lines = [f"{m['cpu']} ({m['cores']} cores), {m['torch_threads']} torch threads, load average "
             f"{results['load_average_start'][0]} at the start and {m['load_average'][0]} at the end, {m['date']}",
             "", "| case | " + " | ".join(f"{r['arch']} (D = {r['dims']['D']}, p = {r['dims']['p_image']})"
                                         for r in runs) + " |", "|---|" + "---|" * len(runs)]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + " |")

    def case(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: (f"{r['N32_C21843'][key]['seconds']:.3g} s, +{r['N32_C21843'][key]['peak_gib']:.2f} GiB "
                          f"(process {r['N32_C21843'][key]['process_peak_gib']:.2f} GiB)")

    row("image tower, measured on k images (extrapolated to 32)",
        lambda r: f"{r['image_encoder']['seconds']:.3g} s for {r['image_encoder']['images_encoded']} "
                  f"({r['image_encoder']['extrapolated_seconds_N32']:.3g} s)")
    row("N = 32 × C = 21,843: plain zero-shot head, float32", case("plain_float32"))
    row("same, float64", case("plain_float64"))
    row("Bayesian probit head, projected, prompt terms precomputed", case("bayes_projected_probit"))
    row("Bayesian probit head, diagonal, prompt terms precomputed", case("bayes_diagonal_probit"))
    row("prompt terms of the 21,843 prompts (once per label set)", case("prompt_terms_once"))
    row("full projected head including the prompt side", case("bayes_projected_full_head"))
    row("projected / plain float32 (per image batch)",
        lambda r: f"{r['N32_C21843']['ratio_projected_vs_plain_float32']}×")
    row("diagonal / plain float32 (per image batch)",
        lambda r: f"{r['N32_C21843']['ratio_diagonal_vs_plain_float32']}×")
    for c in ("20000", "100000"):
        row(f"N = 1 × C = {int(c):,} `predict_features(...).probs`",
            lambda r, c=c: f"{r[f'N1_C{c}']['seconds']:.3g} s, +{r[f'N1_C{c}']['peak_gib']:.2f} GiB "
                           f"(process {r[f'N1_C{c}']['process_peak_gib']:.2f} GiB)")
    row("real text tower, prompts streamed (extrapolated to 100,000)",
        lambda r: f"{r['encode_prompts']['seconds']:.3g} s for {r['encode_prompts']['prompts']} "
                  f"({r['encode_prompts']['extrapolated_seconds_C100000'] / 3600:.1f} h)")
    row("N = 256 × C = 1000 `.cov` (1.91 GiB result) in the default 2 GiB budget",
        lambda r: f"{r['N256_C1000_cov']['seconds']:.3g} s, +{r['N256_C1000_cov']['peak_gib']:.2f} GiB "
                  f"(process {r['N256_C1000_cov']['process_peak_gib']:.2f} GiB)")
    row("N = 256 × C = 1000 MC predictive, 200 draws",
        lambda r: f"{r['N256_C1000_mc']['seconds']:.3g} s in {r['N256_C1000_mc']['image_chunks']} image chunks, "
                  f"+{r['N256_C1000_mc']['peak_gib']:.2f} GiB")
    row("N = 256 × C = 4000 `.cov`", lambda r: "refused before allocating" if "N256_C4000_cov_refused" in r else "—")
    for mode in ("projected", "diagonal"):
        row(f"log-log slope of head time in C, {mode} (per image batch / full head)",
            lambda r, mode=mode: "{slope_per_image} / {slope_full_head}".format(**r["slope_N32"][mode]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["ViT-B-32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encode", type=int, default=256, help="prompts encoded by the real text tower")
    ap.add_argument("--image-batch", type=int, default=32,
                    help="images encoded by the real image tower (tiled to 32; e.g. 4 for ViT-L-14 on a CPU)")
    ap.add_argument("--mc-samples", type=int, default=200)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_scale.json"))
    ap.add_argument("--markdown", type=Path, help="only print the docs' table from this JSON, and exit")
    args = ap.parse_args()
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    torch.set_num_threads(args.threads)
    results: dict = {"load_average_start": [round(x, 2) for x in os.getloadavg()],
                     "options": {k: v for k, v in vars(args).items() if k != "json"},
                     "runs": [run_arch(a, args) for a in args.arch]}
    results["machine"] = machine_info()
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
